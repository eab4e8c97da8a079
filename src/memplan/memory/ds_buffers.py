"""DeepSpeed's own buffers on a trained or frozen model's GPU, beyond the model states: reduce buckets and
the flat copies of a reduction, ZeRO-3's gathered weights and module gradients, ZeRO++ hpZ copies, and the
GPU staging of optimizer offload. Each function cites where DeepSpeed 0.19.8 allocates the buffer; the
probe measurements quoted are those of memory/model_states.py's module docstring.

``memory/model_states.py`` composes them into an engine's terms; ``memory/grad_timeline.py`` places the
gradient-path ones (bucket, flat copy, module gradients) at the backward moments where they exist.
"""

from __future__ import annotations

from memplan.dtypes import DType
from memplan.memory.sharding import ZeroStage
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.memory.zero import (
    NON_ZERO_ALLREDUCE_BUCKET_SIZE, ParamLayout, ZeroConfig, ds_source, ds_term, persistent_numel,
    stage3_partition_numel, stage12_partition_numels,
)

Z12 = "runtime/zero/stage_1_and_2.py"
Z3 = "runtime/zero/stage3.py"
COORD = "runtime/zero/partitioned_param_coordinator.py"

#: The step-time fp32 cast of a gradient (``master_weights_and_grads_dtype`` default).
MASTER_DTYPE = DType.FP32
#: At the turn from forward to backward, ZeRO-3 keeps the layers whose reuse (in backward) lies within
#: ``max_reuse_distance`` elements of trace; with forward and backward visiting each layer once, that
#: is the last ``max_reuse_distance / 2`` elements (see ``zero3_gathered_params``).
FORWARD_BACKWARD_TRACE_VISITS = 2
#: With ``overlap_comm`` stage 1/2 double-buffer the reduce bucket (``buf_0``, ``buf_1``, stage_1_and_2.py:3271-3277).
OVERLAP_COMM_BUCKETS = 2


