"""OpenRLHF semantics for single-model scripts: resolved flag values → a Job.

Which models exist per script, which DeepSpeed config each gets (train vs eval), how chosen and
rejected double the sequences: openrlhf/cli/train_{sft,rm,dpo,kto,prm,kd}.py and their trainers
(OpenRLHF/OpenRLHF@v0.9.5 for KTO/PRM/KD, @v0.11.0 otherwise); see ../shared/reference/openrlhf.md §1.2.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from memplan.dtypes import DType
from memplan.errors import ConfigError
from memplan.frameworks.openrlhf.saves import save_schedule
from memplan.jobs.job import GpuGroup, Job, LoraOptions, Role, RoleName
from memplan.jobs.options import Method
from memplan.memory.activations import AttnImpl
from memplan.memory.sharding import ZeroSharding, ZeroStage
from memplan.memory.logits import Head, LogProbImpl
from memplan.model.spec import ModelSpec

#: GPUs per node when a launcher does not say (``deepspeed`` without ``--num_gpus`` uses every local GPU;
#: the common 8-GPU node, as OpenRLHF's ``--*_num_gpus_per_node`` defaults assume).
DEFAULT_GPUS_PER_NODE = 8

#: Script → method.
SCRIPT_METHOD = {"train_sft": Method.SFT, "train_rm": Method.RM, "train_dpo": Method.DPO, "train_kto": Method.KTO,
                 "train_prm": Method.PRM, "train_kd": Method.KD}
METHOD_SCRIPT = {m: s for s, m in SCRIPT_METHOD.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodShape:
    """What a script's trainer runs: head, sequences per sample, frozen partner."""

    head: Head
    """Policy head."""
    sequences_per_sample: int
    """RM/DPO concatenate chosen and rejected; KTO its matched and unmatched (KL) halves."""
    partner: RoleName | None
    """The frozen model beside the policy (reference or teacher)."""
    holds_output: bool
    """The trainer's loop keeps ``output`` (fp32 logits) into the next micro-step."""


SHAPES = {
    Method.SFT: MethodShape(head=Head.LM, sequences_per_sample=1, partner=None, holds_output=True),
    Method.RM: MethodShape(head=Head.VALUE, sequences_per_sample=2, partner=None, holds_output=False),
    Method.DPO: MethodShape(head=Head.LM, sequences_per_sample=2, partner=RoleName.REF, holds_output=False),
    Method.KTO: MethodShape(head=Head.LM, sequences_per_sample=2, partner=RoleName.REF, holds_output=False),
    Method.PRM: MethodShape(head=Head.LM, sequences_per_sample=1, partner=None, holds_output=False),
    Method.KD: MethodShape(head=Head.LM, sequences_per_sample=1, partner=RoleName.TEACHER, holds_output=True),
}


def _param_dtype(values: Mapping[str, Any], notes: list[str]) -> DType:
    raw = values.get("param_dtype")
    if raw is None:  # OpenRLHF ≤ 0.8 spelling
        raw = "bf16" if values.get("bf16") else "auto"
    if raw == "auto":
        notes.append("no --bf16 (OpenRLHF <= 0.8): DeepSpeed mixed precision is off; assumed fp32 training")
        return DType.FP32
    try:
        return DType.from_name(str(raw))
    except KeyError:
        raise ConfigError("--param_dtype", f"expected bf16 or fp16, got {raw!r}") from None


def _attn(values: Mapping[str, Any]) -> AttnImpl:
    raw = values.get("attn_implementation")
    if raw is None:  # ≤ 0.8: --flash_attn, else eager (openrlhf/models/actor.py@v0.8.5)
        return AttnImpl.FLASH_ATTENTION_2 if values.get("flash_attn") else AttnImpl.EAGER
    try:
        return AttnImpl(str(raw))
    except ValueError:
        raise ConfigError("--attn_implementation", f"expected flash_attention_2, sdpa or eager, got {raw!r}") from None


def _lora(values: Mapping[str, Any]) -> LoraOptions | None:
    rank = int(values.get("lora_rank") or 0)
    if rank <= 0:
        return None
    targets = values.get("target_modules") or "all-linear"
    names = (targets,) if isinstance(targets, str) else tuple(str(t) for t in targets)
    return LoraOptions(rank=rank, alpha=int(values.get("lora_alpha") or 16), target_modules=names)


def _positive(values: Mapping[str, Any], key: str) -> int:
    value = values.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"--{key}", f"must be a positive integer, got {value!r}")
    return value


