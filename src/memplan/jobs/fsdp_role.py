"""One rank of a role sharded by PyTorch FSDP: its states, host terms and per-phase activity, as terms.

Reached from ``jobs.roles.role_memory`` (its one dispatch on the sharding engine); reads only ``Role`` and
``FsdpSharding`` fields. Routes into the formula modules and holds no formula of its own:

* persistent states: memory/fsdp.py ``fsdp_state_terms`` (sharded parameters; AdamW moments of a trained
  role; with ``Role.lora`` the adapters join their layers' units and only they get gradients and moments),
  computed where they rest *without* a framework's between-phase offload: the job's schedule says
  where each state is per phase (``jobs.schedule``: ``HOST`` between phases, ``WHILE_ACTIVE`` during the
  role's own activity). FSDP's own CPU offload (``cpu_offload``) is intrinsic: those shards are host terms.
* gradients: memory/fsdp.py ``sharded_grads``, alive from the first backward to the end of the update (the
  framework zeroes them on leaving train mode), so part of the backward and optimizer-step activity.
* transients: jobs/fsdp_moments.py, which aligns FSDP's buffers (memory/fsdp_transient.py) with the model's
  own activations and logits (memory/transient.py, memory/logits.py) moment by moment, for one micro-batch of ``Role.micro_batch_size`` sequences
  of ``Role.seq_len`` tokens (one packed row when ``Role.packing``), split over ``Role.ring_size`` ranks.
"""

from __future__ import annotations

import math
from dataclasses import replace

from memplan.jobs.job import GpuGroup, Role
from memplan.jobs.result import ModelInfo
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.memory.fsdp import (
    FsdpSharding, adam_states, fsdp_state_terms, fsdp_units, host_allocations, sharded_params,
)
from memplan.memory import lora
from memplan.memory.host_alloc import rounding_term
from memplan.dtypes import bytes_for
from memplan.jobs.fsdp_moments import backward_pass, forward_pass, head_of, optimizer_step
from memplan.memory.logits import Head, LogProbImpl, PackedHead
from memplan.sources import code

#: The sub-phases of a trained role's micro-step.
TRAIN_SUBPHASES = (Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER_STEP)


def _sharding(role: Role) -> FsdpSharding:
    sharding = role.sharding
    if not isinstance(sharding, FsdpSharding):
        raise TypeError(f"{role.name} is not sharded by FSDP")
    return sharding


def resting_sharding(sharding: FsdpSharding) -> FsdpSharding:
    """The sharding with the framework's between-phase offload left to the schedule (FSDP's own CPU
    offload kept: it decides where the shards live during compute)."""
    return replace(sharding, param_offload=False, optimizer_offload=False)


def model_loading_terms(role: Role, num_params: int, ranks_loading: int) -> list[Term]:
    """Host RAM while the model loads: the full model in the stored dtype on each loading rank (LOAD phase).

        bytes = P · |stored dtype|      (charged on every rank when ``ranks_loading`` > 1)

    Source: verl 0.9.1 ``verl/workers/engine/fsdp/transformer_impl.py`` :207-233 and
    ``verl/utils/fsdp_utils.py`` ``get_init_weight_context_manager`` :64-75 (rank 0 loads the HF model on the
    CPU; every rank does when ``tie_word_embeddings``, no meta init); reference/verl.md §3 "Init".
    Assumes: the caller passes ``ranks_loading`` = 1 for rank 0 only; ranks > 0 build on the meta device.
    """
    src = code("verl-project/verl:verl/utils/fsdp_utils.py@v0.9.1",
               "get_init_weight_context_manager: rank 0 (every rank if tied embeddings) loads on CPU :64-75")
    return [Term(path=f"{role.name}.model_loading", bytes=bytes_for(num_params, _sharding(role).param_dtype),
                 category=Category.PARAM, device=Device.CPU, source=src, phase=Phase.LOAD)]


def offloaded_host_terms(units, sharding: FsdpSharding, *, role: str, trained: bool) -> list[Term]:  # type: ignore[no-untyped-def]
    """Host RAM of the states a framework offloads between phases, in every phase, with the pinned allocator's
    rounding of each tensor; and the rounding of FSDP's own pinned CPU-offload shards.

        param_offload:     Σ S·p (the shards)      + Σ (PowerOf2Ceil(a) − a) over the host tensors a
        optimizer_offload: 2 · Σ local·p (m and v) + the same rounding per moment tensor

    A ``.to("cpu", non_blocking=True)`` from the GPU allocates its destination pinned (ATen ``_to_copy``:
    ``pin_out = non_blocking && self.is_cuda() && options.device().is_cpu()``), from torch's caching host
    allocator, which rounds each block to a power of two and keeps freed blocks cached: after the first
    offload the blocks stay pinned while the states are back on the GPU, so the bytes count in every phase.
    Source: pytorch/pytorch aten/src/ATen/native/TensorConversions.cpp@v2.11.0 ``_to_copy``; memory/host_alloc.py
    (rounding, caching); verl 0.9.1 ``verl/utils/fsdp_utils.py`` ``offload_fsdp_model_to_cpu`` /
    ``offload_fsdp_optimizer`` :195-262 (``.to("cpu", non_blocking=True)``); reference/verl.md §6.
    Assumes: the cached blocks are not reused for other host tensors (they are not freed by ``empty_cache``
    of the device allocator).
    """
    src = code("pytorch/pytorch:aten/src/ATen/native/TensorConversions.cpp@v2.11.0",
               "_to_copy: non_blocking D2H destination pinned; caching host allocator keeps the block")
    terms: list[Term] = []
    if sharding.param_offload and not sharding.cpu_offload:
        params = sharded_params(units, sharding, role=role)
        terms.append(replace(params, path=f"{role}.params.offloaded", device=Device.CPU, source=src))
        rounding = rounding_term(f"{role}.params.offloaded", host_allocations(units, sharding, which="params"),
                                 detail="one pinned block per offloaded parameter shard")
        terms += [rounding] if rounding else []
    if sharding.cpu_offload and sharding.cpu_offload_pinned:
        rounding = rounding_term(f"{role}.params", host_allocations(units, sharding, which="params"),
                                 detail="FSDP CPU offload pins each shard")
        terms += [rounding] if rounding else []
    if trained and sharding.optimizer_offload and not sharding.cpu_offload:
        for moment in adam_states(units, sharding, role=role)[:2]:
            terms.append(replace(moment, path=f"{moment.path}.offloaded", device=Device.CPU, source=src))
            rounding = rounding_term(f"{moment.path}.offloaded", host_allocations(units, sharding, which="moment"),
                                     detail="one pinned block per offloaded moment tensor")
            terms += [rounding] if rounding else []
    return terms


