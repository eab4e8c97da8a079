"""What the planner may choose, and in which order: flag sets, group sizes, vLLM options, placements.

``saving_flags`` is the most memory-saving flag set (the searches start there: a setting that does
not fit with it fits with nothing less saving); ``speedups`` lists the changes back towards faster
training, in the order OpenRLHF's maintainers advise; ``size_ladder`` the group sizes a role may take.
"""

from __future__ import annotations

from typing import Any

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
    """The searched flags at their most memory-saving values (pinned ones as pinned)."""
    out: dict[str, Any] = {"zero_stage": 3, "adam_offload": True, "gradient_checkpointing": True,
                           "micro_train_batch_size": 1, "ring_attn_size": ring,
                           "lora_rank": LORA_RANK if space.allow_lora else 0}
    if space.rl:
        out.update(micro_rollout_batch_size=1, ref_offload=True, reward_offload=True,
                   vllm_enable_sleep=hybrid, deepspeed_enable_sleep=hybrid)
    elif space.run.script in ("train_dpo", "train_kto"):
        out["ref_offload"] = True
    elif space.run.script == "train_kd":
        out["teacher_offload"] = True
    if ring > 1 and not space.rl:
        out["packing_samples"] = True  # train_sft/rm/dpo assert packing with ring attention
    if not space.allow_lora and not space.free("lora_rank"):
        out.pop("lora_rank")
    return flag_set({k: v for k, v in out.items() if space.free(k)})


def ring_options(space: Space) -> tuple[int, ...]:
    """Ring-attention degrees worth a search (only for long sequences, unless pinned; it needs packing)."""
    if "ring_attn_size" not in space.run.values:  # train_kto/train_prm have no ring attention
        return (1,)
    if not space.free("ring_attn_size") or (not space.free("packing_samples") and not space.value("packing_samples")):
        return (int(space.value("ring_attn_size") or 1),)
    return (1, *RING_SIZES) if space.long_sequence else (1,)


def speedups(space: Space, flags: FlagSet, *, hybrid: bool) -> list[tuple[str, list[dict[str, Any]]]]:
    """Changes towards faster training, in order; each knob's values from the least to the most memory.

    Order: offloads first (OpenRLHF README: "when there is enough GPU memory, disable adam_offload"),
    then larger micro batches (the README's hybrid-engine template keeps checkpointing on with micro
    batches 4 and 8), then no checkpointing (no recomputed forward), then ZeRO-2 (less communication).
    """
    f = dict(flags)
    knobs: list[tuple[str, list[dict[str, Any]]]] = []

    def add(key: str, options: list[dict[str, Any]]) -> None:
        if space.free(key) and options:
            knobs.append((key, options))

    if f.get("lora_rank"):
        add("lora_rank", [{"lora_rank": 0}])
    if f.get("adam_offload"):
        add("adam_offload", [{"adam_offload": False}])
    for key in ("ref_offload", "teacher_offload"):
        if f.get(key):
            add(key, [{key: False, **({"reward_offload": False} if key == "ref_offload" and space.rl else {})}])
    mtbs = int(f.get("micro_train_batch_size", space.value("micro_train_batch_size")) or 1)
    add("micro_train_batch_size", [{"micro_train_batch_size": m} for m in (2, 4, 8) if m > mtbs])
    if space.rl:
        mrbs = int(f.get("micro_rollout_batch_size", space.value("micro_rollout_batch_size")) or 1)
        add("micro_rollout_batch_size", [{"micro_rollout_batch_size": m} for m in (2, 4, 8, 16) if m > mrbs])
    if f.get("gradient_checkpointing"):
        add("gradient_checkpointing", [{"gradient_checkpointing": False}])
    if int(f.get("zero_stage", 2)) == 3:
        add("zero_stage", [{"zero_stage": 2}])
    if hybrid:
        add("deepspeed_enable_sleep", [{"deepspeed_enable_sleep": False}] if f.get("deepspeed_enable_sleep") else [])
    ring = int(f.get("ring_attn_size", 1) or 1)
    if ring > 1:
        add("ring_attn_size", [{"ring_attn_size": r} for r in reversed((1, *RING_SIZES)) if r < ring])
    return knobs


