"""verl-style FSDP2 cases for the GPU harness (``measure.py --suite fsdp``): configurations and their steps.

Each case is one verl 0.9.1 actor (or reference) worker at world size 1 on one GPU, built and stepped as
verl's FSDP engine does it (verl-project/verl v0.9.1, the PyPI wheel ``verl-0.9.1-py3-none-any.whl``):

- model: ``AutoModelForCausalLM.from_config`` with random weights in ``fsdp_config.model_dtype`` (fp32, the
  default of ``actor_rollout_ref.actor.fsdp_config.model_dtype`` in ``verl/trainer/config/_generated_ppo_
  trainer.yaml``), gradient checkpointing ``use_reentrant=False`` (``verl/workers/engine/fsdp/transformer_
  impl.py`` ``_build_module``: ``module.gradient_checkpointing_enable(...)``), sdpa attention (flash-attn is not
  installed on the device machine; verl's default is flash_attention_2);
- sharding: ``fully_shard`` on every module named by ``model._no_split_modules`` (the decoder layers), then on
  the root (``verl/utils/fsdp_utils.py`` ``apply_fsdp2``), with ``MixedPrecisionPolicy(param_dtype=bf16,
  reduce_dtype=fp32, cast_forward_inputs=True)``, ``reshard_after_forward`` from ``fsdp_config`` and
  ``CPUOffloadPolicy(pin_memory=True)`` when ``offload_policy`` is set or the worker is forward-only (the
  reference), as ``transformer_impl.py`` ``_build_fsdp_module`` does;
- optimizer: ``torch.optim.AdamW(lr=1e-6, betas=(0.9, 0.999), weight_decay=0.01)`` (``optim`` defaults;
  ``verl/workers/config/optimizer.py`` ``build_optimizer``: torch defaults otherwise, so ``foreach`` on CUDA),
  gradient clipping at 1.0 (``clip_grad``);
- phases of one step: ``compute_log_prob`` (no grad: forward, bf16 logits, ``entropy_from_logits`` on the full
  logits, the rows concatenated as the padded path of ``_forward_micro_batch`` does, then
  ``logprobs_from_logits_v2``'s per-row log-softmax for bf16), ``update_forward`` (``optimizer.zero_grad()``
  then the same forward with grad and verl's vanilla PPO clipped policy loss, token-mean), ``backward``,
  ``optimizer_step`` (clip + step); with ``param_offload``/``optimizer_offload`` the shards go to the CPU
  between phases as ``offload_fsdp2_model_to_cpu`` (``model.to("cpu", non_blocking=True)`` + empty_cache) and
  ``offload_fsdp_optimizer`` (each state tensor ``.to("cpu", non_blocking=True)``) do, and come back before use
  (``load_fsdp2_model_to_gpu`` / ``load_fsdp_optimizer``), the host's resident memory read per phase.

Not reproduced, and recorded per case: torch.compile of the entropy (``use_torch_compile``; eager here),
``use_remove_padding`` (packing needs flash-attn's varlen kernels: every case sets it False and uses full
rows, no padding), the checkpoint load (random init in place: ``fsdp2_load_full_state_dict`` is not run).

Standard library at import (``measure.py --list`` and the tests read the plan without torch).
"""

from __future__ import annotations

import gc
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

#: verl release whose FSDP engine these steps follow.
VERL_VERSION = "0.9.1"

#: Rows (tokens) per log-softmax chunk: ``logprobs_from_logits_v2`` loops over single rows of the
#: concatenated (tokens, vocab) logits; chunks of 16 rows keep its memory (a few vocab-sized rows) at a
#: fraction of the Python loop's time.
LOGPROB_ROWS = 16

#: verl's actor optimizer defaults (``actor_rollout_ref.actor.optim``).
LR, BETAS, WEIGHT_DECAY, CLIP_GRAD = 1e-6, (0.9, 0.999), 0.01, 1.0

#: verl's PPO clip defaults (``clip_ratio`` 0.2, ``clip_ratio_c`` 3.0).
CLIP_RATIO, CLIP_RATIO_C = 0.2, 3.0

#: Seed of the random weights and token ids.
SEED = 1234


