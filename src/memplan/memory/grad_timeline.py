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

The buffers' sizes and sources are memory/model_states.py's (``lp_grads``, ``grads_in_partition``) and
memory/ds_buffers.py's (``reduce_buckets``, ``reduce_flat_copy``, ``zero3_module_grads``); this module only says when each exists.
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

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from itertools import accumulate

from memplan.dtypes import bytes_for
from memplan.memory.sharding import ZeroStage
from memplan.memory.breakdown import Phase, Term
from memplan.memory.ds_buffers import reduce_buckets, reduce_flat_copy, zero3_module_grads
from memplan.memory.model_states import grads_in_partition, lp_grads
from memplan.memory.transient import BackwardStage, Stage
from memplan.memory.zero import ParamLayout, ZeroConfig
from memplan.model.params import ModuleKind, ParamModule

#: Prefix of the decoder layers in the parameter tree (model/params.py ``param_tree``).
LAYER_PREFIX = "model.layers."


@dataclass(frozen=True, kw_only=True)
class GradOrder:
    """Trainable elements whose gradients autograd produces at each stage of backward, in backward order:
    the head (LM or value head), the final norm, the decoder layers from last to first, the embedding.
    A tied LM head shares the embedding's AccumulateGrad node, so its gradient is hooked with the
    embedding's at the very end (``head`` is 0 and ``embedding`` holds the tensor once).
    The sums over layers are computed once (``cached_property``, hence no ``slots``): backward has a
    moment per layer, and summing the layers above each one made estimates quadratic in the layers."""

    head: int
    """LM head or value head (0 when tied or frozen)."""
    final_norm: int
    """Final norm."""
    layers: tuple[int, ...]
    """Trainable elements of decoder layer ``i`` (all of it, or its LoRA adapters)."""
    embedding: int
    """Token embedding (with a tied head: the shared tensor)."""

    @cached_property
    def total(self) -> int:
        """Every trainable element."""
        return self.head + self.final_norm + sum(self.layers) + self.embedding

    @cached_property
    def _layers_from(self) -> tuple[int, ...]:
        """``sum(layers[i:])`` for every ``i`` (and 0 past the last layer)."""
        return (*accumulate(reversed(self.layers), initial=0),)[::-1]

    def after_layer(self, index: int) -> int:
        """Elements hooked once layer ``index``'s backward is done (the layers above it and itself)."""
        return self.head + self.final_norm + self._layers_from[index]


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


def _autograd_grads(layout: ParamLayout, zero: ZeroConfig, role: str, numel: int, phase: Phase) -> list[Term]:
    """The first ``numel`` elements of the stage 0/1 autograd gradients (``model_states.lp_grads``)."""
    whole = lp_grads(layout, zero, role=role)[0]
    return [replace(whole, bytes=bytes_for(numel, zero.param_dtype), phase=phase)]


def _in_backward(terms: list[Term]) -> list[Term]:
    return [replace(term, phase=Phase.BACKWARD) for term in terms]


class _Buffers:
    """The gradient buffers of one engine, each computed once (``grads_in_partition_numel`` walks every
    tensor, and a backward has a moment per layer)."""

    def __init__(self, layout: ParamLayout, zero: ZeroConfig, role: str) -> None:
        self.layout, self.zero, self.role = layout, zero, role
        self._partition: list[Term] | None = None
        self._flush: list[Term] | None = None
        self._module_grads: dict[int | None, list[Term]] = {}
        self.bucket = reduce_buckets(layout, zero, role=role) if zero.stage != ZeroStage.ZERO_3 else []

    def module_grads(self, in_flight: int | None) -> list[Term]:
        """ZeRO-3's module gradients with ``in_flight`` elements being differentiated (few distinct sizes:
        the head, the norm, a layer, the embedding)."""
        if in_flight not in self._module_grads:
            self._module_grads[in_flight] = zero3_module_grads(self.layout, self.zero, role=self.role,
                                                               in_flight=in_flight)
        return self._module_grads[in_flight]

    @property
    def flush(self) -> list[Term]:
        """The flat copy of one full bucket's flush (the same at every flush of a backward)."""
        if self._flush is None:
            self._flush = reduce_flat_copy(self.layout, self.zero, role=self.role, numel=self.zero.reduce_bucket_size)
        return self._flush

    @property
    def partition(self) -> list[Term]:
        if self._partition is None:
            self._partition = grads_in_partition(self.layout, self.zero, role=self.role, phase=Phase.BACKWARD)
        return self._partition


