"""OpenRLHF semantics for ``train_ppo_ray``: which models exist, where Ray places them, what each runs.

Source: OpenRLHF/OpenRLHF openrlhf/cli/train_ppo_ray.py::train and trainer/ray/launcher.py at v0.11.0
(3c3be623) and v0.9.5 (c0e2ee24); ../shared/reference/openrlhf.md §1.1, §3, §4.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from memplan.dtypes import DType
from memplan.errors import ConfigError
from memplan.frameworks.openrlhf.bounds import check_flag_value
from memplan.frameworks.openrlhf.job import _attn, _lora, _param_dtype, _positive, grad_accum_steps
from memplan.frameworks.openrlhf.schedule import rl_schedule
from memplan.frameworks.openrlhf.ray_placement import Group, ray_placements
from memplan.frameworks.openrlhf.saves import save_schedule, saves_critic
from memplan.jobs.job import GpuGroup, Job, Role, RoleName, RolloutSettings, RlJob, SlotRun
from memplan.jobs.options import Method
from memplan.memory.sharding import ZeroSharding, ZeroStage
from memplan.memory.logits import Head, LogProbImpl
from memplan.memory.vllm import OPENRLHF_GPU_MEMORY_UTILIZATION
from memplan.model.spec import ModelSpec

#: Physical GPUs per node when no group asks for more (OpenRLHF's ``--*_num_gpus_per_node`` default).
NODE_GPUS = 8

#: ``--advantage_estimator`` per memplan method (``gae`` alone needs a critic).
METHOD_ESTIMATOR = {Method.PPO: "gae", Method.GRPO: "group_norm", Method.REINFORCE: "reinforce",
                    Method.RLOO: "rloo"}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Unit:
    """A Ray placement group's bundles: each bundle is one GPU holding these roles."""

    name: str
    bundles: int
    roles: tuple[RoleName, ...]
    ranks: dict[RoleName, int]


def _group(values: Mapping[str, Any], prefix: str) -> GpuGroup:
    nodes = _positive(values, f"{prefix}_num_nodes")
    per_node = _positive(values, f"{prefix}_num_gpus_per_node")
    return GpuGroup(name=prefix, num_nodes=nodes, gpus_per_node=per_node)


def _given(values: Mapping[str, Any], key: str, default: Any) -> Any:
    """``values[key]``, or ``default`` only when the key is unset (a 0 stays 0 and is refused by its bound)."""
    value = values.get(key)
    return default if value is None else value


#: Versions whose ``train_ppo_ray`` sizes sequences as ``--prompt_max_len`` + ``--generate_max_len``.
LEGACY_LENGTH_VERSIONS = ("0.8", "0.9")


def sequence_lengths(values: Mapping[str, Any], version: str) -> tuple[int, int]:
    """(longest sequence, vLLM ``max_model_len``) of a ``train_ppo_ray`` run, the way ``version`` sizes them.

    0.11 (OpenRLHF/OpenRLHF@3c3be62): ``--data.max_len`` (default 2048) caps prompt + response. It is vLLM's
    ``max_model_len`` (openrlhf/cli/train_ppo_ray.py lines 53 and 74) and the truncation length of every
    sample (trainer/ppo_utils/samples_generator.py lines 212 and 249-267: ``sequences[:max_len]``); the
    executor cuts a long prompt so that prompt + ``max_tokens`` fits, and without ``--rollout.max_new_tokens``
    generates ``max_len - prompt_len`` tokens (utils/agent.py lines 215-233). The longest sequence is
    ``max_len`` whatever ``--rollout.max_new_tokens`` says.

    0.8/0.9 (@c0e2ee2 v0.9.5; @5974dfe v0.8.5 the same): every sample is cut at ``prompt_max_len +
    generate_max_len`` (trainer/ppo_utils/experience_maker.py@c0e2ee2 lines 374 and 406-424); vLLM's
    ``max_model_len`` is ``--max_len`` or, unset, that same sum (cli/train_ppo_ray.py@c0e2ee2 line 44,
    defaults.py ``_legacy_max_len``). A ``--max_len`` below the sum caps the sequence too: vLLM ends a request
    at ``max_model_len`` tokens (vllm/v1/core/sched/utils.py ``check_stop``).
    """
    if version in LEGACY_LENGTH_VERSIONS:
        legacy = _positive(values, "prompt_max_len") + _positive(values, "generate_max_len")
        model_len = int(values.get("max_len") or legacy)
        return min(legacy, model_len), model_len
    max_len = _positive(values, "max_len")
    return max_len, max_len


