"""Host RAM of one training or inference process (rank), and per node.

Three kinds of host memory: DeepSpeed's offload buffers (mostly pinned, i.e. page-locked: they cannot
be swapped and count against ``ulimit -l``), the model as it is loaded, and the process itself. The
offloaded fp32 master weights and Adam moments are produced by ``model_states.fp32_master`` and
``adam_moments`` with ``device=cpu``; this module adds the offload buffers around them.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from memplan.dtypes import DType, bytes_for
from memplan.memory.sharding import ZeroStage
from memplan.memory import host_alloc
from memplan.memory.breakdown import SAVE_PHASES, Category, Device, Phase, Term
from memplan.memory.zero import (
    ParamLayout, ZeroConfig, ds_source, grads_in_partition_numel, grads_in_partition_tensors,
    stage3_partition_numel, stage3_trainable_partition_numel, stage12_partition_numels, sub_group_numels,
)
from memplan.sources import Source, code

Z12 = "runtime/zero/stage_1_and_2.py"
Z3 = "runtime/zero/stage3.py"
#: Gradients copied to host for the CPU optimizer are fp32 (``master_weights_and_grads_dtype``).
HOST_GRAD_DTYPE = DType.FP32

def accumulates_on_host(zero: ZeroConfig) -> bool:
    """ZeRO-1/2 with CPU Adam accumulating several micro-batches in the model dtype keeps each partition
    tensor's gradient in a pinned host buffer (``async_accumulate_grad_in_cpu_via_gpu``,
    stage_1_and_2.py@v0.19.8:1822-1826)."""
    return zero.gradient_accumulation_steps > 1 and zero.grad_accum_dtype == zero.param_dtype


def offloaded_optimizer_buffers(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """Host buffers DeepSpeed adds with ``offload_optimizer: cpu`` (DeepSpeedCPUAdam), per rank.

        stage 1/2: fp32 gradient partition Σps·4, pinned (``single_partition_of_fp32_groups[i].grad`` :934-941)
                   lp parameter staging Σps, pinned (``param_buffer_of_bit16_for_cpu_offload_groups`` :564-574)
                   lp gradient staging of the largest tensor, pinned (``temp_grad_buffer_for_cpu_offload`` :653-657)
                   with gradient accumulation (> 1 micro-batch): each partition tensor's whole gradient in lp,
                   pinned (``async_accumulate_grad_in_cpu_via_gpu`` :1822-1826)
        stage 3:   fp32 gradient partition p3·4 per sub-group, pinned (``initialize_optimizer_states`` :1337-1342)

    The fp32 master (stage 1/2 pinned, stage 3 pageable) and Adam moments (pageable) come from
    model_states; the ZeRO-3 lp gradient partition (pinned) from ``model_states.lp_grads``.
    Source: the lines above. Assumes: OpenRLHF's ``pin_memory: true``.
    Checked by: tests/memory/test_model_states.py::test_adam_offload_zero2_host_and_gpu
    """
    if not zero.offload_optimizer or not layout.trainable_params:
        return []
    path, lp = f"{role}.offload", zero.param_dtype
    pinned = "pinned" if zero.pin_memory else "pageable"
    if zero.stage == ZeroStage.ZERO_3:
        numel = stage3_trainable_partition_numel(layout, zero.dp_degree)
        return [_cpu(f"{path}.fp32_grads", numel, HOST_GRAD_DTYPE, Category.GRAD,
                     ds_source(Z3, f"subgroup_gradient_buffer {pinned} :1337-1342"))]
    ps = sum(stage12_partition_numels(layout, zero.dp_degree))
    terms = [_cpu(f"{path}.fp32_grads", ps, HOST_GRAD_DTYPE, Category.GRAD,
                  ds_source(Z12, f"fp32 grad partition {pinned} :934-941")),
             _cpu(f"{path}.param_staging", ps, lp, Category.PARAM,
                  ds_source(Z12, f"bit16 param buffer {pinned} :564-574")),
             _cpu(f"{path}.grad_staging", layout.largest_tensor, lp, Category.GRAD,
                  ds_source(Z12, f"temp_grad_buffer_for_cpu_offload {pinned} :653-657"))]
    if accumulates_on_host(zero):
        terms.append(_cpu(f"{path}.accumulated_grads", grads_in_partition_numel(layout, zero.dp_degree), lp,
                          Category.GRAD,
                          ds_source(Z12, f"accumulated_grads_in_cpu, whole tensors, {pinned} :1822-1826")))
    return terms


def pinned_allocations(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[tuple[str, tuple[int, ...], bool]]:
    """Every separate pinned host allocation DeepSpeed makes on one rank, grouped by the term it backs:
    ``(term path, bytes of each allocation, whether it pins a copy of a filled pageable tensor)``.

        offload_param (a frozen ZeRO-3 model's offloaded parameters): {role}.params.partition, one lp partition per tensor above the
                   persistence threshold (partition_parameters.py:1836-1843, pinned from an untouched torch.empty)
        stage 3:   {role}.grads              one flat lp buffer p3 (``grad_partitions_flat_buffer`` :791-795)
                   {role}.offload.fp32_grads one fp32 buffer per optimizer sub-group (:1337-1342)
        stage 1/2: {role}.optimizer.master_params, {role}.offload.fp32_grads, {role}.offload.param_staging:
                   one per parameter group (:560-574, :934-941); {role}.offload.grad_staging one buffer of the
                   largest tensor (:653-658); {role}.offload.accumulated_grads one per gradient tensor
                   (``buffer_to_accumulate_to_in_cpu`` :1822-1826)

    Source: deepspeed/runtime/zero/stage3.py and stage_1_and_2.py@v0.19.8 at the lines above; each goes
    through ``get_accelerator().pin_memory`` → ``tensor.pin_memory()`` (accelerator/abstract_accelerator.py
    ``_torch_pin_memory``, unless ``DS_PIN_MEMORY_BACKEND=native``). OpenRLHF's param groups: decay and
    no-decay (``layout.trainable_groups``). Assumes: ``pin_memory: true`` (OpenRLHF's DeepSpeed config).
    Checked by: tests/memory/test_host_alloc.py::test_zero3_offload_pinned_allocations
    """
    if not zero.pin_memory:
        return []
    lp, fp32, n = zero.param_dtype, HOST_GRAD_DTYPE, zero.dp_degree
    out: list[tuple[str, tuple[int, ...], bool]] = []
    if zero.stage == ZeroStage.ZERO_3 and zero.offload_param:
        threshold = zero.param_persistence_threshold if layout.per_tensor else -1
        out.append((f"{role}.params.partition", tuple(bytes_for(stage3_partition_numel(t, n), lp)
                                                      for t in layout.all_tensors() if t > threshold), False))
    if not layout.trainable_params:
        return out
    if zero.stage == ZeroStage.ZERO_3:
        if zero.offload_optimizer:
            out.append((f"{role}.grads", (bytes_for(stage3_trainable_partition_numel(layout, n), zero.grad_accum_dtype),),
                        True))
            out.append((f"{role}.offload.fp32_grads",
                        tuple(bytes_for(s, fp32) for s in sub_group_numels(layout, n, zero.sub_group_size)), True))
        return out
    if not zero.offload_optimizer:
        return []
    groups = stage12_partition_numels(layout, n)
    out += [(f"{role}.optimizer.master_params", tuple(bytes_for(g, fp32) for g in groups), True),
            (f"{role}.offload.fp32_grads", tuple(bytes_for(g, fp32) for g in groups), True),
            (f"{role}.offload.param_staging", tuple(bytes_for(g, lp) for g in groups), True),
            (f"{role}.offload.grad_staging", (bytes_for(layout.largest_tensor, lp),), True)]
    if accumulates_on_host(zero):
        out.append((f"{role}.offload.accumulated_grads",
                    tuple(bytes_for(t, lp) for t in grads_in_partition_tensors(layout, n)), True))
    return out


def pinned_overheads(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """What pinning costs beyond the tensors, per rank.

        {term}.pinned_rounding   Σ over the term's allocations (pinned_block_bytes(a) − a), persistent
        {role}.offload.pin_memory_copy  (LOAD) ``tensor.pin_memory()`` copies a filled pageable tensor into a
                                 new pinned block, so for a moment both exist: the largest such pair
                                 (source + its block) while the engine initialises

    Source: memory/host_alloc.py (the allocator's rounding); the allocations of ``pinned_allocations``.
    Assumes: copies happen one at a time (each source is dropped by the assignment that follows); the
    moment is charged with the load phase, whose other terms are small under ZeRO-3 (one module).
    Checked by: tests/memory/test_host_alloc.py::test_zero3_offload_pinned_allocations
    """
    allocations = pinned_allocations(layout, zero, role=role)
    terms = [t for path, sizes, _ in allocations
             if (t := host_alloc.rounding_term(path, sizes, detail=f"{len(sizes)} pinned allocation(s)"))]
    copies = [a for _, sizes, copied in allocations if copied for a in sizes]
    if copies:
        largest = max(copies, key=lambda a: a + host_alloc.pinned_block_bytes(a))
        terms.append(Term(path=f"{role}.offload.pin_memory_copy", bytes=largest + host_alloc.pinned_block_bytes(largest),
                          category=Category.TEMP, device=Device.CPU, phase=Phase.LOAD,
                          source=code("pytorch/pytorch:aten/src/ATen/native/Memory.cpp@v2.13.0",
                                      "_pin_memory: new pinned storage + copy_ of the pageable source")))
    return terms


def model_loading(layout: ParamLayout, zero: ZeroConfig, *, role: str, load_dtype: DType | None = None) -> list[Term]:
    """Host copy of the weights while one rank loads the model (``Phase.LOAD``).

        ZeRO 0-2 (and eval stage 0): the whole model, num_params × load dtype, in every rank
        ZeRO-3:  zero.Init partitions as modules are built: one module, largest_layer_params × load dtype

    Source: OpenRLHF sets ``HfDeepSpeedConfig`` only for stage 3 (openrlhf/models/actor.py@01b8a23) and loads
    with ``torch_dtype=bfloat16``; DeepSpeed's own estimator charges ``largest_layer_params × 4 × gpus_per_node``
    per node with zero_init and ``total_params × 4 × gpus_per_node`` without (stage3.py:4047-4050), in fp32.
    Assumes: safetensors pages mapped for reading are not charged (page cache); ranks load concurrently.
    Checked by: tests/memory/test_model_states.py::test_host_model_loading
    """
    dtype = zero.param_dtype if load_dtype is None else load_dtype
    if zero.stage == ZeroStage.ZERO_3:
        numel, detail = layout.largest_layer_params, "zero.Init: one module at a time (estimator :4047-4048)"
    else:
        numel, detail = layout.num_params, "full copy per rank without zero.Init (estimator :4049-4050)"
    return [Term(path=f"{role}.load.weights", bytes=bytes_for(numel, dtype), category=Category.PARAM,
                 device=Device.CPU, source=ds_source(Z3, detail), phase=Phase.LOAD)]


def host_terms(terms: Iterable[Term]) -> list[Term]:
    """The host (CPU) terms among one rank's terms."""
    return [t for t in terms if t.device == Device.CPU]


def per_node(rank_terms: Iterable[Term], zero: ZeroConfig) -> list[Term]:
    """Host terms of one rank multiplied by the engine's ranks on a node (identical ranks)."""
    return [Term(path=t.path, bytes=t.bytes * zero.ranks_per_node, category=t.category, device=t.device,
                 source=t.source, phase=t.phase) for t in host_terms(rank_terms)]


def _cpu(path: str, numel: int, dtype: DType, category: Category, source: Source) -> Term:
    return Term(path=path, bytes=bytes_for(numel, dtype), category=category, device=Device.CPU, source=source)


class HostKind(StrEnum):
    """What a host term is, for the per-node timeline (a report grouping, not a formula)."""

    OPTIMIZER = "optimizer_state"
    """fp32 master weights and Adam moments."""
    PINNED = "pinned_buffers"
    """DeepSpeed's offload buffers (gradients, staging) and offloaded or sleeping weights."""
    ROUNDING = "rounding"
    """What the pinned-memory allocator pins beyond the tensors (``*.pinned_rounding``)."""
    PROCESSES = "processes"
    """Interpreters, imports, CUDA contexts, Ray's daemons (``*.runtime.*``, ``ray.*``)."""
    LOADING = "loading"
    """The model as it is read, and the pin_memory() copies of engine initialisation."""
    SAVING = "saving"
    """What a save holds beyond the resident state: the HF state dict, a checkpoint's host copies."""
    REPLAY_BUFFER = "replay_buffer"
    """RL experiences kept on the host."""


def host_kind(term: Term) -> HostKind:
    """The timeline kind of one host term, from its path and category (memplan's own grouping)."""
    path = term.path.split(" (×", 1)[0]
    if path.endswith(".pinned_rounding"):
        return HostKind.ROUNDING
    if ".runtime." in path or path.startswith("ray."):
        return HostKind.PROCESSES
    if ".replay_buffer" in path:
        return HostKind.REPLAY_BUFFER
    if term.phase == Phase.LOAD:
        return HostKind.LOADING
    if term.phase in SAVE_PHASES:
        return HostKind.SAVING
    if term.category == Category.OPTIMIZER:
        return HostKind.OPTIMIZER
    return HostKind.PINNED


def by_kind(terms: Iterable[Term]) -> dict[HostKind, int]:
    """Bytes per timeline kind, in HostKind order, kinds with no bytes left out."""
    totals = {kind: 0 for kind in HostKind}
    for term in terms:
        totals[host_kind(term)] += term.bytes
    return {kind: nbytes for kind, nbytes in totals.items() if nbytes}