def _packed_head(role: Role, cfg, impl: LogProbImpl, *, entropy: bool) -> PackedHead | None:  # type: ignore[no-untyped-def]
    """The LM head's moments of a pass (None for a value head)."""
    if role.head != Head.LM:
        return None
    return head_of(role.spec, cfg, role=str(role.name), phase=Phase.FORWARD, impl=impl, entropy=entropy,
                   entropy_chunk=role.entropy_chunk, fused=role.fused_head)


def _micro(role: Role, phase: Phase, micro: tuple[int, int] | None) -> Role:
    if micro is None:
        return role
    return replace(role, micro_batch_size=micro[0], seq_len=micro[1])


def fsdp_role_memory(role: Role, group: GpuGroup, logprob_impl: LogProbImpl,
                     forward_phases: tuple[Phase, ...], under_ray: bool,
                     micro_batches: dict[Phase, tuple[int, int]] | None = None):  # type: ignore[no-untyped-def]
    """:func:`memplan.jobs.roles.role_memory` of a role sharded by FSDP.

    ``micro_batches``: per phase, the (sequences, tokens) of one micro-batch when the phase's pass uses its
    own batching (a log-prob forward); other phases use the role's. The rank's process (imports, CUDA
    context) is not here: FSDP workers of several roles can share one process per GPU, which the caller
    knows (``under_ray`` is accepted for the dispatch's signature).
    """
    from memplan.jobs.roles import RoleMemory, activation_config, role_tree

    sharding = _sharding(role)
    name = str(role.name)
    tree = role_tree(role)
    adapters = lora.adapter_shapes(tree, role.lora.target_modules, role.lora.rank) if role.lora and role.trained \
        else None
    units = fsdp_units(tree, wrap_embeddings=sharding.embeddings_wrapped, adapters=adapters)
    resting = resting_sharding(sharding)
    states = fsdp_state_terms(units, resting, role=name, trained=role.trained)
    gpu = [t for t in states if t.device == Device.GPU]
    cpu = [t for t in states if t.device == Device.CPU] + offloaded_host_terms(units, sharding, role=name,
                                                                                trained=role.trained)
    micro_batches = micro_batches or {}
    spec = role.spec
    activity: dict[Phase, tuple[Term, ...]] = {}
    if role.trained:
        cfg = activation_config(_micro(role, Phase.FORWARD, micro_batches.get(Phase.FORWARD)), tree)
        head = _packed_head(role, cfg, logprob_impl, entropy=role.entropy_in_loss)
        activity[Phase.FORWARD] = tuple(forward_pass(spec, cfg, head, units, resting, role=name, phase=Phase.FORWARD))
        activity[Phase.BACKWARD] = tuple(backward_pass(spec, cfg, head, units, resting, role=name,
                                                       accumulating=role.grad_accum_steps > 1))
        activity[Phase.OPTIMIZER_STEP] = tuple(optimizer_step(units, resting, role=name))
    for phase in forward_phases:
        if role.trained and phase == Phase.FORWARD:
            continue
        fwd_role = replace(_micro(role, phase, micro_batches.get(phase)), trained=False, gradient_checkpointing=False)
        cfg = activation_config(fwd_role, tree)
        head = _packed_head(role, cfg, logprob_impl, entropy=role.entropy)
        activity[phase] = tuple(forward_pass(spec, cfg, head, units, resting, role=name, phase=phase))
    total = tree.num_params  # a walk of the whole tree: once
    trainable = sum(math.prod(s) for shapes in adapters.values() for s in shapes) if adapters else total
    info = ModelInfo(name=role.spec.name, num_params=total,
                     trainable_params=trainable if role.trained else 0)
    return RoleMemory(role=role, gpu_terms=tuple(gpu), cpu_terms=tuple(cpu), activity=activity,
                      transient=dict(activity), info=info, world_size=group.num_gpus,
                      rank0_cpu_terms=tuple(model_loading_terms(role, total, 1)))