def rollout_settings(values: Mapping[str, Any], version: str) -> RolloutSettings:
    """vLLM and rollout flags, with sequence lengths as ``version`` sizes them (``sequence_lengths``)."""
    seq_len, max_model_len = sequence_lengths(values, version)
    util = float(_given(values, "vllm_gpu_memory_utilization", OPENRLHF_GPU_MEMORY_UTILIZATION))
    check_flag_value("vllm_gpu_memory_utilization", util, "--vllm_gpu_memory_utilization")
    tp = int(_given(values, "vllm_tensor_parallel_size", 1))
    check_flag_value("vllm_tensor_parallel_size", tp, "--vllm_tensor_parallel_size")
    return RolloutSettings(
        num_engines=int(values.get("vllm_num_engines") or 0), tensor_parallel_size=tp, gpu_memory_utilization=util,
        enforce_eager=bool(values.get("enforce_eager")), enable_prefix_caching=bool(values.get("enable_prefix_caching")),
        enable_sleep=bool(values.get("vllm_enable_sleep")) and bool(values.get("colocate_all_models")),
        max_model_len=max_model_len, seq_len=seq_len,
        rollout_batch_size=_positive(values, "rollout_batch_size"),
        n_samples_per_prompt=_positive(values, "n_samples_per_prompt"),
        micro_rollout_batch_size=_positive(values, "micro_rollout_batch_size"))


def _units(values: Mapping[str, Any], groups: dict[RoleName, GpuGroup], rollout: RolloutSettings) -> list[_Unit]:
    """Placement groups in the order ``train_ppo_ray.train`` creates them, with the roles per bundle."""
    colocate_all = bool(values.get("colocate_all_models")) and not values.get("async_train")
    actor_ref = colocate_all or bool(values.get("colocate_actor_ref"))
    critic_reward = bool(values.get("colocate_critic_reward"))
    units: list[_Unit] = []
    shared_a: list[RoleName] = [RoleName.ACTOR]
    if actor_ref and RoleName.REF in groups:
        shared_a.append(RoleName.REF)
    if colocate_all:
        shared_a += [r for r in (RoleName.CRITIC, RoleName.REWARD) if r in groups and not critic_reward]
        if rollout.num_engines:
            shared_a.append(RoleName.ROLLOUT)
    alone = [r for r in (RoleName.ROLLOUT, RoleName.ACTOR, RoleName.REF) if r in groups and r not in shared_a]
    shared_b = [r for r in (RoleName.CRITIC, RoleName.REWARD) if critic_reward and r in groups]
    alone += [r for r in (RoleName.CRITIC, RoleName.REWARD) if r in groups and r not in shared_a + shared_b]
    order = [RoleName.ROLLOUT, RoleName.ACTOR, RoleName.REF, RoleName.CRITIC, RoleName.REWARD]
    if len(shared_a) > 1 or colocate_all:
        units.append(_Unit(name="actor", bundles=groups[RoleName.ACTOR].num_gpus, roles=tuple(shared_a),
                           ranks={r: groups[r].num_gpus for r in shared_a}))
    else:
        alone.append(RoleName.ACTOR)
    for role in order:
        if role in alone and role != RoleName.CRITIC and role != RoleName.REWARD:
            units.append(_Unit(name=str(role), bundles=groups[role].num_gpus, roles=(role,),
                               ranks={role: groups[role].num_gpus}))
    if shared_b:
        units.append(_Unit(name="critic", bundles=groups[RoleName.CRITIC].num_gpus, roles=tuple(shared_b),
                           ranks={r: groups[r].num_gpus for r in shared_b}))
    for role in (RoleName.CRITIC, RoleName.REWARD):
        if role in alone:
            units.append(_Unit(name=str(role), bundles=groups[role].num_gpus, roles=(role,),
                               ranks={role: groups[role].num_gpus}))
    return units


