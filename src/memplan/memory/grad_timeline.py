"""DeepSpeed's gradient buffers as one backward pass proceeds, at ZeRO stages 0-2.

A trained model's gradients do not exist before its backward starts (``zero_grad(set_to_none=True)``
after every step) and they appear layer by layer as autograd reaches each parameter. Where they go
depends on the stage (DeepSpeed 0.19.8; ``Z12`` = deepspeed/runtime/zero/stage_1_and_2.py):

    stage 0 (FP16_Optimizer, engine all-reduce): every gradient stays in ``param.grad`` (lp) until the
        step; after backward the engine flattens them for the all-reduce (engine.py:3795-3839).
    stage 1: the gradients also stay in ``param.grad``; the first hook allocates the reduce bucket
        (``process_gradients`` → ``setup_buckets`` Z12:2287, :3256-3280); at the accumulation boundary
        ``reduce_gradients`` (Z12:958-985) moves them into the bucket, one bucket at a time (each moved
        gradient's storage is replaced by a bucket view), flattens each full bucket for the all-reduce
        and keeps the rank's partition in ``grads_in_partition`` (Z12:2184-2194).
    stage 2: each hook copies the gradient into the bucket at once; a full bucket is flattened and
        reduced (Z12:2367) and the rank's share kept in ``grads_in_partition``, allocated at the first
        flush; the epilogue reduces what is left and frees the bucket (``_release_ipg_buffers`` Z12:924-932).

So the backward's peak is the largest over its moments of (transient tensors alive then) + (gradient
buffers alive then), not the transient peak plus every buffer. The moments come from
memory/transient.py ``backward_moments``; how many gradient elements have been hooked by each moment
from :class:`GradOrder`. A last moment, the end of backward, holds every gradient and the final flush.

Not covered (the caller keeps the persistent charging of memory/model_states.py): ZeRO-3 (its buffers
are allocated at initialisation), gradient accumulation over several micro-batches (gradients persist
across forwards), a gradient accumulation dtype other than the model's, and BF16_Optimizer.
Checked by: validation/deepspeed_cpu (real DeepSpeed 0.19.8 per-rank peaks); the per-op timelines of
scripts/probe_grad_timeline.py show each stage's buffers appear as described.
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.dtypes import DType, bytes_for
from memplan.jobs.options import ZeroStage
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.memory.zero import (
    NON_ZERO_ALLREDUCE_BUCKET_SIZE, ParamLayout, ZeroConfig, ds_source, grads_in_partition_numel,
)
from memplan.model.params import ModuleKind, ParamModule

Z12 = "runtime/zero/stage_1_and_2.py"
Z3 = "runtime/zero/stage3.py"
#: With ``overlap_comm`` stage 1/2 double-buffer the reduce bucket (``buf_0``, ``buf_1``, Z12:3271-3277).
OVERLAP_COMM_BUCKETS = 2
#: Prefix of the decoder layers in the parameter tree (model/params.py ``param_tree``).
LAYER_PREFIX = "model.layers."


@dataclass(frozen=True, slots=True, kw_only=True)
class GradOrder:
    """Trainable elements whose gradients autograd produces at each stage of backward, in backward order:
    the head (LM or value head), the final norm, the decoder layers from last to first, the embedding.
    A tied LM head shares the embedding's AccumulateGrad node, so its gradient is hooked with the
    embedding's at the very end (``head`` is 0 and ``embedding`` holds the tensor once)."""

    head: int
    """LM head or value head (0 when tied or frozen)."""
    final_norm: int
    """Final norm."""
    layers: tuple[int, ...]
    """Trainable elements of decoder layer ``i`` (all of it, or its LoRA adapters)."""
    embedding: int
    """Token embedding (with a tied head: the shared tensor)."""

    @property
    def total(self) -> int:
        """Every trainable element."""
        return self.head + self.final_norm + sum(self.layers) + self.embedding

    def after_layer(self, index: int) -> int:
        """Elements hooked once layer ``index``'s backward is done (the layers above it and itself)."""
        return self.head + self.final_norm + sum(self.layers[index:])