def grad_accum_steps(values: Mapping[str, Any], world: int) -> int:
    """Micro-batches per optimizer step as OpenRLHF configures DeepSpeed: ``train_batch_size × ring × ds_tp``
    over ``micro_train_batch_size × world`` (deepspeed_utils.py ``get_train_ds_config``; reference/openrlhf.md
    §1.1 and its DeepSpeed-config table), at least 1; 1 with ``--use_dynamic_batch`` (no accumulation).
    Assumes: a batch that does not divide evenly rounds down (DeepSpeed would refuse it at start-up)."""
    batch, micro = values.get("train_batch_size"), values.get("micro_train_batch_size")
    if values.get("use_dynamic_batch") or not isinstance(batch, int) or not isinstance(micro, int) or micro < 1:
        return 1
    parallel = int(values.get("ring_attn_size") or 1) * int(values.get("ds_tensor_parallel_size") or 1)
    return max(1, batch * parallel // (micro * max(world, 1)))


def world_of(num_nodes: int | None, gpus_per_node: int | None) -> GpuGroup:
    """The training group from launcher information, defaulting to one node of 8 GPUs."""
    return GpuGroup(name="train", num_nodes=num_nodes or 1, gpus_per_node=gpus_per_node or DEFAULT_GPUS_PER_NODE)


def build_single_model_job(script: str, values: Mapping[str, Any], *, group: GpuGroup, version: str,
                           load: Callable[[str], ModelSpec], command: str,
                           logprob_impl: LogProbImpl = LogProbImpl.FLASH_ATTN_TRITON) -> tuple[Job, tuple[str, ...]]:
    """The Job of a ``train_sft/rm/dpo/kto/prm/kd`` run, and notes on assumptions made."""
    method = SCRIPT_METHOD.get(script)
    if method is None:
        raise ConfigError("command", f"{script} is not a single-model script")
    notes: list[str] = []
    shape = SHAPES[method]
    if not values.get("pretrain"):
        raise ConfigError("--pretrain", "required: the model to train")
    dtype = _param_dtype(values, notes)
    stage = int(values.get("zero_stage", 2))
    if stage not in (0, 1, 2, 3):
        raise ConfigError("--zero_stage", f"must be 0, 1, 2 or 3, got {stage}")
    zero = ZeroSharding(stage=ZeroStage(stage), zpg=int(values.get("zpg") or 1),
                        overlap_comm=bool(values.get("overlap_comm")))
    common = dict(group=group.name, param_dtype=dtype,
                  attn_impl=_attn(values), micro_batch_size=_positive(values, "micro_train_batch_size"),
                  sequences_per_sample=shape.sequences_per_sample, seq_len=_positive(values, "max_len"),
                  packing=bool(values.get("packing_samples")), ring_size=int(values.get("ring_attn_size") or 1),
                  ds_tp_size=int(values.get("ds_tensor_parallel_size") or 1),
                  load_in_4bit=bool(values.get("load_in_4bit")))
    grad_accum = values.get("grad_accum_dtype")
    saves = save_schedule(script, values, version)
    policy = Role(name=RoleName.POLICY, spec=load(str(values["pretrain"])), head=shape.head, trained=True,
                  sharding=replace(zero, offload_optimizer=bool(values.get("adam_offload")),
                                   grad_accum_dtype=DType.from_name(str(grad_accum)) if grad_accum else None),
                  lora=_lora(values), gradient_checkpointing=bool(values.get("gradient_checkpointing")),
                  holds_output=shape.holds_output, kd_student=method == Method.KD,
                  grad_accum_steps=grad_accum_steps(values, group.num_gpus), saves_hf_model=True,
                  saves_ds_checkpoint=saves.ds_every_steps, **common)
    roles = [policy]
    if shape.partner is not None:
        key, offload = ("ref_pretrain", "ref_offload") if shape.partner == RoleName.REF else ("teacher_model", "teacher_offload")
        partner = str(values.get(key) or values["pretrain"])
        common["load_in_4bit"] = False  # the frozen partner loads in the param dtype (eval config)
        roles.append(Role(name=shape.partner, spec=load(partner), head=Head.LM, trained=False,
                          sharding=replace(zero, offload_params=bool(values.get(offload))),
                          lora=None, gradient_checkpointing=False, **common))
    job = Job(method=method, roles=tuple(roles), groups=(group,), logprob_impl=logprob_impl,
              framework_version=version, command=command, saves=saves)
    return job, tuple(notes)


MODEL_KEYS: tuple[str, ...] = ("pretrain", "ref_pretrain", "reward_pretrain", "critic_pretrain", "teacher_model")
"""Flags whose value names a model checkpoint (train_*.py argparse; the reward flag may list several)."""


def flag_naming_loader(load: Callable[[str], ModelSpec], values: Mapping[str, Any]) -> Callable[[str], ModelSpec]:
    """``load`` whose errors name the flag that gave the model (``--reward_pretrain: 'x': unknown model``).

    A bad checkpoint name is a bad value of a flag; the loader itself only knows the name.
    """
    def named_load(name: str) -> ModelSpec:
        try:
            return load(name)
        except ConfigError as exc:
            key = next((k for k in MODEL_KEYS if name in str(values.get(k) or "").split(",")), None)
            if key is None:
                raise
            detail = exc.message if exc.location in (name, "") else f"{exc.location}: {exc.message}"
            raise type(exc)(f"--{key}", f"{name!r}: {detail}") from None

    return named_load