def pack_slots(units: list[_Unit]) -> tuple[SlotRun, ...]:
    """Ray PACK placement: each group's bundles fill the current node, then the next, so the cluster's
    GPUs in node-major order are the groups' bundles one after another. Bundle ``b`` of a group holds
    the roles with more than ``b`` ranks in it; a group is at most one run per distinct rank count.

    Assumes: groups are placed in creation order on nodes of ``RlJob.node_gpus`` GPUs (Ray may place
    differently on a busy cluster; host RAM per node depends on it).
    """
    runs: list[SlotRun] = []
    start = 0
    for unit in units:
        cuts = sorted({0, unit.bundles} | {min(unit.ranks[r], unit.bundles) for r in unit.roles})
        for low, high in zip(cuts, cuts[1:]):
            roles = tuple(r for r in unit.roles if low < unit.ranks[r])
            if runs and runs[-1].roles == roles and runs[-1].first + runs[-1].count == start + low:
                runs[-1] = SlotRun(first=runs[-1].first, count=runs[-1].count + high - low, roles=roles)
            else:
                runs.append(SlotRun(first=start + low, count=high - low, roles=roles))
        start += unit.bundles
    return tuple(runs)


def _check_asserts(values: Mapping[str, Any], groups: dict[RoleName, GpuGroup], rollout: RolloutSettings) -> None:
    """The constraints ``train_ppo_ray.train`` asserts, with its messages."""
    colocate_all = bool(values.get("colocate_all_models")) and not values.get("async_train")
    actor = groups[RoleName.ACTOR]
    if (colocate_all or values.get("colocate_actor_ref")) and RoleName.REF in groups and \
            (groups[RoleName.REF].num_nodes, groups[RoleName.REF].gpus_per_node) != (actor.num_nodes, actor.gpus_per_node):
        raise ConfigError("--colocate_actor_ref", "num_nodes and num_gpus_per_node must be the same when colocate "
                                                  "actor and ref model.")
    if values.get("colocate_critic_reward") and RoleName.CRITIC in groups and RoleName.REWARD in groups and \
            (groups[RoleName.CRITIC].num_nodes, groups[RoleName.CRITIC].gpus_per_node) != \
            (groups[RoleName.REWARD].num_nodes, groups[RoleName.REWARD].gpus_per_node):
        raise ConfigError("--colocate_critic_reward", "num_nodes and num_gpus_per_node must be the same when "
                                                      "colocate critic and reward model.")
    if colocate_all and rollout.num_engines and actor.num_gpus != rollout.num_engines * rollout.tensor_parallel_size:
        raise ConfigError("--colocate_all_models", f"actor_num_nodes * actor_num_gpus_per_node must be equal to "
                                                   f"vllm_num_engines * vllm_tensor_parallel_size, got {actor.num_gpus} "
                                                   f"and {rollout.num_engines * rollout.tensor_parallel_size}")
    if values.get("packing_samples") and not rollout.num_engines:
        raise ConfigError("--packing_samples", "packing_samples needs vLLM (--vllm_num_engines > 0)")


