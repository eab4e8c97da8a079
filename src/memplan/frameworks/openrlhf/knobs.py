"""OpenRLHF's knobs: which canonical key (``frameworks/openrlhf/data/flags_*.toml``) holds each knob's value.

The planner and the suggestions name knobs (``jobs.knobs``); this table spells them for OpenRLHF, and
:func:`apply` writes knob settings into a run's values with OpenRLHF's post-parse rules re-run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from functools import cache
from types import MappingProxyType
from typing import Any

from memplan.frameworks.base import ResolvedRun
from memplan.frameworks.openrlhf.defaults import LEGACY_DERIVED_KEYS, resolve_values
from memplan.jobs.job import RoleName
from memplan.jobs.knobs import Knob, KnobKey, KnobValue

#: Run-wide knobs and the key that holds each.
_RUN_KEYS: dict[Knob, str] = {
    Knob.SHARDING_STAGE: "zero_stage", Knob.OPTIMIZER_OFFLOAD: "adam_offload",
    Knob.CHECKPOINTING: "gradient_checkpointing", Knob.MICRO_BATCH: "micro_train_batch_size",
    Knob.FORWARD_MICRO_BATCH: "micro_rollout_batch_size", Knob.GLOBAL_BATCH: "train_batch_size",
    Knob.MAX_LENGTH: "max_len", Knob.PROMPT_LENGTH: "prompt_max_len", Knob.RESPONSE_LENGTH: "generate_max_len",
    Knob.ENGINES: "vllm_num_engines", Knob.ENGINE_TP: "vllm_tensor_parallel_size",
    Knob.ENGINE_MEMORY_SHARE: "vllm_gpu_memory_utilization", Knob.ENGINE_SLEEP: "vllm_enable_sleep",
    Knob.TRAINER_SLEEP: "deepspeed_enable_sleep", Knob.COLOCATE_ALL: "colocate_all_models",
    Knob.COLOCATE_ACTOR_REF: "colocate_actor_ref", Knob.COLOCATE_CRITIC_REWARD: "colocate_critic_reward",
    Knob.ATTENTION_IMPL: "attn_implementation", Knob.LORA_RANK: "lora_rank", Knob.SEQUENCE_PARALLEL: "ring_attn_size",
    Knob.PACKING: "packing_samples", Knob.TENSOR_PARALLEL: "ds_tensor_parallel_size", Knob.FOUR_BIT: "load_in_4bit",
    Knob.PARAM_DTYPE: "param_dtype", Knob.GRAD_ACCUM_DTYPE: "grad_accum_dtype", Knob.OVERLAP_COMM: "overlap_comm",
    Knob.PREFIX_CACHING: "enable_prefix_caching", Knob.EAGER_ENGINE: "enforce_eager",
    Knob.SAMPLES_PER_PROMPT: "n_samples_per_prompt", Knob.ROLLOUT_BATCH: "rollout_batch_size",
    Knob.ENGINE_MAX_LENGTH: "max_model_len",
}
#: Frozen models whose parameters may be offloaded, and the key of each.
_PARAM_OFFLOAD: dict[RoleName, str] = {RoleName.REF: "ref_offload", RoleName.REWARD: "reward_offload",
                                       RoleName.TEACHER: "teacher_offload"}
#: Roles with their own GPU group in ``train_ppo_ray``.
GROUP_ROLES = (RoleName.ACTOR, RoleName.CRITIC, RoleName.REF, RoleName.REWARD)


@cache
def knob_keys() -> Mapping[KnobKey, str]:
    """Every OpenRLHF knob with the canonical key holding its value."""
    out = {KnobKey(knob=k): key for k, key in _RUN_KEYS.items()}
    out |= {KnobKey(knob=Knob.PARAM_OFFLOAD, role=r): key for r, key in _PARAM_OFFLOAD.items()}
    for role in GROUP_ROLES:
        out[KnobKey(knob=Knob.GROUP_NODES, role=role)] = f"{role}_num_nodes"
        out[KnobKey(knob=Knob.GROUP_GPUS_PER_NODE, role=role)] = f"{role}_num_gpus_per_node"
    return MappingProxyType(out)


def key(knob: Knob, role: RoleName | str | None = None) -> str:
    """The canonical key of ``knob`` (for ``role`` when it is set per role)."""
    return knob_keys()[KnobKey(knob=knob, role=RoleName(role) if role is not None else None)]


def knob_of(name: str) -> KnobKey | None:
    """The knob a canonical key holds (None when it is no knob)."""
    return _BY_KEY().get(name)


@cache
def _BY_KEY() -> Mapping[str, KnobKey]:  # noqa: N802 (a cached table)
    return MappingProxyType({v: k for k, v in knob_keys().items()})


def apply(run: ResolvedRun, settings: Mapping[KnobKey, KnobValue]) -> ResolvedRun:
    """``run`` with ``settings`` written to their keys and OpenRLHF's post-parse rules re-run."""
    return with_values(run, {**run.values, **{knob_keys()[k]: v for k, v in settings.items()}})


def resolved_values(script: str, values: Mapping[str, Any], version: str) -> dict[str, Any]:
    """OpenRLHF's post-parse rules on changed values (0.8's derived dtype and attention keys re-derived)."""
    if version == "0.8":
        values = {k: v for k, v in values.items() if k not in LEGACY_DERIVED_KEYS}
    return resolve_values((script, dict(values)), version)


def with_values(run: ResolvedRun, values: Mapping[str, Any]) -> ResolvedRun:
    """``run`` with ``values`` and OpenRLHF's post-parse rules re-run."""
    return replace(run, values=resolved_values(run.script, values, run.version))



#: Searched options a plan's text leaves out when at these values (they are off).
QUIET_VALUES = frozenset({("lora_rank", 0), ("ring_attn_size", 1), ("vllm_enable_sleep", False),
                          ("deepspeed_enable_sleep", False)})