@dataclass(frozen=True, kw_only=True)
class FsdpCase:
    """One verl FSDP2 worker configuration."""

    id: str
    model: str
    """memplan preset name, or a path to a config.json (dry run)."""
    role: str
    """``actor`` (log-prob, update, step) or ``ref`` (forward-only log-probs, CPUOffloadPolicy)."""
    max_len: int
    """prompt + response tokens per sequence."""
    micro_batch: int
    reshard_after_forward: bool = True
    offload: bool = False
    """verl's ``param_offload`` and ``optimizer_offload`` (both)."""
    offload_policy: bool = False
    """FSDP2 ``CPUOffloadPolicy`` (always on for the forward-only reference)."""
    seconds: float = 10.0
    tags: tuple[str, ...] = field(default=())

    # the harness's common fields (measure.py reads these of every case)
    method: str = "grpo"
    trains: bool = True

    @property
    def prompt_len(self) -> int:
        return self.max_len // 4

    @property
    def response_len(self) -> int:
        return self.max_len - self.prompt_len

    @property
    def phases(self) -> tuple[str, ...]:
        if self.role == "ref":
            return ("compute_ref_log_prob",)
        if self.offload:
            return ("compute_log_prob", "update_forward", "backward", "optimizer_step", "offload")
        return ("compute_log_prob", "update_forward", "backward", "optimizer_step")


def verl_keys(case: FsdpCase) -> dict[str, str]:
    """The case as verl 0.9.1 Hydra overrides (dotted key -> value)."""
    role = "actor_rollout_ref.ref" if case.role == "ref" else "actor_rollout_ref.actor"
    fsdp = f"{role}.fsdp_config"
    keys = {
        "trainer.nnodes": "1", "trainer.n_gpus_per_node": "1",
        "data.max_prompt_length": str(case.prompt_len), "data.max_response_length": str(case.response_len),
        "data.train_batch_size": str(case.micro_batch), "actor_rollout_ref.rollout.n": "1",
        "actor_rollout_ref.model.enable_gradient_checkpointing": "True",
        "actor_rollout_ref.model.use_remove_padding": "False",
        "+actor_rollout_ref.model.override_config.attn_implementation": "sdpa",
        "actor_rollout_ref.actor.strategy": "fsdp2",
        "actor_rollout_ref.actor.ppo_mini_batch_size": str(case.micro_batch),
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": str(case.micro_batch),
        "actor_rollout_ref.actor.use_dynamic_bsz": "False",
        "actor_rollout_ref.actor.entropy_coeff": "0",
        "actor_rollout_ref.actor.use_torch_compile": "False",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": str(case.micro_batch),
        f"{fsdp}.model_dtype": "fp32",
        f"{fsdp}.reshard_after_forward": str(case.reshard_after_forward),
        f"{fsdp}.param_offload": str(case.offload), f"{fsdp}.optimizer_offload": str(case.offload),
        f"{fsdp}.offload_policy": str(case.offload_policy),
    }
    if case.role == "ref":
        keys.update({"actor_rollout_ref.actor.use_kl_loss": "True",
                     "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": str(case.micro_batch)})
    return keys


def memplan_command(case: FsdpCase) -> str:
    """The verl estimate that will predict the case (the verl CLI is being built: stored, compared later)."""
    words = ["memplan", "estimate", case.model, "--framework", "verl", "--method", "grpo"]
    return " ".join(words + [f"{k}={v}" for k, v in verl_keys(case).items()])


def case_config(case: FsdpCase) -> dict[str, Any]:
    """The record's configuration: verl keys plus the harness's own fields."""
    return {"model": case.model, "method": case.method, "framework": "verl", "verl_version": VERL_VERSION,
            "role": case.role, "max_len": case.max_len, "micro_batch": case.micro_batch, "gpus": 1,
            "verl": verl_keys(case), "tags": list(case.tags)}


def predict_spec(case: FsdpCase) -> dict[str, Any]:
    return {"command": memplan_command(case), "compare": "pending",
            "why_not_compared": "memplan has no verl estimate yet (issue 14); compare once it does"}


def _c(id_: str, model: str, role: str, max_len: int, micro_batch: int, seconds: float, *tags: str,
       **kw: Any) -> FsdpCase:
    return FsdpCase(id=id_, model=model, role=role, max_len=max_len, micro_batch=micro_batch, seconds=seconds,
                    tags=tags, trains=role != "ref", **kw)


