"""The planner's search space: what it may change in an OpenRLHF run, the layouts, and the orders.

Glossary (used across ``memplan.planner``):

* *role*: a model of the run (``actor``, ``critic``, ``ref``, ``reward``; ``train`` is the one GPU
  group of a single-model script); ``rollout`` is the vLLM engines.
* *unit*: a set of roles that share GPUs, and so one per-GPU peak: ``actor``, ``actor+ref``
  (``--colocate_actor_ref``), ``critic+reward``, ``rollout`` (one engine's TP shard), ``hybrid``
  (``--colocate_all_models``: every model and the engines), ``train``.
* *layout*: GPUs per role, which roles share GPUs, and the vLLM engines (count, TP, memory share).
* *flag set*: the values of the searched OpenRLHF flags (ZeRO stage, offload, checkpointing,
  micro batches, LoRA, ring attention, sleep).
* *saving* flags: the flag set that needs the least GPU memory; *speed-ups*: the changes back
  towards faster training, tried in the order OpenRLHF's maintainers advise.

The space only describes candidates (``knobs`` says what may change); ``search`` evaluates them
(through ``memplan.api.estimate_run``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from memplan.api import ResolvedRun, command_for, resolve_command
from memplan.errors import ConfigError
from memplan.frameworks.openrlhf import LauncherWorld, format_command, load_table, parse_command, resolve_values
from memplan.frameworks.openrlhf.bounds import MAX_GPUS, MAX_GPUS_PER_NODE, check_count
from memplan.frameworks.openrlhf.defaults import LEGACY_DERIVED_KEYS
from memplan.frameworks.openrlhf.flags import FlagKind, check_value, tables_with
from memplan.frameworks.openrlhf.job import SCRIPT_METHOD
from memplan.frameworks.openrlhf.rl_job import rl_roles
from memplan.model import load_model_spec, num_params

#: From this many tokens per sequence the planner also tries ring attention (context parallel).
LONG_SEQUENCE_TOKENS = 8192
#: Largest cluster searched when ``--max-gpus`` is not given.
DEFAULT_MAX_GPUS = 512
#: The RL model roles, in OpenRLHF's placement order.
RL_ROLES = ("actor", "critic", "ref", "reward")
#: Role name of a single-model script's one GPU group.
TRAIN = "train"

#: OpenRLHF keys the planner chooses (unless pinned by the user), per script kind.
RL_SEARCHED = frozenset({
    "zero_stage", "adam_offload", "gradient_checkpointing", "micro_train_batch_size", "micro_rollout_batch_size",
    "lora_rank", "ring_attn_size", "ref_offload", "reward_offload", "vllm_gpu_memory_utilization",
    "vllm_enable_sleep", "deepspeed_enable_sleep", "colocate_actor_ref", "colocate_critic_reward",
    "colocate_all_models", "vllm_num_engines", "vllm_tensor_parallel_size",
    *(f"{r}_num_{k}" for r in RL_ROLES for k in ("nodes", "gpus_per_node")),
})
#: Colocation flags: a layout sets them (``placements`` keeps only the layouts a pin allows).
PLACEMENT_KEYS = frozenset({"colocate_all_models", "colocate_actor_ref", "colocate_critic_reward"})
SINGLE_SEARCHED = frozenset({"zero_stage", "adam_offload", "gradient_checkpointing", "micro_train_batch_size",
                             "lora_rank", "ring_attn_size", "packing_samples", "ref_offload", "teacher_offload"})


class Placement(StrEnum):
    """Which roles share GPUs (OpenRLHF's colocation flags, reference/openrlhf.md §4)."""

    SEPARATE = "separate"
    """Every model and the vLLM engines on their own GPUs."""
    ACTOR_REF = "colocate_actor_ref"
    """Actor and reference share GPUs."""
    CRITIC_REWARD = "colocate_critic_reward"
    """Critic and reward share GPUs."""
    PAIRS = "colocate_pairs"
    """Both pairs above."""
    HYBRID = "hybrid_engine"
    """``--colocate_all_models``: every model and the engines on the same GPUs."""
    SINGLE = "single"
    """A single-model script's one GPU group."""


class Fit(StrEnum):
    """How much room a plan must leave."""

    ANY = "fits"
    """Peak at most the capacity (verdict fits or tight): the minimum's test."""
    HEADROOM = "headroom"
    """At least 10% of every GPU and node free (verdict fits): the recommended layout's test."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """GPUs per role, colocation, and the vLLM engines of one candidate."""

    placement: Placement
    """Which roles share GPUs."""
    sizes: tuple[tuple[str, int], ...]
    """GPUs of each model role's group (``train`` for single-model scripts)."""
    engines: int = 0
    """vLLM engines (0: none)."""
    tp: int = 1
    """vLLM tensor-parallel size (GPUs per engine)."""
    gmu: float | None = None
    """vLLM ``gpu_memory_utilization`` (None: no engines)."""

    def size(self, role: str) -> int:
        """GPUs of ``role``'s group (0 when the run has no such role)."""
        return dict(self.sizes).get(role, 0)

    def _pairs(self) -> tuple[bool, bool]:
        sizes = dict(self.sizes)
        actor_ref = self.placement in (Placement.ACTOR_REF, Placement.PAIRS) and "ref" in sizes
        critic_reward = self.placement in (Placement.CRITIC_REWARD, Placement.PAIRS) and \
            "critic" in sizes and "reward" in sizes
        return actor_ref, critic_reward

    @property
    def num_gpus(self) -> int:
        """GPUs the layout occupies."""
        if self.placement in (Placement.HYBRID, Placement.SINGLE):
            return max(n for _, n in self.sizes)
        actor_ref, critic_reward = self._pairs()
        colocated = {"ref"} if actor_ref else set()
        colocated |= {"reward"} if critic_reward else set()
        return sum(n for role, n in self.sizes if role not in colocated) + self.engines * self.tp

    def units(self) -> dict[str, Any]:
        """Unit name → the configuration its per-GPU peak depends on (size, or vLLM TP and share)."""
        sizes = dict(self.sizes)
        if self.placement == Placement.SINGLE:
            return {TRAIN: sizes[TRAIN]}
        if self.placement == Placement.HYBRID:
            return {"hybrid": (sizes["actor"], self.tp, self.gmu)}
        actor_ref, critic_reward = self._pairs()
        out: dict[str, Any] = {"actor+ref" if actor_ref else "actor": sizes["actor"]}
        if "critic" in sizes:
            out["critic+reward" if critic_reward else "critic"] = sizes["critic"]
        if "ref" in sizes and not actor_ref:
            out["ref"] = sizes["ref"]
        if "reward" in sizes and not critic_reward:
            out["reward"] = sizes["reward"]
        if self.engines:
            out["rollout"] = (self.tp, self.gmu)
        return out


def unit_of(roles: Sequence[str]) -> str:
    """The unit name of a GPU holding ``roles`` (an estimate's device entry)."""
    names = set(roles)
    if "rollout" in names and len(names) > 1:
        return "hybrid"
    if "policy" in names or not names & {*RL_ROLES, "rollout"}:
        return TRAIN
    return "+".join(r for r in ("actor", "critic", "ref", "reward", "rollout") if r in names)


FlagSet = tuple[tuple[str, Any], ...]
"""Searched flag values, sorted by key (hashable)."""


def flag_set(values: Mapping[str, Any]) -> FlagSet:
    """A FlagSet from a mapping."""
    return tuple(sorted(values.items()))


def with_flags(flags: FlagSet, **changes: Any) -> FlagSet:
    """``flags`` with ``changes`` applied."""
    return flag_set({**dict(flags), **changes})


@dataclass(frozen=True, slots=True, kw_only=True)
class Space:
    """Everything fixed for one plan request: the base run, the pins, and the roles present."""

    run: ResolvedRun
    """The run with OpenRLHF's defaults, the user's flags and pins (what every candidate starts from)."""
    rl: bool
    """``train_ppo_ray`` (roles, vLLM) rather than a single-model script."""
    roles: tuple[str, ...]
    """Model roles present (``actor``, ``critic``...; or ``train``)."""
    has_vllm: bool
    """Whether the run generates with vLLM engines."""
    gpus_per_node: int
    """GPUs per node of the cluster."""
    max_gpus: int
    """Most GPUs a plan may use."""
    pinned: Mapping[str, Any]
    """Searched keys the user fixed (``--keep`` or a flag given), with their values."""
    heads: int
    """Attention heads of the actor (vLLM's TP must divide them)."""
    num_params: int
    """Parameters of the actor (policy)."""
    allow_lora: bool
    """LoRA may be proposed."""
    long_sequence: bool
    """Sequences long enough to try ring attention."""
    notes: tuple[str, ...]
    """What the planner assumed."""

    def free(self, key: str) -> bool:
        """Whether the planner may choose ``key``."""
        return key not in self.pinned

    def value(self, key: str) -> Any:
        """The base run's value of ``key``."""
        return self.run.values.get(key)


# ---- building the space ------------------------------------------------------------------------


def _bool_word(text: str, location: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ConfigError(location, f"expected true or false, got {text!r}")


def parse_keep(items: Sequence[str], script: str, version: str) -> dict[str, Any]:
    """``--keep FLAG=VALUE`` items → canonical keys and typed values (``zero_stage=2``, ``--ds.zero_stage=2``)."""
    table = load_table(script, version)
    pinned: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        location = f"--keep {item}"
        if not sep or not name.strip("-"):
            raise ConfigError(location, "expected FLAG=VALUE, e.g. zero_stage=3 or adam_offload=false")
        spec, key = _keep_spec(name.strip(), script, table)
        if spec is None:
            raise ConfigError(location, f"not a flag of openrlhf.cli.{script}")
        if spec.kind in (FlagKind.STORE_TRUE, FlagKind.STORE_FALSE):
            value: Any = _bool_word(text, location)
            if spec.kind is FlagKind.STORE_FALSE and name.lstrip("-") == spec.option.lstrip("-") and key != name:
                value = not value
        elif spec.kind is FlagKind.INT:
            value = _number(int, text, location)
        elif spec.kind is FlagKind.FLOAT:
            value = _number(float, text, location)
        else:
            value = text
        pinned[key] = check_value(spec, value, location)
    return pinned


def _number(kind: type, text: str, location: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(location, f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def _keep_spec(name: str, script: str, table: Any) -> tuple[Any, str]:
    bare = name.lstrip("-")
    if bare in table.by_key:
        return table.by_key[bare][0], bare
    for other in tables_with(script):
        spec = other.by_option.get(f"--{bare}")
        if spec is not None:
            return spec, spec.key
    return None, bare


def _rl_roles(values: Mapping[str, Any]) -> tuple[str, ...]:
    """Which models ``train_ppo_ray`` builds (rl_job.rl_roles)."""
    return tuple(str(r) for r in rl_roles(values))


def build_space(model: str, method: str, *, flags: Sequence[str] = (), keep: Sequence[str] = (),
                gpus_per_node: int = 8, max_gpus: int | None = None, allow_lora: bool = False,
                version: str | None = None) -> Space:
    """Resolve the request once: OpenRLHF defaults, the user's flags, pins and the roles present."""
    check_count("--gpus-per-node", gpus_per_node, 1, MAX_GPUS_PER_NODE)
    check_count("--max-gpus", max_gpus, 0, MAX_GPUS)
    spec = load_model_spec(model)
    notes: list[str] = []
    argv = command_for(model, method, list(flags))
    run = resolve_command(argv, version=version, whole_run=False)
    notes.extend(run.notes)  # the OpenRLHF version assumed, flags not read
    given = parse_command(argv).values
    rl = run.script not in SCRIPT_METHOD
    searched = RL_SEARCHED if rl else SINGLE_SEARCHED
    pinned = {k: run.values[k] for k in given if k in searched}
    pinned.update(parse_keep(keep, run.script, run.version))
    values = dict(run.values)
    if rl and "reward" in _rl_roles(values) and not values.get("reward_pretrain"):
        values["reward_pretrain"] = model
        notes.append(f"reward model assumed the same as the actor (--reward_pretrain {model}); "
                     "pass --reward_pretrain or --remote_rm_url to change it")
    if run.version == "0.8":
        for key, value in (("bf16", True), ("flash_attn", True)):
            if key not in given and key not in pinned:
                values[key] = value
        notes.append("OpenRLHF 0.8: --bf16 and --flash_attn added, as every official script passes them")
    values.update(pinned)
    values = _resolve(run.script, values, run.version)
    roles = _rl_roles(values) if rl else (TRAIN,)
    has_vllm = rl and (pinned.get("vllm_num_engines", 1) or 0) > 0
    if gpus_per_node != 8:
        notes.append("host RAM per node follows the estimator's Ray packing (nodes of at least 8 GPUs)")
    seq = int(values.get("max_len") or 0) or \
        int(values.get("prompt_max_len") or 0) + int(values.get("generate_max_len") or 0)
    return Space(run=replace(run, values=values, notes=()), rl=rl, roles=roles, has_vllm=bool(has_vllm),
                 gpus_per_node=gpus_per_node, max_gpus=DEFAULT_MAX_GPUS if max_gpus is None else max_gpus,
                 pinned=pinned, heads=spec.num_attention_heads, num_params=num_params(spec),
                 allow_lora=allow_lora, long_sequence=seq >= LONG_SEQUENCE_TOKENS, notes=tuple(notes))


def _resolve(script: str, values: dict[str, Any], version: str) -> dict[str, Any]:
    """OpenRLHF's post-parse rules on changed values (0.8's derived dtype and attention keys re-derived)."""
    if version == "0.8":
        values = {k: v for k, v in values.items() if k not in LEGACY_DERIVED_KEYS}
    return resolve_values((script, values), version)


# ---- candidates → OpenRLHF values and commands ------------------------------------------------


def group_shape(size: int, gpus_per_node: int) -> tuple[int, int]:
    """(num_nodes, num_gpus_per_node) of a group of ``size`` GPUs."""
    if size <= gpus_per_node:
        return 1, size
    return size // gpus_per_node, gpus_per_node


def values_for(space: Space, layout: Layout, flags: FlagSet) -> dict[str, Any]:
    """The complete OpenRLHF values of a candidate (OpenRLHF's post-parse rules applied)."""
    values = {**space.run.values, **dict(flags)}
    if space.rl:
        hybrid = layout.placement == Placement.HYBRID
        for role, size in layout.sizes:
            values[f"{role}_num_nodes"], values[f"{role}_num_gpus_per_node"] = group_shape(size, space.gpus_per_node)
        values.update(colocate_all_models=hybrid,
                      colocate_actor_ref=layout.placement in (Placement.ACTOR_REF, Placement.PAIRS),
                      colocate_critic_reward=layout.placement in (Placement.CRITIC_REWARD, Placement.PAIRS),
                      vllm_num_engines=layout.engines or None, vllm_tensor_parallel_size=layout.tp)
        if layout.gmu is not None:
            values["vllm_gpu_memory_utilization"] = layout.gmu
        if not hybrid:
            values.update(vllm_enable_sleep=False, deepspeed_enable_sleep=False)
    values.update({k: v for k, v in space.pinned.items() if k not in PLACEMENT_KEYS})  # placements() obeys those
    return _resolve(space.run.script, values, space.run.version)


def world_for(space: Space, layout: Layout) -> tuple[int, int]:
    """(nodes, GPUs per node) of a single-model layout."""
    return group_shape(layout.size(TRAIN), space.gpus_per_node)


def run_for(space: Space, layout: Layout, flags: FlagSet, *, command: str = "(planner candidate)") -> ResolvedRun:
    """The ResolvedRun ``estimate_run`` takes for a candidate."""
    group = space.run.group
    if not space.rl:
        nodes, per_node = world_for(space, layout)
        group = replace(group, num_nodes=nodes, gpus_per_node=per_node)
    return replace(space.run, values=values_for(space, layout, flags), group=group, command=command, notes=())


def command_text(space: Space, layout: Layout, flags: FlagSet) -> str:
    """The OpenRLHF launch command of a candidate (``ray job submit ...`` or ``deepspeed ...``)."""
    values = values_for(space, layout, flags)
    if space.rl:
        return format_command(space.run.script, values, version=space.run.version)
    nodes, per_node = world_for(space, layout)
    world = LauncherWorld(num_gpus=per_node, num_nodes=nodes if nodes > 1 else None)
    return format_command(space.run.script, values, version=space.run.version, world=world)