# ---- sizes -------------------------------------------------------------------------------------


def base_sizes(space: Space) -> tuple[int, ...]:
    """Group sizes a role may take: 1..GPUs per node, then whole nodes; at most ``max_gpus`` (so the
    ladder never grows with ``--gpus-per-node`` beyond ``--max-gpus``)."""
    gpn, limit = space.gpus_per_node, max(space.max_gpus, 1)
    return (*range(1, min(gpn, limit) + 1), *(gpn * k for k in NODE_MULTIPLES[1:] if gpn * k <= limit))


def _pinned_size(space: Space, role: str) -> int | None:
    keys = (f"{role}_num_nodes", f"{role}_num_gpus_per_node")
    if all(space.free(k) for k in keys):
        return None
    return int(space.value(keys[0]) or 1) * int(space.value(keys[1]) or 1)


def size_ladder(space: Space, role: str, flags: FlagSet) -> tuple[int, ...]:
    """Valid group sizes of ``role`` under ``flags``, smallest first.

    A trained group's world must divide ``train_batch_size × ring × ds_tp / micro_train_batch_size``
    (DeepSpeed asserts train_batch_size = micro × grad_accum × dp) and be a multiple of ring × ds_tp.
    """
    f = dict(flags)
    ring = int(f.get("ring_attn_size", space.value("ring_attn_size")) or 1)
    ds_tp = int(space.value("ds_tensor_parallel_size") or 1)
    pinned = None if role == TRAIN else _pinned_size(space, role)
    sizes = (pinned,) if pinned is not None else base_sizes(space)
    trained = role in ("actor", "critic", TRAIN)
    mtbs = int(f.get("micro_train_batch_size", space.value("micro_train_batch_size")) or 1)
    batch = int(space.value("train_batch_size") or 1) * ring * ds_tp
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
    if not space.free("vllm_tensor_parallel_size"):
        return (int(space.value("vllm_tensor_parallel_size") or 1),)
    cap = min(space.gpus_per_node, limit or space.gpus_per_node, max(space.max_gpus, 1))
    return tuple(t for t in TP_SIZES if t <= cap and space.heads % t == 0)


def gmu_options(space: Space) -> tuple[float, ...]:
    """vLLM memory shares, ascending (only the pinned one when pinned)."""
    if not space.free("vllm_gpu_memory_utilization"):
        return (float(space.value("vllm_gpu_memory_utilization")),)
    return GMU_GRID


def placements(space: Space) -> tuple[Placement, ...]:
    """Placements applicable to the run's roles and the user's pins, in preference order."""
    if not space.rl:
        return (Placement.SINGLE,)
    roles = set(space.roles)
    pins = space.pinned
    if pins.get("colocate_all_models"):
        return (Placement.HYBRID,) if space.has_vllm else ()
    out = [Placement.SEPARATE]
    if "ref" in roles:
        out.append(Placement.ACTOR_REF)
    if {"critic", "reward"} <= roles:
        out.append(Placement.CRITIC_REWARD)
    if "ref" in roles and {"critic", "reward"} <= roles:
        out.append(Placement.PAIRS)
    if space.has_vllm and pins.get("colocate_all_models", True):
        out.append(Placement.HYBRID)
    for key, needs in (("colocate_actor_ref", (Placement.ACTOR_REF, Placement.PAIRS)),
                       ("colocate_critic_reward", (Placement.CRITIC_REWARD, Placement.PAIRS))):
        if key in pins:
            keep = [p for p in out if (p in needs) == bool(pins[key]) or p == Placement.HYBRID]
            out = keep
    return tuple(out)