def grad_order(tree: ParamModule, num_layers: int, adapters: dict[str, int] | None = None) -> GradOrder:
    """The :class:`GradOrder` of a parameter tree; ``adapters`` maps a linear's path to its LoRA adapter
    elements (then only adapters are trainable, plus a value head)."""
    head = norm = embedding = 0
    layers = [0] * num_layers
    for module in tree.walk():
        if adapters is not None:
            own = adapters.get(module.path, 0)
            if module.path == "score":  # OpenRLHF trains the value head next to the adapters
                own += module.own_params
        else:
            own = sum(t.numel for t in module.tensors if not t.buffer and not t.tied)
        if not own:
            continue
        if module.path.startswith(LAYER_PREFIX):
            layers[int(module.path[len(LAYER_PREFIX):].split(".", 1)[0])] += own
        elif module.kind == ModuleKind.EMBEDDING:
            embedding += own
        elif module.path in ("lm_head", "score"):
            head += own
        else:
            norm += own
    return GradOrder(head=head, final_norm=norm, layers=tuple(layers), embedding=embedding)


def applies(zero: ZeroConfig, layout: ParamLayout) -> bool:
    """Whether the backward timeline models this engine (see the module docstring for what is not)."""
    return (layout.trainable_params > 0
            and zero.gradient_accumulation_steps == 1 and zero.grad_accum_dtype == zero.param_dtype
            and not zero.uses_bf16_optimizer)


def _term(path: str, numel: int, dtype: DType, source_detail: str, phase: Phase, *, where: str = Z12) -> Term:
    return Term(path=path, category=Category.GRAD, device=Device.GPU, bytes=bytes_for(numel, dtype),
                source=ds_source(where, source_detail), phase=phase)