Q05, Q15, Q3, Q7 = "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b"

#: The GPU plan, cheapest first (about 3-4 minutes on one H200 including process start-up).
GPU_CASES: tuple[FsdpCase, ...] = (
    _c("verl-fsdp2-qwen2.5-0.5b-actor-s1024-b2", Q05, "actor", 1024, 2, 8, "actor step"),
    _c("verl-fsdp2-qwen2.5-0.5b-actor-s4096-b1-noreshard", Q05, "actor", 4096, 1, 8, "reshard_after_forward off",
       reshard_after_forward=False),
    _c("verl-fsdp2-qwen2.5-0.5b-ref-s2048-b4-cpuoffload", Q05, "ref", 2048, 4, 8, "ref CPUOffloadPolicy"),
    _c("verl-fsdp2-qwen2.5-1.5b-actor-s2048-b2", Q15, "actor", 2048, 2, 12, "actor step"),
    _c("verl-fsdp2-qwen2.5-1.5b-actor-s8192-b1", Q15, "actor", 8192, 1, 14, "8k"),
    _c("verl-fsdp2-qwen2.5-1.5b-actor-s4096-b1-offload", Q15, "actor", 4096, 1, 20,
       "param_offload + optimizer_offload", offload=True),
    _c("verl-fsdp2-qwen2.5-1.5b-ref-s8192-b1-cpuoffload", Q15, "ref", 8192, 1, 12, "ref 8k CPUOffloadPolicy"),
    _c("verl-fsdp2-qwen2.5-3b-actor-s4096-b2", Q3, "actor", 4096, 2, 20, "3b actor"),
    _c("verl-fsdp2-qwen2.5-7b-actor-s1024-b1", Q7, "actor", 1024, 1, 30,
       "7b fp32 + AdamW on one GPU (foreach temporaries: may OOM at the step)"),
)

TINY_QWEN2 = "tests/data/tiny/qwen2-tiny.json"
TINY_LLAMA = "tests/data/tiny/llama-tiny.json"

#: Tiny configs for ``--dry-run`` (FSDP2 on the CPU with gloo): every code path, seconds each.
DRY_RUN_CASES: tuple[FsdpCase, ...] = (
    _c("tiny-verl-fsdp2-actor-s128-b2", TINY_QWEN2, "actor", 128, 2, 3, "actor step"),
    _c("tiny-verl-fsdp2-actor-s128-b1-noreshard", TINY_LLAMA, "actor", 128, 1, 3, "no reshard",
       reshard_after_forward=False),
    _c("tiny-verl-fsdp2-actor-s128-b1-offload", TINY_QWEN2, "actor", 128, 1, 3, "offload", offload=True),
    _c("tiny-verl-fsdp2-ref-s128-b2-cpuoffload", TINY_LLAMA, "ref", 128, 2, 2, "ref CPUOffloadPolicy"),
)


# --- torch code (imported lazily, in the case process) ----------------------------------------------------------


def host_memory() -> dict[str, int]:
    """VmRSS / VmHWM of this process from /proc/self/status, bytes."""
    out: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return {"host_rss": out.get("VmRSS", 0), "host_rss_peak": out.get("VmHWM", 0)}