def during(layout: ParamLayout, zero: ZeroConfig, *, role: str, hooked: int, hooked_before: int,
           buffers: _Buffers | None = None, in_flight: int | None = None) -> list[Term]:
    """Gradient buffers alive at a backward moment by which ``hooked`` elements have had their hook
    (``hooked_before`` at the previous moment; a bucket flush between the two is charged here).
    ``in_flight``: elements of the module group being differentiated then (caps ZeRO-3's module gradients)."""
    if hooked <= 0:
        return []
    buffers = buffers or _Buffers(layout, zero, role)
    if zero.stage in (ZeroStage.ZERO_0, ZeroStage.ZERO_1):
        return _autograd_grads(layout, zero, role, hooked, Phase.BACKWARD) + buffers.bucket
    bucket = zero.reduce_bucket_size
    flush = buffers.flush if hooked // bucket > hooked_before // bucket else []
    if zero.stage == ZeroStage.ZERO_3:  # partition and bucket are resident; the module's gradients in flight
        return buffers.module_grads(in_flight) + flush
    terms = buffers.bucket + flush
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
    buffers = buffers or _Buffers(layout, zero, role)
    if zero.stage == ZeroStage.ZERO_0:
        return _autograd_grads(layout, zero, role, t, Phase.BACKWARD) + reduce_flat_copy(layout, zero, role=role)
    if zero.stage == ZeroStage.ZERO_1:
        return _autograd_grads(layout, zero, role, t, Phase.BACKWARD) + buffers.bucket
    bucket = zero.reduce_bucket_size
    last_flush = reduce_flat_copy(layout, zero, role=role, numel=min(t % bucket or bucket, t))
    if zero.stage == ZeroStage.ZERO_3:
        return last_flush
    return buffers.bucket + last_flush + (buffers.partition if t > bucket else [])


def outside_backward(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """The gradient buffers outside the backward's moments, for ``model_states.trained_model_states``
    (``placed_gradients``): stage 0 every lp gradient through the optimizer step (freed by ``zero_grad``
    after it), stage 1/2 the rank's ``grads_in_partition`` through the step (the bucket is gone), stage 3
    its resident gradient partition and bucket (allocated at initialisation)."""
    if zero.stage == ZeroStage.ZERO_3:
        return lp_grads(layout, zero, role=role) + reduce_buckets(layout, zero, role=role)
    if zero.stage == ZeroStage.ZERO_0:
        return _autograd_grads(layout, zero, role, layout.trainable_params, Phase.OPTIMIZER_STEP)
    return grads_in_partition(layout, zero, role=role, phase=Phase.OPTIMIZER_STEP)


def hooked_at(stage: Stage, order: GradOrder) -> tuple[int, int]:
    """(gradient elements hooked by a backward moment of ``stage``, elements of the module group whose
    gradients are in flight then). A layer's own gradients count as hooked in its moment (its hooks fire
    before its input gradient leaves)."""
    kind, index = stage
    if kind == BackwardStage.LM_HEAD_HOOK:
        return order.head, order.head
    if kind == BackwardStage.NORM:
        return order.head + order.final_norm, order.final_norm
    if kind == BackwardStage.LAYER:
        return order.after_layer(index), order.layers[index]
    if kind == BackwardStage.EMBEDDING:
        return order.total - order.embedding, order.embedding
    return 0, 0


def backward_peak(moments: Sequence[tuple[tuple[Term, ...], Stage]], order: GradOrder, layout: ParamLayout,
                  zero: ZeroConfig, *, role: str, end_transient: tuple[Term, ...] | list[Term] = (),
                  moment_bytes: Sequence[int] | None = None) -> tuple[Term, ...]:
    """The worst moment of backward with the gradient buffers alive at it: each transient moment with
    :func:`during`, and the end of backward (``end_transient``: what the trainer still holds) with
    :func:`at_end`. Returns that moment's terms (transient and gradient buffers, phase BACKWARD).
    ``moment_bytes``: each moment's transient bytes, when the caller has them (cached per model)."""
    sizes = moment_bytes if moment_bytes is not None else [sum(t.bytes for t in terms) for terms, _ in moments]
    hooks = [hooked_at(stage, order) for _, stage in moments]
    buffers = _Buffers(layout, zero, role)
    best: list[Term] = []
    best_bytes = -1
    before = 0
    for index in sorted(range(len(moments)), key=lambda i: hooks[i][0]):
        hooked, current = hooks[index]
        alive = during(layout, zero, role=role, hooked=hooked, hooked_before=before, buffers=buffers,
                       in_flight=current)
        total = sizes[index] + sum(t.bytes for t in alive)
        if total > best_bytes:  # the first of equal moments, as max() takes it
            best, best_bytes = [*moments[index][0], *alive], total
        before = hooked
    end = list(end_transient) + at_end(layout, zero, role=role, buffers=buffers)
    if sum(t.bytes for t in end) > best_bytes:
        best = end
    return tuple(t for t in best if t.bytes > 0)
