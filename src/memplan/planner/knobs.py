"""What the planner may choose, and in which order: knob settings, group sizes, engine options, placements.

Knobs are named by kind (``jobs.knobs.Knob``); ``Space.key`` spells each as the run's framework keys it,
and a flag set holds values under those keys. ``saving_flags`` is the most memory-saving setting (the
searches start there: a setting that does not fit with it fits with nothing less saving); ``speedups`` lists the changes back towards faster
training, in the order OpenRLHF's maintainers advise; ``size_ladder`` the group sizes a role may take.
"""

from __future__ import annotations

from typing import Any

from memplan.jobs.job import RoleName
from memplan.jobs.knobs import Knob, KnobKey
from memplan.planner.space import TRAIN, FlagSet, Placement, Space, flag_set
from memplan.units import GiB

#: vLLM ``gpu_memory_utilization`` values the planner tries (OpenRLHF's default 0.95; its README's
#: hybrid-engine template 0.5; PR OpenRLHF#808 advises 0.8 for a colocated 7B).
GMU_GRID = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
#: Least KV-cache budget per vLLM GPU a plan may leave: a planner floor so an engine can hold a few
#: sequences (the estimator's vLLM terms do not yet say whether one ``max_model_len`` sequence fits).
MIN_KV_CACHE_BYTES = 1 * GiB
#: LoRA rank tried with ``--allow-lora`` (adapter memory is small at any usual rank).
LORA_RANK = 16
#: Ring-attention degrees tried for long sequences.
RING_SIZES = (2, 4, 8)
#: Multiples of a node's GPUs a role group may span (Ray groups larger than a node fill whole nodes).
NODE_MULTIPLES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
#: vLLM tensor-parallel sizes tried (one engine stays within a node).
TP_SIZES = (1, 2, 4, 8, 16)


# ---- flag sets ---------------------------------------------------------------------------------


def saving_flags(space: Space, *, hybrid: bool = False, ring: int = 1) -> FlagSet:
    """The searched knobs at their most memory-saving values (pinned ones as pinned)."""
    k = space.key
    out: dict[str, Any] = {k(Knob.SHARDING_STAGE): 3, k(Knob.OPTIMIZER_OFFLOAD): True, k(Knob.CHECKPOINTING): True,
                           k(Knob.MICRO_BATCH): 1, k(Knob.SEQUENCE_PARALLEL): ring,
                           k(Knob.LORA_RANK): LORA_RANK if space.allow_lora else 0}
    if space.rl:
        out.update({k(Knob.FORWARD_MICRO_BATCH): 1, k(Knob.PARAM_OFFLOAD, "ref"): True,
                    k(Knob.PARAM_OFFLOAD, "reward"): True, k(Knob.ENGINE_SLEEP): hybrid, k(Knob.TRAINER_SLEEP): hybrid})
    elif space.partner is not None:
        out[k(Knob.PARAM_OFFLOAD, space.partner)] = True
    if ring > 1 and not space.rl:
        out[k(Knob.PACKING)] = True  # the single-model trainers assert packing with ring attention
    if not space.allow_lora and not space.free(Knob.LORA_RANK):
        out.pop(k(Knob.LORA_RANK))
    return flag_set({key: v for key, v in out.items() if space.free(key)})


def ring_options(space: Space) -> tuple[int, ...]:
    """Ring-attention degrees worth a search (only for long sequences, unless pinned; it needs packing)."""
    if not space.has(Knob.SEQUENCE_PARALLEL):  # some single-model trainers have no ring attention
        return (1,)
    if not space.free(Knob.SEQUENCE_PARALLEL) or (not space.free(Knob.PACKING) and not space.value(Knob.PACKING)):
        return (int(space.value(Knob.SEQUENCE_PARALLEL) or 1),)
    return (1, *RING_SIZES) if space.long_sequence else (1,)


def speedups(space: Space, flags: FlagSet, *, hybrid: bool) -> list[tuple[str, list[dict[str, Any]]]]:
    """Changes towards faster training, in order; each knob's values from the least to the most memory.

    Order: offloads first (OpenRLHF README: "when there is enough GPU memory, disable adam_offload"),
    then larger micro batches (the README's hybrid-engine template keeps checkpointing on with micro
    batches 4 and 8), then no checkpointing (no recomputed forward), then ZeRO-2 (less communication).
    """
    f = dict(flags)
    k = space.key
    knobs: list[tuple[str, list[dict[str, Any]]]] = []

    def add(key: str, options: list[dict[str, Any]]) -> None:
        if space.free(key) and options:
            knobs.append((key, options))

    lora, adam = k(Knob.LORA_RANK), k(Knob.OPTIMIZER_OFFLOAD)
    if f.get(lora):
        add(lora, [{lora: 0}])
    if f.get(adam):
        add(adam, [{adam: False}])
    reward = k(Knob.PARAM_OFFLOAD, "reward")
    for role in ("ref", "teacher"):
        key = k(Knob.PARAM_OFFLOAD, role)
        if f.get(key):
            add(key, [{key: False, **({reward: False} if role == "ref" and space.rl else {})}])
    micro = k(Knob.MICRO_BATCH)
    mtbs = int(f.get(micro, space.value(micro)) or 1)
    add(micro, [{micro: m} for m in (2, 4, 8) if m > mtbs])
    if space.rl:
        forward = k(Knob.FORWARD_MICRO_BATCH)
        mrbs = int(f.get(forward, space.value(forward)) or 1)
        add(forward, [{forward: m} for m in (2, 4, 8, 16) if m > mrbs])
    checkpointing, stage = k(Knob.CHECKPOINTING), k(Knob.SHARDING_STAGE)
    if f.get(checkpointing):
        add(checkpointing, [{checkpointing: False}])
    if int(f.get(stage, 2)) == 3:
        add(stage, [{stage: 2}])
    if hybrid:
        sleep = k(Knob.TRAINER_SLEEP)
        add(sleep, [{sleep: False}] if f.get(sleep) else [])
    ring_key = k(Knob.SEQUENCE_PARALLEL)
    ring = int(f.get(ring_key, 1) or 1)
    if ring > 1:
        add(ring_key, [{ring_key: r} for r in reversed((1, *RING_SIZES)) if r < ring])
    return knobs