def zero3_module_grads(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """ZeRO-3: full gradients of the module whose backward just ran, before the hook copies them into the
    bucket (``__add_grad_to_ipg_bucket`` stage3.py:1621-1644). DeepSpeed's estimator counts the same
    2 B × largest layer (its ``largest_layer_memory = 4 × LL`` is these plus the gathered weights).

    Assumes: with frozen tensors (LoRA) only trainable tensors get gradients: the largest trainable tensor.
    Checked by: tests/memory/test_vs_deepspeed_estimator.py::test_zero3_gpu_agreement
    """
    if zero.stage != ZeroStage.ZERO_3 or not layout.trainable_params:
        return []
    if layout.frozen_params and layout.per_tensor:
        numel = layout.largest_tensor
    else:
        numel = min(layout.largest_layer_params, layout.trainable_params)
    return [_term(f"{role}.deepspeed.module_grads", numel, zero.param_dtype,
                  "param.grad before __add_grad_to_ipg_bucket :1621-1644", Phase.BACKWARD, where=Z3)]


def _bucket(zero: ZeroConfig, role: str) -> list[Term]:
    """The reduce bucket(s), from the first gradient hook to the end of backward (stage 1/2)."""
    if zero.stage == ZeroStage.ZERO_0:
        return []
    count = OVERLAP_COMM_BUCKETS if zero.overlap_comm else 1
    return [_term(f"{role}.deepspeed.reduce_bucket", count * zero.reduce_bucket_size, zero.param_dtype,
                  f"setup_buckets at the first hook :2287, :3266-3277{' (+ buf_1)' if zero.overlap_comm else ''}",
                  Phase.BACKWARD)]


def _partition(layout: ParamLayout, zero: ZeroConfig, role: str, phase: Phase) -> list[Term]:
    """``grads_in_partition``: the whole tensors overlapping the rank's partition, lp (none on the GPU with
    optimizer offload: each gradient is copied to host, Z12:1888-1912)."""
    if zero.offload_optimizer:
        return []
    return [_term(f"{role}.grads.partition", grads_in_partition_numel(layout, zero.dp_degree), zero.param_dtype,
                  "grads_in_partition, allocated at the first flush :2184-2194", phase)]


def _flat_copy(numel: int, zero: ZeroConfig, role: str) -> list[Term]:
    if zero.stage == ZeroStage.ZERO_3:
        if not zero.reduce_scatter:
            return []
        return [_term(f"{role}.deepspeed.reduce_flat_copy", numel, zero.param_dtype,
                      "reduce_scatter_coalesced torch.cat :122", Phase.BACKWARD,
                      where="runtime/comm/coalesced_collectives.py")]
    if zero.stage == ZeroStage.ZERO_0:
        return [_term(f"{role}.deepspeed.reduce_flat_copy", numel, zero.param_dtype,
                      "allreduce_no_retain/allreduce_bucket flatten :3795-3839", Phase.BACKWARD,
                      where="runtime/engine.py")]
    return [_term(f"{role}.deepspeed.reduce_flat_copy", numel, zero.param_dtype, "allreduce_bucket flatten :2367",
                  Phase.BACKWARD)]


def _autograd_grads(numel: int, zero: ZeroConfig, role: str, phase: Phase) -> list[Term]:
    return [Term(path=f"{role}.grads", category=Category.GRAD, device=Device.GPU,
                 bytes=bytes_for(numel, zero.param_dtype),
                 source=ds_source("runtime/engine.py", "autograd param.grad until reduced"), phase=phase)]


class _Buffers:
    """The gradient buffers of one engine, each computed once (``grads_in_partition_numel`` walks every
    tensor, and a backward has a moment per layer)."""

    def __init__(self, layout: ParamLayout, zero: ZeroConfig, role: str) -> None:
        self.layout, self.zero, self.role = layout, zero, role
        self._partition: list[Term] | None = None
        self._module_grads: list[Term] | None = None

    @property
    def partition(self) -> list[Term]:
        if self._partition is None:
            self._partition = _partition(self.layout, self.zero, self.role, Phase.BACKWARD)
        return self._partition

    @property
    def module_grads(self) -> list[Term]:
        if self._module_grads is None:
            self._module_grads = zero3_module_grads(self.layout, self.zero, role=self.role)
        return self._module_grads


def during(layout: ParamLayout, zero: ZeroConfig, *, role: str, hooked: int, hooked_before: int,
           buffers: _Buffers | None = None, in_flight: int | None = None) -> list[Term]:
    """Gradient buffers alive at a backward moment by which ``hooked`` elements have had their hook
    (``hooked_before`` at the previous moment; a bucket flush between the two is charged here).
    ``in_flight``: elements of the module group being differentiated then, which caps ZeRO-3's
    module-gradient term (a norm's or a value head's gradients are tiny)."""
    if hooked <= 0:
        return []
    buffers = buffers or _Buffers(layout, zero, role)
    if zero.stage in (ZeroStage.ZERO_0, ZeroStage.ZERO_1):
        return _autograd_grads(hooked, zero, role, Phase.BACKWARD) + _bucket(zero, role)
    bucket = zero.reduce_bucket_size
    flush = _flat_copy(bucket, zero, role) if hooked // bucket > hooked_before // bucket else []
    if zero.stage == ZeroStage.ZERO_3:  # partition and bucket are resident; the module's gradients in flight
        grads = buffers.module_grads
        if in_flight is not None and grads and in_flight < grads[0].bytes // max(bytes_for(1, zero.param_dtype), 1):
            grads = [_term(grads[0].path, in_flight, zero.param_dtype,
                           "param.grad before __add_grad_to_ipg_bucket :1621-1644 (this module's)", Phase.BACKWARD,
                           where=Z3)]
        return grads + flush
    terms = _bucket(zero, role) + flush
    if hooked > bucket:  # a flush has happened: the partition exists from then on
        terms += buffers.partition
    return terms


def at_end(layout: ParamLayout, zero: ZeroConfig, *, role: str, buffers: _Buffers | None = None) -> list[Term]:
    """Gradient buffers at the end of backward, at the final reduction.

        stage 0: every lp gradient + the all-reduce's flat copy (≤ 5e8 elements + one tensor)
        stage 1: at each flush of ``reduce_gradients`` the gradients not yet moved + the bucket + the flat
                 copy of the bucket's content: T + B elements whatever the flush (T ≤ B: T in the bucket
                 and T flattened)
        stage 2: the bucket + the flat copy of what is left in it (+ the partition if a flush came earlier)
        stage 3: the flat copy of what is left in the bucket (partition and bucket are resident)
    """
    t = layout.trainable_params
    if zero.stage == ZeroStage.ZERO_0:
        return (_autograd_grads(t, zero, role, Phase.BACKWARD)
                + _flat_copy(min(t, NON_ZERO_ALLREDUCE_BUCKET_SIZE + layout.largest_tensor), zero, role))
    bucket = zero.reduce_bucket_size
    if zero.stage == ZeroStage.ZERO_1:
        return _autograd_grads(t, zero, role, Phase.BACKWARD) + _bucket(zero, role)
    left = t % bucket or bucket
    if zero.stage == ZeroStage.ZERO_3:
        return _flat_copy(min(left, t), zero, role)
    terms = _bucket(zero, role) + _flat_copy(min(left, t), zero, role)
    if t > bucket:
        terms += (buffers or _Buffers(layout, zero, role)).partition
    return terms


def at_step(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """Gradients alive through the optimizer step: stage 0 every lp gradient (freed by ``zero_grad``
    after the step), stage 1/2 the rank's ``grads_in_partition`` (the bucket is gone); stage 3 keeps its
    resident partition (memory/model_states.py ``lp_grads``), nothing more."""
    if zero.stage == ZeroStage.ZERO_3:
        return []
    if zero.stage == ZeroStage.ZERO_0:
        return _autograd_grads(layout.trainable_params, zero, role, Phase.OPTIMIZER_STEP)
    return _partition(layout, zero, role, Phase.OPTIMIZER_STEP)


def hooked_at(stage: tuple, order: GradOrder) -> tuple[int, int]:  # type: ignore[type-arg]
    """(gradient elements hooked by a backward moment of ``stage`` (memory/transient.py ``Stage``), elements
    of the module group whose gradients are in flight then). A layer's own gradients count as hooked in
    its moment (its hooks fire before its input gradient leaves)."""
    kind = stage[0]
    if kind == "lm_head_hook":
        return order.head, order.head
    if kind == "norm":
        return order.head + order.final_norm, order.final_norm
    if kind == "layer":
        return order.after_layer(stage[1]), order.layers[stage[1]]
    if kind == "embedding":
        return order.total - order.embedding, order.embedding
    return 0, 0


def backward_peak(moments: list[tuple[tuple[Term, ...], tuple]], order: GradOrder, layout: ParamLayout,  # type: ignore[type-arg]
                  zero: ZeroConfig, *, role: str, end_transient: tuple[Term, ...] | list[Term] = ()) -> tuple[Term, ...]:
    """The worst moment of backward with the gradient buffers alive at it: each transient moment with
    :func:`during`, and the end of backward (``end_transient``: what the trainer still holds) with
    :func:`at_end`. Returns that moment's terms (transient and gradient buffers, phase BACKWARD)."""
    ordered = sorted(((*hooked_at(stage, order), terms) for terms, stage in moments), key=lambda m: m[0])
    buffers = _Buffers(layout, zero, role)
    candidates = []
    before = 0
    for hooked, current, terms in ordered:
        candidates.append(list(terms) + during(layout, zero, role=role, hooked=hooked, hooked_before=before,
                                               buffers=buffers, in_flight=current))
        before = hooked
    candidates.append(list(end_transient) + at_end(layout, zero, role=role, buffers=buffers))
    best = max(candidates, key=lambda terms: sum(t.bytes for t in terms))
    return tuple(t for t in best if t.bytes > 0)