def rl_roles(values: Mapping[str, Any]) -> tuple[RoleName, ...]:
    """Which models ``train_ppo_ray`` builds, in the order actor, critic, ref, reward: the actor; a critic with
    GAE; a reference when there is a KL term (``--init_kl_coef`` > 0 or ``--use_kl_loss``); a reward model
    unless rewards come from ``--remote_rm_url`` or ``--agent_func_path``
    (OpenRLHF openrlhf/cli/train_ppo_ray.py@3c3be62 ``train``; reference/openrlhf.md §3)."""
    roles = [RoleName.ACTOR]
    if str(values.get("advantage_estimator") or "gae") == "gae":
        roles.append(RoleName.CRITIC)
    if float(values.get("init_kl_coef") or 0) > 0 or values.get("use_kl_loss"):
        roles.append(RoleName.REF)
    if not (values.get("remote_rm_url") or values.get("agent_func_path")):
        roles.append(RoleName.REWARD)
    return tuple(roles)


NO_ENGINES_NOTE = (
    "no vLLM engines (--vllm_num_engines not given or 0): OpenRLHF 0.8-0.11 generates samples only through "
    "vLLM engines, so this run would fail at its first rollout; memplan estimates the models without generation "
    "(vLLM flags such as --vllm_tensor_parallel_size have no effect)")
"""OpenRLHF has no generation path without vLLM: ``generate_samples`` always calls ``_generate_vllm``
(trainer/ppo_utils/experience_maker.py@5974dfe line 259, @c0e2ee2 line 284), which at v0.11.0 picks an engine
from ``self.vllm_engines`` (trainer/ppo_utils/samples_generator.py@3c3be62 lines 216-233: an empty list has
no engine to pick)."""


