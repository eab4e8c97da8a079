"""The planner's search space: what it may change in a run, the layouts, and the orders.

Glossary (used across ``memplan.planner``):

* *role*: a model of the run (``actor``, ``critic``, ``ref``, ``reward``; ``train`` is the one GPU
  group of a single-model run); ``rollout`` is the rollout engines.
* *unit*: a set of roles that share GPUs, and so one per-GPU peak: ``actor``, ``actor+ref``
  (actor and reference colocated), ``critic+reward``, ``rollout`` (one engine's TP shard), ``hybrid``
  (every model and the engines on the same GPUs), ``train``.
* *layout*: GPUs per role, which roles share GPUs, and the rollout engines (count, TP, memory share).
* *knob*: a setting the planner may choose (``jobs.knobs.Knob``: sharding stage, offload, checkpointing,
  micro batches, LoRA, ring attention, sleep, colocation, engines); the run's framework spells each
  (``Space.key``).
* *flag set*: the values of the searched knobs, under the framework's keys.
* *saving* flags: the flag set that needs the least GPU memory; *speed-ups*: the changes back
  towards faster training, tried in the order the framework's maintainers advise.

The space only describes candidates (``knobs`` says what may change); ``search`` evaluates them
(through ``memplan.api.estimate_run``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from memplan import frameworks
from memplan.frameworks.base import ResolvedRun
from memplan.frameworks.openrlhf.bounds import MAX_GPUS, MAX_GPUS_PER_NODE, check_count
from memplan.jobs.job import RoleName
from memplan.jobs.knobs import Knob, KnobKey, KnobValue
from memplan.model import load_model_spec, num_params

#: From this many tokens per sequence the planner also tries ring attention (context parallel).
LONG_SEQUENCE_TOKENS = 8192
#: Largest cluster searched when ``--max-gpus`` is not given.
DEFAULT_MAX_GPUS = 512
#: The RL model roles, in OpenRLHF's placement order.
RL_ROLES = ("actor", "critic", "ref", "reward")
#: Role name of a single-model script's one GPU group.
TRAIN = "train"

#: Knobs the planner chooses (unless pinned by the user), per kind of run.
RL_SEARCHED = frozenset({
    *(KnobKey(knob=k) for k in (
        Knob.SHARDING_STAGE, Knob.OPTIMIZER_OFFLOAD, Knob.CHECKPOINTING, Knob.MICRO_BATCH, Knob.FORWARD_MICRO_BATCH,
        Knob.LORA_RANK, Knob.SEQUENCE_PARALLEL, Knob.ENGINE_MEMORY_SHARE, Knob.ENGINE_SLEEP, Knob.TRAINER_SLEEP,
        Knob.COLOCATE_ACTOR_REF, Knob.COLOCATE_CRITIC_REWARD, Knob.COLOCATE_ALL, Knob.ENGINES, Knob.ENGINE_TP)),
    *(KnobKey(knob=Knob.PARAM_OFFLOAD, role=RoleName(r)) for r in ("ref", "reward")),
    *(KnobKey(knob=k, role=RoleName(r)) for r in RL_ROLES for k in (Knob.GROUP_NODES, Knob.GROUP_GPUS_PER_NODE)),
})
#: Roles a hybrid-only framework's knob may be set for (None: the run's).
HYBRID_ROLES = (None, RoleName.ACTOR, RoleName.CRITIC, RoleName.REF, RoleName.REWARD)
#: Knobs a hybrid-only plan (``planner/hybrid.py``) chooses unless pinned, for the run and every role.
HYBRID_SEARCHED = frozenset(
    KnobKey(knob=k, role=r) for r in HYBRID_ROLES for k in (
        Knob.OPTIMIZER_OFFLOAD, Knob.PARAM_OFFLOAD, Knob.CHECKPOINTING, Knob.ENTROPY_CHUNKING, Knob.DYNAMIC_BATCH,
        Knob.TOKEN_BUDGET, Knob.MICRO_BATCH, Knob.FORWARD_MICRO_BATCH, Knob.ENGINE_TP, Knob.ENGINE_MEMORY_SHARE,
        Knob.GROUP_NODES, Knob.GROUP_GPUS_PER_NODE))
#: Colocation knobs: a layout sets them (``placements`` keeps only the layouts a pin allows).
PLACEMENT_KNOBS = frozenset(KnobKey(knob=k) for k in (Knob.COLOCATE_ALL, Knob.COLOCATE_ACTOR_REF,
                                                      Knob.COLOCATE_CRITIC_REWARD))
SINGLE_SEARCHED = frozenset({
    *(KnobKey(knob=k) for k in (Knob.SHARDING_STAGE, Knob.OPTIMIZER_OFFLOAD, Knob.CHECKPOINTING, Knob.MICRO_BATCH,
                                Knob.LORA_RANK, Knob.SEQUENCE_PARALLEL, Knob.PACKING)),
    *(KnobKey(knob=Knob.PARAM_OFFLOAD, role=RoleName(r)) for r in ("ref", "teacher")),
})


class Placement(StrEnum):
    """Which roles share GPUs (OpenRLHF's colocation options, reference/openrlhf.md §4)."""

    SEPARATE = "separate"
    """Every model and the vLLM engines on their own GPUs."""
    ACTOR_REF = "actor_ref"
    """Actor and reference share GPUs."""
    CRITIC_REWARD = "critic_reward"
    """Critic and reward share GPUs."""
    PAIRS = "colocate_pairs"
    """Both pairs above."""
    HYBRID = "hybrid_engine"
    """The hybrid engine: every model and the engines on the same GPUs."""
    SINGLE = "single"
    """A single-model script's one GPU group."""


#: The colocation knob of each pair placement.
_PAIR_KNOB = {Placement.ACTOR_REF: KnobKey(knob=Knob.COLOCATE_ACTOR_REF),
              Placement.CRITIC_REWARD: KnobKey(knob=Knob.COLOCATE_CRITIC_REWARD)}


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
    """The run with its framework's defaults, the user's options and pins (what every candidate starts from)."""
    rl: bool
    """An RL run (roles, rollout engines) rather than a single-model one."""
    roles: tuple[str, ...]
    """Model roles present (``actor``, ``critic``...; or ``train``)."""
    has_vllm: bool
    """Whether the run generates with vLLM engines."""
    gpus_per_node: int
    """GPUs per node of the cluster."""
    max_gpus: int
    """Most GPUs a plan may use."""
    pinned: Mapping[str, Any]
    """Searched keys the user fixed (``--keep`` or an option given), with their values."""
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
    partner: str | None = None
    """The frozen model a single-model run trains against (``ref``, ``teacher``), if any."""
    hybrid_only: bool = False
    """Every role and the engines share the same GPUs (``PlanRun.hybrid_only``): ``planner/hybrid.py`` searches it."""
    model: str = ""
    """The model as asked for."""

    def key(self, knob: Knob | KnobKey | str, role: str | None = None) -> str:
        """The framework's key of ``knob`` (for ``role``); a key is returned as is."""
        if isinstance(knob, str) and not isinstance(knob, Knob):
            return knob
        if isinstance(knob, Knob):
            knob = KnobKey(knob=knob, role=RoleName(role) if role is not None else None)
        return frameworks.get(self.run.framework).knob_keys()[knob]

    def placement_name(self, placement: Placement) -> str:
        """How plans name ``placement``: a pair's colocation after the framework's key for it (OpenRLHF's
        ``colocate_actor_ref``), the others by their own name."""
        knob = _PAIR_KNOB.get(placement)
        keys = frameworks.get(self.run.framework).knob_keys()
        return keys[knob] if knob is not None and knob in keys else placement.value

    def knows(self, knob: Knob | KnobKey, role: str | None = None) -> bool:
        """Whether the run's framework has ``knob`` (for ``role``) at all."""
        if isinstance(knob, Knob):
            knob = KnobKey(knob=knob, role=RoleName(role) if role is not None else None)
        return knob in frameworks.get(self.run.framework).knob_keys()

    def has(self, knob: Knob) -> bool:
        """Whether the run's entry point has ``knob`` at all."""
        return self.key(knob) in self.run.values

    def free(self, knob: Knob | KnobKey | str) -> bool:
        """Whether the planner may choose ``knob``."""
        return self.key(knob) not in self.pinned

    def value(self, knob: Knob | KnobKey | str) -> Any:
        """The base run's value of ``knob``."""
        return self.run.values.get(self.key(knob))


# ---- building the space ------------------------------------------------------------------------


def build_space(model: str, method: str, *, flags: Sequence[str] = (), keep: Sequence[str] = (),
                gpus_per_node: int = 8, max_gpus: int | None = None, allow_lora: bool = False,
                version: str | None = None, framework: str = "openrlhf") -> Space:
    """Resolve the request once: the framework's defaults, the user's options, pins and the roles present."""
    check_count("--gpus-per-node", gpus_per_node, 1, MAX_GPUS_PER_NODE)
    check_count("--max-gpus", max_gpus, 0, MAX_GPUS)
    spec = load_model_spec(model)
    fw = frameworks.get(framework)
    base = fw.plan_run(model, method, options=flags, keep=keep, version=version,
                       searched=lambda rl: RL_SEARCHED | HYBRID_SEARCHED if rl else SINGLE_SEARCHED)
    notes = list(base.notes)
    if gpus_per_node != 8:
        notes.append("host RAM per node follows the estimator's Ray packing (nodes of at least 8 GPUs)")
    keys = fw.knob_keys()
    values = base.run.values
    engines = keys.get(KnobKey(knob=Knob.ENGINES))
    has_vllm = base.rl and (base.pinned.get(engines, 1) or 0) > 0
    length = values.get(keys.get(KnobKey(knob=Knob.MAX_LENGTH), ""))
    seq = int(length or 0) or int(values.get(keys[KnobKey(knob=Knob.PROMPT_LENGTH)]) or 0) + \
        int(values.get(keys[KnobKey(knob=Knob.RESPONSE_LENGTH)]) or 0)
    return Space(run=base.run, rl=base.rl, roles=base.roles if base.rl else (TRAIN,), has_vllm=bool(has_vllm),
                 gpus_per_node=gpus_per_node, max_gpus=DEFAULT_MAX_GPUS if max_gpus is None else max_gpus,
                 pinned=base.pinned, heads=spec.num_attention_heads, num_params=num_params(spec),
                 allow_lora=allow_lora, long_sequence=seq >= LONG_SEQUENCE_TOKENS, notes=tuple(notes),
                 partner=base.partner, hybrid_only=base.hybrid_only, model=model)


# ---- candidates → the framework's values and commands -------------------------------------------


def group_shape(size: int, gpus_per_node: int) -> tuple[int, int]:
    """(num_nodes, num_gpus_per_node) of a group of ``size`` GPUs."""
    if size <= gpus_per_node:
        return 1, size
    return size // gpus_per_node, gpus_per_node


def layout_knobs(space: Space, layout: Layout) -> dict[KnobKey, KnobValue]:
    """The knob settings a layout stands for: group shapes, colocation, engines (and no sleep when apart)."""
    out: dict[KnobKey, KnobValue] = {}
    if not space.rl:
        return out
    if space.hybrid_only:  # one GPU group for every role: the run's group and the engines' TP and share
        nodes, per_node = group_shape(layout.num_gpus, space.gpus_per_node)
        out[KnobKey(knob=Knob.GROUP_NODES)] = nodes
        out[KnobKey(knob=Knob.GROUP_GPUS_PER_NODE)] = per_node
        out[KnobKey(knob=Knob.ENGINE_TP)] = layout.tp
        if layout.gmu is not None:
            out[KnobKey(knob=Knob.ENGINE_MEMORY_SHARE)] = layout.gmu
        return out
    hybrid = layout.placement == Placement.HYBRID
    for role, size in layout.sizes:
        nodes, per_node = group_shape(size, space.gpus_per_node)
        out[KnobKey(knob=Knob.GROUP_NODES, role=RoleName(role))] = nodes
        out[KnobKey(knob=Knob.GROUP_GPUS_PER_NODE, role=RoleName(role))] = per_node
    out[KnobKey(knob=Knob.COLOCATE_ALL)] = hybrid
    out[KnobKey(knob=Knob.COLOCATE_ACTOR_REF)] = layout.placement in (Placement.ACTOR_REF, Placement.PAIRS)
    out[KnobKey(knob=Knob.COLOCATE_CRITIC_REWARD)] = layout.placement in (Placement.CRITIC_REWARD, Placement.PAIRS)
    out[KnobKey(knob=Knob.ENGINES)] = layout.engines or None
    out[KnobKey(knob=Knob.ENGINE_TP)] = layout.tp
    if layout.gmu is not None:
        out[KnobKey(knob=Knob.ENGINE_MEMORY_SHARE)] = layout.gmu
    if not hybrid:
        out[KnobKey(knob=Knob.ENGINE_SLEEP)] = False
        out[KnobKey(knob=Knob.TRAINER_SLEEP)] = False
    return out


def resolved_for(space: Space, layout: Layout, flags: FlagSet) -> ResolvedRun:
    """The base run with a candidate's values, as its framework resolves them (post-parse rules applied;
    options it adds keep the spelling it gives them)."""
    fw = frameworks.get(space.run.framework)
    values = {**space.run.values, **dict(flags)}
    values.update({space.key(k): v for k, v in layout_knobs(space, layout).items()})
    placement = {space.key(k) for k in PLACEMENT_KNOBS if space.knows(k)}
    values.update({k: v for k, v in space.pinned.items() if k not in placement})  # placements() obeys those
    return fw.with_values(space.run, values)


def values_for(space: Space, layout: Layout, flags: FlagSet) -> dict[str, Any]:
    """The complete values of a candidate (the framework's post-parse rules applied)."""
    return resolved_for(space, layout, flags).values


def world_for(space: Space, layout: Layout) -> tuple[int, int]:
    """(nodes, GPUs per node) of a single-model layout."""
    return group_shape(layout.size(TRAIN), space.gpus_per_node)


def run_for(space: Space, layout: Layout, flags: FlagSet, *, command: str = "(planner candidate)") -> ResolvedRun:
    """The ResolvedRun ``estimate_run`` takes for a candidate."""
    resolved = resolved_for(space, layout, flags)
    group = resolved.group
    if not space.rl:
        nodes, per_node = world_for(space, layout)
        group = replace(group, num_nodes=nodes, gpus_per_node=per_node)
    return replace(resolved, group=group, command=command, notes=())


def command_text(space: Space, layout: Layout, flags: FlagSet) -> str:
    """The launch command of a candidate, as the run's framework emits it."""
    return frameworks.get(space.run.framework).emit(run_for(space, layout, flags))