# ---- sizes -------------------------------------------------------------------------------------


def base_sizes(space: Space) -> tuple[int, ...]:
    """Group sizes a role may take: 1..GPUs per node, then whole nodes; at most ``max_gpus`` (so the
    ladder never grows with ``--gpus-per-node`` beyond ``--max-gpus``)."""
    gpn, limit = space.gpus_per_node, max(space.max_gpus, 1)
    return (*range(1, min(gpn, limit) + 1), *(gpn * k for k in NODE_MULTIPLES[1:] if gpn * k <= limit))


def _pinned_size(space: Space, role: str) -> int | None:
    keys = (KnobKey(knob=Knob.GROUP_NODES, role=RoleName(role)), KnobKey(knob=Knob.GROUP_GPUS_PER_NODE, role=RoleName(role)))
    if all(space.free(k) for k in keys):
        return None
    return int(space.value(keys[0]) or 1) * int(space.value(keys[1]) or 1)


def size_ladder(space: Space, role: str, flags: FlagSet) -> tuple[int, ...]:
    """Valid group sizes of ``role`` under ``flags``, smallest first.

    A trained group's world must divide ``global batch × ring × tp / micro batch`` (DeepSpeed asserts
    global batch = micro × grad_accum × dp) and be a multiple of ring × tp.
    """
    f = dict(flags)
    k = space.key
    ring = int(f.get(k(Knob.SEQUENCE_PARALLEL), space.value(Knob.SEQUENCE_PARALLEL)) or 1)
    ds_tp = int(space.value(Knob.TENSOR_PARALLEL) or 1)
    pinned = None if role == TRAIN else _pinned_size(space, role)
    sizes = (pinned,) if pinned is not None else base_sizes(space)
    trained = role in ("actor", "critic", TRAIN)
    mtbs = int(f.get(k(Knob.MICRO_BATCH), space.value(Knob.MICRO_BATCH)) or 1)
    batch = int(space.value(Knob.GLOBAL_BATCH) or 1) * ring * ds_tp
    out = []
    for s in sizes:
        if s % (ring * ds_tp):
            continue
        if trained and batch % (mtbs * s):
            continue
        out.append(s)
    return tuple(out)


def tp_options(space: Space, limit: int | None = None) -> tuple[int, ...]:
    """vLLM TP sizes: within a node, dividing the attention heads (vLLM's requirement)."""
    if not space.free(Knob.ENGINE_TP):
        return (int(space.value(Knob.ENGINE_TP) or 1),)
    cap = min(space.gpus_per_node, limit or space.gpus_per_node, max(space.max_gpus, 1))
    return tuple(t for t in TP_SIZES if t <= cap and space.heads % t == 0)


def gmu_options(space: Space) -> tuple[float, ...]:
    """vLLM memory shares, ascending (only the pinned one when pinned)."""
    if not space.free(Knob.ENGINE_MEMORY_SHARE):
        return (float(space.value(Knob.ENGINE_MEMORY_SHARE)),)
    return GMU_GRID


def placements(space: Space) -> tuple[Placement, ...]:
    """Placements applicable to the run's roles and the user's pins, in preference order."""
    if not space.rl:
        return (Placement.SINGLE,)
    roles = set(space.roles)
    pins = space.pinned
    colocate_all = space.key(Knob.COLOCATE_ALL)
    if pins.get(colocate_all):
        return (Placement.HYBRID,) if space.has_vllm else ()
    out = [Placement.SEPARATE]
    if "ref" in roles:
        out.append(Placement.ACTOR_REF)
    if {"critic", "reward"} <= roles:
        out.append(Placement.CRITIC_REWARD)
    if "ref" in roles and {"critic", "reward"} <= roles:
        out.append(Placement.PAIRS)
    if space.has_vllm and pins.get(colocate_all, True):
        out.append(Placement.HYBRID)
    for key, needs in ((space.key(Knob.COLOCATE_ACTOR_REF), (Placement.ACTOR_REF, Placement.PAIRS)),
                       (space.key(Knob.COLOCATE_CRITIC_REWARD), (Placement.CRITIC_REWARD, Placement.PAIRS))):
        if key in pins:
            keep = [p for p in out if (p in needs) == bool(pins[key]) or p == Placement.HYBRID]
            out = keep
    return tuple(out)