def build_rl_job(values: Mapping[str, Any], *, version: str, load: Callable[[str], ModelSpec], command: str,
                 logprob_impl: LogProbImpl = LogProbImpl.FLASH_ATTN_TRITON) -> tuple[RlJob, tuple[str, ...]]:
    """The RlJob of a ``train_ppo_ray`` run, and notes on assumptions."""
    notes: list[str] = []
    if not values.get("pretrain"):
        raise ConfigError("--pretrain", "required: the actor model")
    rollout = rollout_settings(values, version)
    new_tokens = values.get("generate_max_len")
    if version not in LEGACY_LENGTH_VERSIONS and isinstance(new_tokens, int) and new_tokens >= rollout.seq_len:
        notes.append(f"--rollout.max_new_tokens {new_tokens} leaves no room for a prompt within --data.max_len "
                     f"{rollout.seq_len}: OpenRLHF {version} cuts every sequence at {rollout.seq_len} tokens")
    if not rollout.num_engines:
        notes.append(NO_ENGINES_NOTE)
    estimator = str(values.get("advantage_estimator") or "gae")
    present = rl_roles(values)
    if RoleName.REWARD in present and not values.get("reward_pretrain"):
        raise ConfigError("--reward_pretrain", "required unless --remote_rm_url or --agent_func_path is given")
    groups = {name: _group(values, str(name))
              for name in (RoleName.ACTOR, RoleName.REF, RoleName.CRITIC, RoleName.REWARD) if name in present}
    if rollout.num_engines:
        groups[RoleName.ROLLOUT] = GpuGroup(name="rollout", num_nodes=1,
                                            gpus_per_node=rollout.num_engines * rollout.tensor_parallel_size)
    _check_asserts(values, groups, rollout)
    dtype = _param_dtype(values, notes)
    stage = int(values.get("zero_stage", 2))
    if stage not in (0, 1, 2, 3):
        raise ConfigError("--zero_stage", f"must be 0, 1, 2 or 3, got {stage}")
    zero = ZeroSharding(stage=ZeroStage(stage), zpg=int(values.get("zpg") or 1),
                        overlap_comm=bool(values.get("overlap_comm")), grad_accum_dtype=DType.from_name(
                            str(values["grad_accum_dtype"])) if values.get("grad_accum_dtype") else None)
    common = dict(param_dtype=dtype,
                  attn_impl=_attn(values), seq_len=rollout.seq_len, sequences_per_sample=1,
                  packing=bool(values.get("packing_samples")), ring_size=int(values.get("ring_attn_size") or 1),
                  ds_tp_size=int(values.get("ds_tensor_parallel_size") or 1),
                  load_in_4bit=bool(values.get("load_in_4bit")))
    trained = dict(sharding=replace(zero, offload_optimizer=bool(values.get("adam_offload"))), lora=_lora(values),
                   gradient_checkpointing=bool(values.get("gradient_checkpointing")),
                   micro_batch_size=_positive(values, "micro_train_batch_size"))
    frozen = dict(lora=None, gradient_checkpointing=False,
                  micro_batch_size=rollout.micro_rollout_batch_size)
    entropy_coef = values.get("entropy_loss_coef")
    saves = save_schedule("train_ppo_ray", values, version)
    roles = [Role(name=RoleName.ACTOR, spec=load(str(values["pretrain"])), head=Head.LM, trained=True, group="actor",
                  grad_accum_steps=grad_accum_steps(values, groups[RoleName.ACTOR].num_gpus),
                  keeps_output_to_step=True, entropy=entropy_coef is not None,
                  entropy_in_loss=entropy_coef is not None and float(entropy_coef) != 0, saves_hf_model=True,
                  saves_ds_checkpoint=saves.ds_every_steps, **common, **trained)]
    if RoleName.CRITIC in groups:
        critic = values.get("critic_pretrain") or values.get("reward_pretrain") or values["pretrain"]
        roles.append(Role(name=RoleName.CRITIC, spec=load(str(critic)), head=Head.VALUE, trained=True, group="critic",
                          grad_accum_steps=grad_accum_steps(values, groups[RoleName.CRITIC].num_gpus),
                          saves_hf_model=saves_critic(values), saves_ds_checkpoint=saves.ds_every_steps,
                          **common, **trained))
    if RoleName.REF in groups:
        roles.append(Role(name=RoleName.REF, spec=load(str(values.get("ref_pretrain") or values["pretrain"])),
                          head=Head.LM, trained=False, group="ref",
                          sharding=replace(zero, offload_params=bool(values.get("ref_offload"))),
                          **{**common, "load_in_4bit": False}, **frozen))
    if RoleName.REWARD in groups:
        roles.append(Role(name=RoleName.REWARD, spec=load(str(values["reward_pretrain"])), head=Head.VALUE,
                          trained=False, group="reward",
                          sharding=replace(zero, offload_params=bool(values.get("reward_offload"))),
                          **{**common, "load_in_4bit": False}, **frozen))
    node_gpus = max([NODE_GPUS] + [g.gpus_per_node for name, g in groups.items() if name != RoleName.ROLLOUT])
    units = _units(values, groups, rollout)
    runs = pack_slots(units)
    alternatives = ray_placements([Group(bundles=u.bundles, roles=u.roles, ranks=u.ranks) for u in units],
                                  node_gpus=node_gpus, num_nodes=-(-sum(u.bundles for u in units) // node_gpus))
    method = next((m for m, e in METHOD_ESTIMATOR.items() if e == estimator), Method.PPO)
    job = Job(method=method, roles=tuple(roles), groups=tuple(groups.values()), logprob_impl=logprob_impl,
              framework_version=version, command=command, saves=saves)
    schedule = rl_schedule([r.name for r in roles], engines=bool(rollout.num_engines),
                           deepspeed_sleep=bool(values.get("deepspeed_enable_sleep")) and not values.get("adam_offload"),
                           engine_sleep=rollout.enable_sleep,
                           hybrid=bool(values.get("colocate_all_models")) and not values.get("async_train"))
    rl = RlJob(job=job, rollout=rollout, runs=runs, node_gpus=node_gpus, schedule=schedule,
               entropy=values.get("entropy_loss_coef") is not None, ray_placements=alternatives)
    return rl, tuple(notes)


__all__ = ["METHOD_ESTIMATOR", "build_rl_job", "pack_slots", "replace", "rl_roles"]