def reduce_buckets(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """The contiguous gradient ("ipg") reduce bucket: ``reduce_bucket_size`` elements, whatever the model size.

        stage 1/2: (2 if overlap_comm else 1) × reduce_bucket_size, lp (or grad_accum with
                   ``param.grad_accum``), allocated at the first gradient hook and freed at the end of
                   backward (``setup_buckets`` :3256-3278, ``_release_ipg_buffers`` :924-932)
        stage 3:   1 × reduce_bucket_size in the communication dtype, allocated at init and kept
                   (``_setup_for_real_optimizer`` stage3.py:780-784)
        stage 0, BF16_Optimizer, eval engines: none

    Source: the lines above; OpenRLHF leaves ``reduce_bucket_size`` "auto" → 5e8 (1 GB in bf16).
    Assumes: contiguous_gradients on (DeepSpeed's default; forced by offload, stage_1_and_2.py:300).
    Probe: a 10,000,000 B bucket (5e6 bf16) for a 2.1M-parameter model, present only in backward at
    ZeRO-2 and from init on at ZeRO-3.
    Checked by: tests/memory/test_model_states.py::test_reduce_bucket_is_fixed_cost
    """
    if zero.stage == ZeroStage.ZERO_0 or zero.uses_bf16_optimizer or not layout.trainable_params:
        return []
    if not (zero.contiguous_gradients or zero.offload_optimizer):
        return []
    path = f"{role}.deepspeed.reduce_bucket"
    if zero.stage == ZeroStage.ZERO_3:
        return [ds_term(path, zero.reduce_bucket_size, zero.param_dtype, Category.GRAD, Device.GPU,
                      ds_source(Z3, "ipg bucket.buffer torch.empty(reduce_bucket_size) :780-784"))]
    dtype = zero.grad_accum_dtype if zero.stage == ZeroStage.ZERO_1 else zero.param_dtype
    count = OVERLAP_COMM_BUCKETS if zero.overlap_comm else 1
    return [ds_term(path, count * zero.reduce_bucket_size, dtype, Category.GRAD, Device.GPU,
                  ds_source(Z12, f"setup_buckets buf_0{' + buf_1' if zero.overlap_comm else ''} :3266-3277"),
                  Phase.BACKWARD)]


def reduce_flat_copy(layout: ParamLayout, zero: ZeroConfig, *, role: str, numel: int | None = None) -> list[Term]:
    """The flattened copy a reduction makes of the gradients it reduces (backward transient).

        stage 0:   allreduce_no_retain flattens up to 5e8 elements + one tensor (engine.py:3795-3839)
        stage 1/2: allreduce_bucket flattens the bucket's slices (stage_1_and_2.py:2367) ≤ reduce_bucket_size
        stage 3:   reduce_scatter_coalesced concatenates the bucket (runtime/comm/coalesced_collectives.py:122)
        BF16_Optimizer: a single flat fp32 tensor per group flattens to a view (no copy)

    Source: the lines above (``_flatten_dense_tensors`` of one tensor is a view; of several, a cat).
    ``numel``: the elements of one particular flush (memory/grad_timeline.py); default the largest flush.
    Assumes: tensors larger than the bucket are reduced alone (bounded by the largest tensor). At stage 1
    the gradients have moved into the bucket by the time a small model's single flush copies it (the
    probe's peak is grads + bucket, 4 MB under this sum); with T ≫ reduce_bucket_size the first flush
    coexists with almost all gradients. On gloo (CPU) reduce-scatter makes one more bucket-sized copy
    (probe, ZeRO-3); NCCL does not, so it is not charged.
    Checked by: tests/memory/test_model_states.py::test_reduce_bucket_is_fixed_cost
    """
    t = layout.trainable_params
    if not t or zero.uses_bf16_optimizer or (zero.stage == ZeroStage.ZERO_3 and not zero.reduce_scatter):
        return []
    if zero.stage == ZeroStage.ZERO_0:
        largest_flush = min(t, NON_ZERO_ALLREDUCE_BUCKET_SIZE + layout.largest_tensor)
        source = ds_source("runtime/engine.py", "allreduce_no_retain/allreduce_bucket flatten :3795-3839")
    else:
        largest_flush = min(t, max(zero.reduce_bucket_size, layout.largest_tensor))
        source = (ds_source("runtime/comm/coalesced_collectives.py", "reduce_scatter_coalesced torch.cat :122")
                  if zero.stage == ZeroStage.ZERO_3 else ds_source(Z12, "allreduce_bucket flatten :2367"))
    return [ds_term(f"{role}.deepspeed.reduce_flat_copy", largest_flush if numel is None else numel, zero.param_dtype,
                  Category.GRAD, Device.GPU, source, Phase.BACKWARD)]


def zero3_gathered_params(layout: ParamLayout, zero: ZeroConfig, *, role: str, phases: tuple[Phase, ...],
                          training: bool) -> list[Term]:
    """ZeRO-3 parameters gathered in full while modules run (one term per phase, same path).

        gatherable = elements of non-persistent tensors
        retained   = training: min(gatherable, max_reuse_distance / 2); forward-only: 0
        prefetch   = min(prefetch_bucket_size, max(0, max_live_parameters − retained))
        gathered   = min(gatherable, retained + largest_layer_params + prefetch)

    A released module keeps its parameters when they are used again within ``max_reuse_distance``
    elements of the recorded trace (``__params_to_release``, partitioned_param_coordinator.py:634-664);
    the trace of a training step visits each layer in forward and again in backward, so at the turn
    the last ``max_reuse_distance / 2`` elements stay gathered (models smaller than that stay whole).
    Prefetch stops at ``max_live_parameters`` (:452-454). Forward-only engines (eval) reuse nothing.

    Source: partitioned_param_coordinator.py as cited; gather buffers partition_parameters.py:1343.
    Assumes: uniform layers and a trace without activation recomputation (recomputation lengthens the
    distance to ~3 visits, so fewer are kept; this is the upper case); the first step (trace being
    recorded) releases immediately. Probe (ZeRO-3, 2 ranks): with the default 1e9 the whole
    non-persistent model, 3,162,112 B, stays gathered at the end of forward (exact); with
    max_reuse_distance 1.5e6 and no prefetch 790,528 elements stay (last layer's MLP + LM head) where this
    formula gives 1,012,144 (750,000 + one 262,144 module): an upper bound by up to one module.
    A partition over one rank gathers nothing: ``all_gather_coalesced`` and ``_allgather_params_coalesced``
    hand every parameter whose ``_partition_world_size`` is 1 to ``_no_gather_coalesced``
    (partition_parameters.py:1559-1560, 2029-2031), whose ``NoGatherHandle`` sets ``param.data =
    ds_tensor.data.to(current device)`` (:74): no buffer while the full ``ds_tensor`` is on the GPU, a GPU
    copy of it when parameters are offloaded to the host (``offload_param``), which this term then charges. Measured on an H200 (torch 2.11,
    DeepSpeed 0.19.8, world size 1, validation/measured/*nvidia-h200.json): ZeRO-3 cases were over by
    0.86-1.95 GiB, each close to this term, while charging it.

    Checked by: tests/memory/test_model_states.py::test_zero3_gathered_params_limits
    """
    if zero.stage != ZeroStage.ZERO_3 or (zero.dp_degree == 1 and not zero.offload_param):
        return []
    gatherable = layout.num_params - persistent_numel(layout, zero.param_persistence_threshold)
    retained = min(gatherable, zero.max_reuse_distance // FORWARD_BACKWARD_TRACE_VISITS) if training else 0
    prefetch = min(zero.prefetch_bucket_size, max(0, zero.max_live_parameters - retained))
    numel = min(gatherable, retained + layout.largest_layer_params + prefetch)
    source = ds_source(COORD, "fetch + prefetch :420-490, release within max_reuse_distance :634-664")
    return [ds_term(f"{role}.deepspeed.gathered_params", numel, zero.param_dtype, Category.PARAM, Device.GPU, source,
                  phase) for phase in phases]


def zero3_module_grads(layout: ParamLayout, zero: ZeroConfig, *, role: str,
                       in_flight: int | None = None) -> list[Term]:
    """ZeRO-3: full gradients of the module whose backward just ran, before the hook copies them into the
    bucket (``__add_grad_to_ipg_bucket`` stage3.py:1621-1644). DeepSpeed's estimator counts the same
    2 B × largest layer (its ``largest_layer_memory = 4 × LL`` is these plus the gathered weights).
    ``in_flight``: the trainable elements of the module group being differentiated (a norm's or a value
    head's gradients are tiny), which caps the term.

    Assumes: with frozen tensors (LoRA) only trainable tensors get gradients: the largest trainable tensor.
    Checked by: tests/memory/test_vs_deepspeed_estimator.py::test_zero3_gpu_agreement;
    validation/deepspeed_cpu/qwen2-small-rm-zero3-w2.json (backward at the value head, to the byte)
    """
    if zero.stage != ZeroStage.ZERO_3 or not layout.trainable_params:
        return []
    if layout.frozen_params and layout.per_tensor:
        numel = layout.largest_tensor
    else:
        numel = min(layout.largest_layer_params, layout.trainable_params)
    if in_flight is not None:
        numel = min(numel, in_flight)
    return [ds_term(f"{role}.deepspeed.module_grads", numel, zero.param_dtype, Category.GRAD, Device.GPU,
                  ds_source(Z3, "param.grad before __add_grad_to_ipg_bucket :1621-1644"), Phase.BACKWARD)]


def hpz_secondary_params(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """ZeRO++ hpZ (``zero_hpz_partition_size`` > 1): a secondary copy of every weight partitioned over ``zpg`` ranks,
    ``aligned(t) / zpg`` elements per tensor (``_partition_param_sec`` partition_parameters.py:1909-1916),
    kept from the first gather to the end of the step (``invalidate_secondary_tensor`` stage3.py:755-759).

    Assumes: charged as persistent. Checked by: tests/memory/test_model_states.py::test_zpg_adds_secondary_copy
    """
    z = zero.hpz_degree
    if z <= 1:
        return []
    n = zero.dp_degree
    numel = sum(stage3_partition_numel(numel, n) * n // z * count for numel, count in layout.tensor_histogram)
    device = Device.CPU if zero.offload_param else Device.GPU
    return [ds_term(f"{role}.deepspeed.hpz_secondary_params", numel, zero.param_dtype, Category.PARAM, device,
                  ds_source("runtime/zero/partition_parameters.py", "ds_secondary_tensor :1909-1916"))]


def offload_gpu_buffers(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """GPU-side buffers of stage 1/2 optimizer offload: a staging buffer of the largest tensor in lp
    (``temp_grad_buffer_for_gpu_offload`` :659-661) and the fp32 cast of one tensor's gradient before it
    is copied to host (``async_inplace_copy_grad_to_fp32_buffer_from_gpu`` :1900).

    Assumes: counts-only layouts know no tensor sizes (0).
    Checked by: tests/memory/test_model_states.py::test_adam_offload_zero2_host_and_gpu
    """
    if not zero.offload_optimizer or zero.stage not in (ZeroStage.ZERO_1, ZeroStage.ZERO_2):
        return []
    largest = layout.largest_tensor
    return [ds_term(f"{role}.deepspeed.offload_grad_staging", largest, zero.param_dtype, Category.GRAD, Device.GPU,
                  ds_source(Z12, "temp_grad_buffer_for_gpu_offload :659-661")),
            ds_term(f"{role}.deepspeed.offload_grad_upcast", largest, MASTER_DTYPE, Category.GRAD, Device.GPU,
                  ds_source(Z12, "src_tensor.to(fp32) :1900"), Phase.BACKWARD)]


def compact_grad_upcast(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """Stage 1/2 with grad_accum ≠ lp: each reduced slice is cast to grad_accum before it is added to the
    compact partition (``_add_to_grad_partition_buffer``: ``output.add_(source.to(output.dtype))`` :1324-1326).

        numel = min(largest tensor, ps)   (one rank slice of one tensor at a time)

    Source: the line above; probe: stage 2, fp32 gradient accumulation, 2 ranks: +1,049,240 B at the backward
    peak for a 262,144-element embedding slice (4 B each). Assumes: counts-only layouts know no tensor (0).
    Checked by: tests/memory/test_model_states.py::test_grad_accum_dtype_fp32
    """
    if (zero.stage not in (ZeroStage.ZERO_1, ZeroStage.ZERO_2) or zero.uses_bf16_optimizer
            or zero.grad_accum_dtype == zero.param_dtype or not layout.trainable_params):
        return []
    numel = min(layout.largest_tensor, max(stage12_partition_numels(layout, zero.dp_degree)))
    return [ds_term(f"{role}.deepspeed.grad_upcast", numel, zero.grad_accum_dtype, Category.GRAD, Device.GPU,
                  ds_source(Z12, "source.to(output.dtype) :1324-1326"), Phase.BACKWARD)]