def init_process_group(dry_run: bool) -> Any:
    """World size 1 (nccl on the GPU, gloo on the CPU) and the 1-D FSDP mesh verl builds."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", "29613")
    if not dry_run:
        torch.cuda.set_device(0)
    if not dist.is_initialized():
        dist.init_process_group("gloo" if dry_run else "nccl", rank=0, world_size=1)
    return init_device_mesh("cpu" if dry_run else "cuda", (1,), mesh_dim_names=("fsdp",))


def build(case: FsdpCase, mesh: Any, device: str) -> tuple[Any, Any]:
    """The FSDP2-wrapped model and (actor) its AdamW, as verl's ``_build_module`` + ``_build_fsdp_module``."""
    import torch
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    from transformers import AutoModelForCausalLM

    import measure

    cfg = measure.hf_config(measure.load_config_dict(case.model), "sdpa")
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa")
    model.to(torch.float32)
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if case.role == "ref":
        model.requires_grad_(False)
    offload = case.offload_policy or case.role == "ref"
    # pinned host memory needs an accelerator: the CPU dry run keeps the policy without pinning. fully_shard
    # moves the states to the mesh's device and FSDPParam copies each shard to (pinned) host memory.
    policy = CPUOffloadPolicy(pin_memory=device != "cpu") if offload else None
    kwargs = {"mesh": mesh, "reshard_after_forward": case.reshard_after_forward, "offload_policy": policy,
              "mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                                cast_forward_inputs=True)}
    names = set(model._no_split_modules or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    assert layers, f"no {names} modules to wrap"
    for layer in layers:
        fully_shard(layer, **{k: v for k, v in kwargs.items() if v is not None})
    fully_shard(model, **{k: v for k, v in kwargs.items() if v is not None})
    model.train(case.role != "ref")
    if case.role == "ref":
        return model, None
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    return model, optimizer


def logprobs_and_entropy(model: Any, ids: Any, response_len: int, entropy: bool) -> tuple[Any, Any]:
    """verl's padded-path forward: bf16 logits, entropy from the full logits, rows concatenated,
    per-row log-softmax (``logprobs_from_logits_v2`` for bf16), the response's tokens kept."""
    import torch
    import torch.nn.functional as F

    position_ids = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=position_ids).logits
    ent = None
    if entropy:
        pd = F.softmax(logits, dim=-1)
        ent = torch.logsumexp(logits, dim=-1) - torch.sum(pd * logits, dim=-1)
        del pd
    rows = torch.cat(list(logits.unbind()))  # (tokens, vocab): the copy verl's torch.cat makes
    labels = torch.roll(ids, shifts=-1, dims=1).reshape(-1)
    out = []
    for start in range(0, rows.shape[0], LOGPROB_ROWS):
        chunk = F.log_softmax(rows[start:start + LOGPROB_ROWS], dim=-1)
        out.append(chunk.gather(-1, labels[start:start + LOGPROB_ROWS, None]).squeeze(-1))
    log_probs = torch.cat(out).view(ids.shape)[:, -response_len - 1:-1]
    return log_probs, ent


def policy_loss(log_prob: Any, old_log_prob: Any, advantages: Any) -> Any:
    """verl's ``compute_policy_loss_vanilla`` (dual clip), token-mean."""
    import torch

    ratio = torch.exp(log_prob - old_log_prob)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1 - CLIP_RATIO, 1 + CLIP_RATIO)
    clipped = torch.maximum(loss1, loss2)
    loss3 = -advantages * CLIP_RATIO_C
    losses = torch.where(advantages < 0, torch.minimum(loss3, clipped), clipped)
    return losses.mean()


class VerlStep:
    """One verl iteration; ``iteration`` yields each phase's name before running it."""

    def __init__(self, case: FsdpCase, model: Any, optimizer: Any, vocab: int, device: str) -> None:
        import torch

        self.case, self.model, self.optimizer, self.vocab, self.device = case, model, optimizer, vocab, device
        self.generator = torch.Generator(device=device).manual_seed(SEED)
        self.carry: dict[str, Any] = {}
        self.current_phase: str | None = None

    def batch(self) -> Any:
        import torch

        return torch.randint(0, self.vocab, (self.case.micro_batch, self.case.max_len), generator=self.generator,
                             device=self.device)

    def to(self, where: str, optimizer: bool) -> None:
        """verl's offload_fsdp2_model_to_cpu / load_fsdp2_model_to_gpu and (optionally) the optimizer's."""
        import torch

        target = "cpu" if where == "cpu" else self.device
        with torch.no_grad():
            self.model.to(target, non_blocking=True)
            if optimizer and self.optimizer.state:
                for group in self.optimizer.param_groups:
                    for param in group["params"]:
                        state = self.optimizer.state[param]
                        for key, value in state.items():
                            if isinstance(value, torch.Tensor):
                                state[key] = value.to(target, non_blocking=True)
        if where == "cpu" and self.device != "cpu":
            torch.cuda.empty_cache()

    def iteration(self) -> Any:
        import torch

        c, case = self.carry, self.case
        if case.role == "ref":
            yield "compute_ref_log_prob"
            with torch.no_grad():
                c["ref_log_prob"], _ = logprobs_and_entropy(self.model, self.batch(), case.response_len, False)
            return
        yield "compute_log_prob"
        if case.offload:
            self.to(self.device, optimizer=False)
        with torch.no_grad():
            c["ids"] = self.batch()
            c["old_log_prob"], c["entropy"] = logprobs_and_entropy(self.model, c["ids"], case.response_len, True)
        if case.offload:
            self.to("cpu", optimizer=False)
        yield "update_forward"
        if case.offload:
            self.to(self.device, optimizer=True)
        self.optimizer.zero_grad()
        advantages = torch.randn(c["old_log_prob"].shape, generator=self.generator, device=self.device)
        log_prob, _ = logprobs_and_entropy(self.model, c["ids"], case.response_len, False)
        c["loss"] = policy_loss(log_prob, c["old_log_prob"], advantages)
        del log_prob
        yield "backward"
        c["loss"].backward()
        yield "optimizer_step"
        c["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP_GRAD)
        self.optimizer.step()
        if case.offload:
            yield "offload"
            self.to("cpu", optimizer=True)


def notes(case: FsdpCase, dry_run: bool) -> list[str]:
    out = ["random weights from config.json (from_config, fp32) built on the device; verl loads a checkpoint on "
           "the host and copies it in (fsdp2_load_full_state_dict): not reproduced",
           "sdpa attention, padded rows (use_remove_padding False): flash-attn is not installed",
           "entropy_from_logits eager (use_torch_compile False)",
           f"log-softmax over {LOGPROB_ROWS}-token chunks of the concatenated logits (verl: one row at a time)"]
    if case.role == "ref":
        out.append("forward-only reference: FSDP2 CPUOffloadPolicy(pin_memory=True), shards on the host")
    if dry_run:
        out.append("dry run on the CPU (gloo): no allocator statistics; CPUOffloadPolicy without pinning")
    return out


def measure_case(case: FsdpCase, env: Any) -> dict[str, Any]:
    """Build, warm up, measure one case (``env``: measure.Env for the probe and the device)."""
    import torch

    import measure

    env.probe.release()
    baseline = env.probe.now()
    record: dict[str, Any] = {"case": case.id, "suite": "fsdp", "config": case_config(case),
                              "engine": f"torch-fsdp2 (verl {VERL_VERSION} style)", "predict": predict_spec(case),
                              "emulated": notes(case, env.dry_run), "expected_phases": list(case.phases)}
    t0 = time.perf_counter()
    model = optimizer = step = None
    iterations: list[dict[str, dict[str, Any]]] = []
    try:
        mesh = init_process_group(env.dry_run)
        torch.manual_seed(SEED)
        model, optimizer = build(case, mesh, env.device)
        step = VerlStep(case, model, optimizer, int(measure.load_config_dict(case.model)["vocab_size"]), env.device)
        if case.offload:  # verl offloads right after building the worker (init_model)
            step.to("cpu", optimizer=True)
        env.probe.release()
        after_setup = {**env.probe.now(), **host_memory()}
        for _ in range(measure.WARMUP_ITERATIONS + 1):
            iterations.append({})
            measure.run_iteration(step, env.probe, iterations[-1],
                                  lambda: {f"{k}_at_end": v for k, v in host_memory().items()})
        record["measured"] = {"baseline": baseline, "after_setup": after_setup, "phases": iterations[-1],
                              "warmup_phases": iterations[0], "peak": measure.peak_summary(iterations[-1], baseline),
                              "warmup_iterations": measure.WARMUP_ITERATIONS, "host": host_memory()}
        record["error"] = None
    except Exception as exc:  # noqa: BLE001 - one case's failure (OOM included) must not end the run
        oom = type(exc).__name__ == "OutOfMemoryError"
        record["error"] = {"type": "oom" if oom else type(exc).__name__, "message": str(exc).splitlines()[0][:500],
                           "traceback": traceback.format_exc()[-2000:]}
        # what ran before the failure: the completed phases, the peak up to the failing allocation
        record["partial"] = {"iteration": len(iterations) - 1, "phase": getattr(step, "current_phase", None),
                             "phases": iterations[-1] if iterations else {},
                             "peaks_at_failure": env.probe.peaks(), "host": host_memory()}
    finally:
        del model, optimizer, step
        gc.collect()
        env.probe.release()
    record["wall_seconds"] = round(time.perf_counter() - t0, 2)
    return record
