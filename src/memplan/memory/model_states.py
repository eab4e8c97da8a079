"""Model states (weights, gradients, optimizer state) and DeepSpeed's own buffers, per rank.

Every buffer below was read from DeepSpeed 0.19.8's source; each function cites where it is
allocated. Which optimizer wrapper runs is decided in ``engine.py`` ``_do_optimizer_sanity_check``
(:2295-2323) and ``_configure_optimizer`` (:2328-2366):

- stage 0, bf16/fp16: ``FP16_Optimizer`` (runtime/fp16/fused_optimizer.py) — flat lp params, flat fp32
  master, autograd lp gradients, Adam state on the fp32 flat; stage 0, fp32: the bare FusedAdam;
- stage 1 + bf16 + fp32 accumulation without offload: ``BF16_Optimizer`` (runtime/bf16_optimizer.py);
- stage 1/2 otherwise: ``DeepSpeedZeroOptimizer`` (runtime/zero/stage_1_and_2.py);
- stage 3: ``DeepSpeedZeroOptimizer_Stage3`` (runtime/zero/stage3.py); eval engines at stage 3:
  ``DeepSpeedZeRoOffload`` (runtime/zero/parameter_offload.py), no optimizer.

Symbols: ``T`` trainable elements, ``F`` frozen elements, ``N`` dp degree, ``ps`` a rank's stage 1/2
partition (``flat/N``), ``p3`` a rank's ZeRO-3 partition (``Σ ceil(t/N)``), ``lp`` the model dtype.
Paths: ``{role}.params|grads|optimizer.*`` are model states; ``{role}.deepspeed.*`` DeepSpeed's
buffers; ``{role}.offload.*`` host-side offload buffers (memory/host.py). Persistent terms have
``phase=None``; transients carry the phase they peak in.

Measured with real DeepSpeed 0.19.8 on its CPU accelerator (scripts/probe_deepspeed_buffers.py probe:
2 ranks, gloo, a 2,106,624-parameter Llama, bf16, reduce_bucket_size 5e6, OpenRLHF's two param groups,
MemTracker; "probe" below): resident bytes between steps equal memplan's persistent terms to within
700 B at stages 1-3 (e.g. ZeRO-3: 27,904,785 measured vs 27,904,128), and the ZeRO-2 backward peak is
33,173,784 vs 33,173,120 predicted.
"""

from __future__ import annotations

from memplan.dtypes import DType, bytes_for
from memplan.jobs.options import ZeroStage
from memplan.memory import host
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.memory.zero import (
    NON_ZERO_ALLREDUCE_BUCKET_SIZE, ParamLayout, ZeroConfig, ds_source, flat_group_numel, grads_in_partition_numel,
    largest_sub_group_numel, persistent_numel, stage3_frozen_partition_numel, stage3_partition_numel,
    stage3_trainable_partition_numel, stage12_partition_numels,
)
from memplan.model.params import ModuleKind, ParamModule
from memplan.sources import Source, code

Z12 = "runtime/zero/stage_1_and_2.py"
Z3 = "runtime/zero/stage3.py"
FP16_OPT = "runtime/fp16/fused_optimizer.py"
BF16_OPT = "runtime/bf16_optimizer.py"
COORD = "runtime/zero/partitioned_param_coordinator.py"

#: Adam keeps two moments per element (exp_avg, exp_avg_sq): FusedAdam ops/adam/fused_adam.py:155-157,
#: DeepSpeedCPUAdam ops/adam/cpu_adam.py:161-164 (fp32 by default, ``fp32_optimizer_states=True``).
ADAM_MOMENT_DTYPE = DType.FP32
#: Master weights and their step-time gradients are fp32 (``master_weights_and_grads_dtype`` default).
MASTER_DTYPE = DType.FP32
#: At the turn from forward to backward, ZeRO-3 keeps the layers whose reuse (in backward) lies within
#: ``max_reuse_distance`` elements of trace; with forward and backward visiting each layer once, that
#: is the last ``max_reuse_distance / 2`` elements (see ``zero3_gathered_params``).
FORWARD_BACKWARD_TRACE_VISITS = 2
#: With ``overlap_comm`` stage 1/2 double-buffer the reduce bucket (``buf_0``, ``buf_1``, stage_1_and_2.py:3271-3277).
OVERLAP_COMM_BUCKETS = 2


def _term(path: str, numel: int, dtype: DType, category: Category, device: Device, source: Source,
          phase: Phase | None = None) -> Term:
    return Term(path=path, bytes=bytes_for(numel, dtype), category=category, device=device, source=source,
                phase=phase)


def _optimizer_numel(layout: ParamLayout, zero: ZeroConfig) -> int:
    """Elements of fp32 master / each Adam moment on this rank."""
    if zero.stage == ZeroStage.ZERO_0:
        return layout.trainable_params
    if zero.stage == ZeroStage.ZERO_3:
        return stage3_trainable_partition_numel(layout, zero.dp_degree)
    return sum(stage12_partition_numels(layout, zero.dp_degree))


def lp_params(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """Model weights in the model dtype held by one rank.

        stage 0:    T + F                         (FP16_Optimizer flat, fused_optimizer.py:94)
        stage 1/2:  Σ_groups ceil(T_g/2N)·2N + F  (flat buffers, stage_1_and_2.py:441-446, 504-510)
        stage 3:    Σ_t ceil(t/N)  (+ whole persistent tensors, numel <= threshold)

    Source: the lines above; ZeRO-3 partitions partition_parameters.py:1816-1836 (``ds_tensor``,
    GPU, or pinned host memory with ``offload_param``), persistence parameter_offload.py:317-335.
    Assumes: frozen params at stage 0-2 stay in the model (not in any flat buffer); with offload_param
    the partitions of persistent tensors stay on the GPU (partition_parameters.py:1829-1830).
    Checked by: tests/memory/test_model_states.py::test_llama2_7b_zero2_by_hand, ::test_llama2_7b_zero3_by_hand
    """
    lp, path = zero.param_dtype, f"{role}.params"
    if zero.stage == ZeroStage.ZERO_0:
        return [_term(path, layout.num_params, lp, Category.PARAM, Device.GPU,
                      ds_source(FP16_OPT, "fp16_groups_flat :94 (views of the module weights)"))]
    if zero.stage != ZeroStage.ZERO_3:
        flat = sum(flat_group_numel(sum(g), zero.dp_degree) for g in layout.trainable_groups)
        return [_term(path, flat + layout.frozen_params, lp, Category.PARAM, Device.GPU,
                      ds_source(Z12, "bit16_groups_flat padded to 2·dp :441-446; frozen params unflattened"))]
    n = zero.dp_degree
    persistent = persistent_numel(layout, zero.param_persistence_threshold)
    persist_parts = sum(stage3_partition_numel(t, n) for t in layout.all_tensors()
                        if layout.per_tensor and t <= zero.param_persistence_threshold)
    parts = stage3_trainable_partition_numel(layout, n) + stage3_frozen_partition_numel(layout, n)
    terms = [_term(f"{path}.persistent", persistent + persist_parts, lp, Category.PARAM, Device.GPU,
                   ds_source("runtime/zero/parameter_offload.py", "ds_persist when numel <= threshold :325"))]
    device = Device.CPU if zero.offload_param else Device.GPU
    where = ", pinned host" if zero.offload_param else ""
    terms.append(_term(f"{path}.partition", parts - persist_parts, lp, Category.PARAM, device,
                       ds_source("runtime/zero/partition_parameters.py", f"ds_tensor ceil(numel/N) :1816-1836{where}")))
    return terms


def lp_grads(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """Gradients held between backward and the optimizer step (persistent: with gradient accumulation
    they live across the micro-batches' forwards).

        stage 0/1:  T in lp (autograd ``param.grad``)  [+ BF16_Optimizer: flat fp32 T, bf16_optimizer.py:191]
        stage 1, grad_accum ≠ lp (ZeRO optimizer): T in grad_accum (``param.grad_accum`` :1234-1240)
        stage 2:    whole tensors overlapping the rank's partition, lp (``grads_in_partition`` :2184-2194);
                    none on the GPU with offload (copied to host per parameter, :1888-1912)
        stage 1/2, grad_accum ≠ lp: + a ps-sized partition in grad_accum on the GPU, offload or not
                    (``_build_compact_grad_partition_buffer`` :1259-1301)
        stage 3:    p3 in grad_accum (``grad_partitions_flat_buffer`` :791-795; pinned host with offload)

    Source: the lines above. grad_accum defaults to the model dtype (engine.py:1806-1807), so ZeRO-3
    keeps bf16 gradient partitions unless ``--grad_accum_dtype fp32``.
    Assumes: as resident (every phase). Estimates of a run place them in time instead where
    memory/grad_timeline.py models the engine (``trained_model_states(placed_gradients=...)``): growing
    through backward, then the step's ``grads_in_partition`` (stage 1/2) or T (stage 0).
    Probe: after backward the ZeRO-2 worst rank holds 2,106,880 B (= this formula), ZeRO-3 a bf16
    partition, and ``--grad_accum_dtype fp32`` at ZeRO-2 a 4,213,248 B fp32 partition (both exact).
    Checked by: tests/memory/test_model_states.py::test_zero_paper_figure_1, ::test_grad_accum_dtype_fp32
    """
    lp, acc, t, path = zero.param_dtype, zero.grad_accum_dtype, layout.trainable_params, f"{role}.grads"
    if zero.stage == ZeroStage.ZERO_3:
        device = Device.CPU if zero.offload_optimizer else Device.GPU
        return [_term(path, stage3_trainable_partition_numel(layout, zero.dp_degree), acc, Category.GRAD, device,
                      ds_source(Z3, "grad_partitions_flat_buffer in gradient_accumulation_dtype :791-795"))]
    autograd = ds_source("runtime/engine.py", "autograd param.grad, reduced at the boundary")
    if zero.stage == ZeroStage.ZERO_0 or zero.uses_bf16_optimizer:
        terms = [_term(path, t, lp, Category.GRAD, Device.GPU, autograd)]
        if zero.uses_bf16_optimizer:
            flat = sum(flat_group_numel(sum(g), zero.dp_degree) for g in layout.trainable_groups)
            terms.append(_term(f"{path}.fp32_accum", flat, acc, Category.GRAD, Device.GPU,
                               ds_source(BF16_OPT, "fp32_groups_gradients_flat :191")))
        return terms
    compact = acc != lp
    terms = []
    if zero.stage == ZeroStage.ZERO_1:
        terms.append(_term(f"{path}.accum", t, acc, Category.GRAD, Device.GPU,
                           ds_source(Z12, "param.grad_accum :1234-1240")) if compact
                     else _term(path, t, lp, Category.GRAD, Device.GPU, autograd))
    elif not compact:
        terms += grads_in_partition(layout, zero, role=role)
    if compact:
        terms.append(_term(f"{path}.partition", sum(stage12_partition_numels(layout, zero.dp_degree)), acc,
                           Category.GRAD, Device.GPU, ds_source(Z12, "compact grad partition :1259-1301")))
    return terms


def grads_in_partition(layout: ParamLayout, zero: ZeroConfig, *, role: str, phase: Phase | None = None) -> list[Term]:
    """Stage 1/2 ``grads_in_partition``: the whole of every tensor overlapping the rank's partition, lp
    (``copy_grads_in_partition`` :2184-2194); none on the GPU with optimizer offload (each gradient is
    copied to host, :1888-1912).

    Source: the lines above. Checked by: tests/memory/test_model_states.py::test_zero_paper_figure_1
    """
    if zero.offload_optimizer:
        return []
    return [_term(f"{role}.grads.partition", grads_in_partition_numel(layout, zero.dp_degree), zero.param_dtype,
                  Category.GRAD, Device.GPU, ds_source(Z12, "grads_in_partition, whole overlapping tensors :2184-2194"),
                  phase)]


def fp32_master(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """fp32 master weights: ``T`` at stage 0, the rank's partition at stage ≥ 1.

        stage 0:   T   (fp32_groups_flat, fused_optimizer.py:100); none when the model is fp32
        stage 1/2: Σ ps (single_partition_of_fp32_groups :560-577, pinned host with offload)
        stage 3:   p3  (fp32_partitioned_groups_flat :1156-1172; pageable host with offload; an alias of
                   the partition, no copy, for an fp32 model without offload :1163-1167)

    Source: the lines above. Checked by: tests/memory/test_model_states.py::test_zero_paper_figure_1
    """
    numel, offload = _optimizer_numel(layout, zero), zero.offload_optimizer
    fp32_model = zero.param_dtype == DType.FP32
    if zero.stage == ZeroStage.ZERO_0 and fp32_model or zero.stage == ZeroStage.ZERO_3 and fp32_model and not offload:
        return []
    source = {ZeroStage.ZERO_0: ds_source(FP16_OPT, "fp32_groups_flat :100"),
              ZeroStage.ZERO_3: ds_source(Z3, "fp32_partitioned_groups_flat :1156-1172 (host: pageable)")}.get(
        zero.stage, ds_source(Z12, "single_partition_of_fp32_groups :560-577"
                              + (" pinned" if offload and zero.pin_memory else "")))
    device = Device.CPU if offload else Device.GPU
    return [_term(f"{role}.optimizer.master_params", numel, MASTER_DTYPE, Category.OPTIMIZER, device, source)]


def adam_moments(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """Adam's ``exp_avg`` and ``exp_avg_sq``, each the size of the master partition, fp32.

        bytes = 2 × 4 × (T | Σ ps | p3)

    Source: FusedAdam deepspeed/ops/adam/fused_adam.py:155-157 (GPU); DeepSpeedCPUAdam
    ops/adam/cpu_adam.py:161-164 (host, pageable ``zeros_like``), created at the first step.
    Assumes: OpenRLHF's AdamW (``create_optimizer``: FusedAdam, or DeepSpeedCPUAdam with --adam_offload).
    Checked by: tests/memory/test_model_states.py::test_zero_paper_figure_1
    """
    numel = _optimizer_numel(layout, zero)
    device = Device.CPU if zero.offload_optimizer else Device.GPU
    source = ds_source("ops/adam/cpu_adam.py" if zero.offload_optimizer else "ops/adam/fused_adam.py",
                       "state exp_avg/exp_avg_sq zeros_like(fp32 param)")
    return [_term(f"{role}.optimizer.{name}", numel, ADAM_MOMENT_DTYPE, Category.OPTIMIZER, device, source)
            for name in ("exp_avg", "exp_avg_sq")]


def fp32_grad_partition(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """fp32 gradients the optimizer steps on, and the flat copy they are cast from (GPU, no offload).

        stage 0:   all groups' fp32 flats T (:286-291)
        stage 1/2: per group, in turn: flatten(averaged_gradients) in lp, then .to(fp32) (:3117-3118);
                   nothing when the gradients already sit in an fp32 compact partition (``.to`` is a no-op)
        stage 3:   per sub-group: flatten(...) in grad_accum, then .to(fp32) (:2686-2687)
        BF16_Optimizer: none (steps on views of its fp32 gradient buffer)
    With offload the fp32 gradients are a persistent pinned host buffer (memory/host.py).

    Source: the lines above (fused_optimizer.py, stage_1_and_2.py, stage3.py).
    Assumes: DeepSpeed's ZeRO-2 estimator counts these 4 B/param as resident (``2P + 18P/N``); here they
    exist only in the step, and the lp flat copy (2 B/param of the partition) is added. FusedAdam (GPU)
    steps in place; the probe's torch AdamW (CPU) adds sqrt/div temporaries of 8 B per element on top
    (measured step transient 12,632,072 B = 4·ps + 8·ps at ZeRO-1/2), which are not charged here. The
    fp64 per-tensor norm copies of ``get_grad_norm_direct`` (:2684) come before these and are smaller.
    Checked by: tests/memory/test_vs_deepspeed_estimator.py::test_zero2_gpu_documented_difference
    """
    lp, acc, step, path = zero.param_dtype, zero.grad_accum_dtype, Phase.OPTIMIZER_STEP, f"{role}.optimizer"
    if zero.offload_optimizer or zero.uses_bf16_optimizer or not layout.trainable_params:
        return []
    if zero.stage == ZeroStage.ZERO_0:
        if lp == DType.FP32:
            return []
        # One fp32 copy only: real DeepSpeed 0.19.8 on the CPU accelerator holds master + m + v + one fp32
        # gradient flat at the step, no second per-tensor copy (validation/deepspeed_cpu/llama-small-zero0-w1.json:
        # optimizer-step peak 932.6 MiB = 87 lp params + 87 lp grads + 522 states + 174 fp32 grads + 62.5 logits).
        return [_term(f"{path}.fp32_grads", layout.trainable_params, MASTER_DTYPE, Category.OPTIMIZER, Device.GPU,
                      ds_source(FP16_OPT, "grads_groups_flat :286-291"), step)]
    if zero.stage == ZeroStage.ZERO_3:
        largest, flat_dtype = largest_sub_group_numel(layout, zero.dp_degree, zero.sub_group_size), acc
        source = ds_source(Z3, "_prepare_fp32_grad_for_sub_group :2686-2687")
    else:
        if acc != lp:
            return []
        largest, flat_dtype = max(stage12_partition_numels(layout, zero.dp_degree)), lp
        source = ds_source(Z12, "step: flatten then .to(fp32) :3117-3118")
    terms = [_term(f"{path}.fp32_grads", largest, MASTER_DTYPE, Category.OPTIMIZER, Device.GPU, source, step)]
    if flat_dtype != MASTER_DTYPE:
        terms.append(_term(f"{path}.grad_flat_copy", largest, flat_dtype, Category.OPTIMIZER, Device.GPU, source, step))
    return terms


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
        return [_term(path, zero.reduce_bucket_size, zero.param_dtype, Category.GRAD, Device.GPU,
                      ds_source(Z3, "ipg bucket.buffer torch.empty(reduce_bucket_size) :780-784"))]
    dtype = zero.grad_accum_dtype if zero.stage == ZeroStage.ZERO_1 else zero.param_dtype
    count = OVERLAP_COMM_BUCKETS if zero.overlap_comm else 1
    return [_term(path, count * zero.reduce_bucket_size, dtype, Category.GRAD, Device.GPU,
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
    return [_term(f"{role}.deepspeed.reduce_flat_copy", largest_flush if numel is None else numel, zero.param_dtype,
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
    Checked by: tests/memory/test_model_states.py::test_zero3_gathered_params_limits
    """
    if zero.stage != ZeroStage.ZERO_3:
        return []
    gatherable = layout.num_params - persistent_numel(layout, zero.param_persistence_threshold)
    retained = min(gatherable, zero.max_reuse_distance // FORWARD_BACKWARD_TRACE_VISITS) if training else 0
    prefetch = min(zero.prefetch_bucket_size, max(0, zero.max_live_parameters - retained))
    numel = min(gatherable, retained + layout.largest_layer_params + prefetch)
    source = ds_source(COORD, "fetch + prefetch :420-490, release within max_reuse_distance :634-664")
    return [_term(f"{role}.deepspeed.gathered_params", numel, zero.param_dtype, Category.PARAM, Device.GPU, source,
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
    return [_term(f"{role}.deepspeed.module_grads", numel, zero.param_dtype, Category.GRAD, Device.GPU,
                  ds_source(Z3, "param.grad before __add_grad_to_ipg_bucket :1621-1644"), Phase.BACKWARD)]


def hpz_secondary_params(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """ZeRO++ hpZ (``--zpg`` > 1): a secondary copy of every weight partitioned over ``zpg`` ranks,
    ``aligned(t) / zpg`` elements per tensor (``_partition_param_sec`` partition_parameters.py:1909-1916),
    kept from the first gather to the end of the step (``invalidate_secondary_tensor`` stage3.py:755-759).

    Assumes: charged as persistent. Checked by: tests/memory/test_model_states.py::test_zpg_adds_secondary_copy
    """
    z = zero.hpz_degree
    if z <= 1:
        return []
    n = zero.dp_degree
    numel = sum(stage3_partition_numel(t, n) * n // z for t in layout.all_tensors())
    device = Device.CPU if zero.offload_param else Device.GPU
    return [_term(f"{role}.deepspeed.hpz_secondary_params", numel, zero.param_dtype, Category.PARAM, device,
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
    return [_term(f"{role}.deepspeed.offload_grad_staging", largest, zero.param_dtype, Category.GRAD, Device.GPU,
                  ds_source(Z12, "temp_grad_buffer_for_gpu_offload :659-661")),
            _term(f"{role}.deepspeed.offload_grad_upcast", largest, MASTER_DTYPE, Category.GRAD, Device.GPU,
                  ds_source(Z12, "src_tensor.to(fp32) :1900"), Phase.BACKWARD)]


def compact_grad_upcast(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """Stage 1/2 with grad_accum ≠ lp: each reduced slice is cast to grad_accum before it is added to the
    compact partition (``_add_to_grad_partition_buffer``: ``output.add_(source.to(output.dtype))`` :1324-1326).

        numel = min(largest tensor, ps)   (one rank slice of one tensor at a time)

    Source: the line above; probe: stage 2, --grad_accum_dtype fp32, 2 ranks: +1,049,240 B at the backward
    peak for a 262,144-element embedding slice (4 B each). Assumes: counts-only layouts know no tensor (0).
    Checked by: tests/memory/test_model_states.py::test_grad_accum_dtype_fp32
    """
    if (zero.stage not in (ZeroStage.ZERO_1, ZeroStage.ZERO_2) or zero.uses_bf16_optimizer
            or zero.grad_accum_dtype == zero.param_dtype or not layout.trainable_params):
        return []
    numel = min(layout.largest_tensor, max(stage12_partition_numels(layout, zero.dp_degree)))
    return [_term(f"{role}.deepspeed.grad_upcast", numel, zero.grad_accum_dtype, Category.GRAD, Device.GPU,
                  ds_source(Z12, "source.to(output.dtype) :1324-1326"), Phase.BACKWARD)]


def trained_model_states(layout: ParamLayout, zero: ZeroConfig, *, role: str,
                         forward_phases: tuple[Phase, ...] = (Phase.FORWARD,),
                         placed_gradients: list[Term] | None = None) -> list[Term]:
    """Everything a trained model's DeepSpeed engine holds on one rank: GPU and host terms.

    Model states (params, grads, fp32 master, Adam moments), step-time fp32 gradients, DeepSpeed's
    buffers (reduce bucket, flat copies, ZeRO-3 gathered weights and module gradients, hpZ), and with
    ``offload_optimizer`` the host buffers of memory/host.py. ``forward_phases`` are the phases in which
    the model runs forward (e.g. add ``Phase.MAKE_EXPERIENCE`` for a PPO actor).

    ``placed_gradients``: when the caller places the gradient buffers in time (memory/grad_timeline.py:
    ``outside_backward`` here, ``backward_peak`` for the backward's moments), these replace the gradients,
    reduce bucket, flat copy and ZeRO-3 module gradients, which are otherwise charged as resident
    (gradients) and through backward (the rest).

    Checked by: tests/memory/test_model_states.py, tests/properties/test_model_state_invariants.py
    """
    if placed_gradients is None:
        grads = [*lp_grads(layout, zero, role=role), *reduce_buckets(layout, zero, role=role),
                 *reduce_flat_copy(layout, zero, role=role), *zero3_module_grads(layout, zero, role=role)]
    else:
        grads = placed_gradients
    terms = [*lp_params(layout, zero, role=role), *grads,
             *fp32_master(layout, zero, role=role), *adam_moments(layout, zero, role=role),
             *fp32_grad_partition(layout, zero, role=role), *compact_grad_upcast(layout, zero, role=role),
             *zero3_gathered_params(layout, zero, role=role, phases=(*forward_phases, Phase.BACKWARD),
                                    training=True),
             *hpz_secondary_params(layout, zero, role=role),
             *offload_gpu_buffers(layout, zero, role=role)]
    return terms + host.offloaded_optimizer_buffers(layout, zero, role=role)


def frozen_model_states(layout: ParamLayout, zero: ZeroConfig, *, role: str,
                        forward_phases: tuple[Phase, ...] = (Phase.FORWARD,)) -> list[Term]:
    """A frozen model under OpenRLHF's eval config (reference, reward, KD teacher): weights only.

        stage 0: the whole model in lp on every GPU (a replica; ``--ref_offload`` has no effect)
        stage 3: partitions (pinned host with ``offload_param``) + persistent tensors + the weights gathered
                 for the running module and the prefetch (forward only, nothing retained)

    Source: ``eval_zero_config``; DeepSpeedZeRoOffload (engine.py:2715-2738), no optimizer, no buckets.
    Checked by: tests/memory/test_model_states.py::test_frozen_reference_models
    """
    frozen = ParamLayout(trainable_groups=(), frozen_tensors=layout.all_tensors(),
                         largest_layer_params=layout.largest_layer_params, per_tensor=layout.per_tensor)
    return [*lp_params(frozen, zero, role=role), *hpz_secondary_params(frozen, zero, role=role),
            *zero3_gathered_params(frozen, zero, role=role, phases=forward_phases, training=False)]


# --- QLoRA: bitsandbytes NF4 base weights --------------------------------------------------------
BNB = "bitsandbytes-foundation/bitsandbytes:bitsandbytes/functional.py@01327aa0"
#: Elements per first-level absmax block (``quantize_4bit`` ``blocksize=64``; OpenRLHF uses the default).
NF4_BLOCKSIZE = 64
#: Double quantisation (``bnb_4bit_use_double_quant=True`` in OpenRLHF's Actor): the fp32 absmax are
#: quantised to uint8 in blocks of 256 (``quantize_blockwise(absmax, blocksize=256)``) with fp32 block maxima.
NF4_ABSMAX_BLOCKSIZE = 256
#: Per quantised tensor: one fp32 ``offset`` (absmax.mean()) and a 16-entry fp32 NF4 code table.
NF4_PER_TENSOR_FP32_ELEMENTS = 1 + 16
#: Quantised first-level absmax: one uint8 per block (double quantisation).
NF4_ABSMAX_DTYPE = DType.INT8


def nf4_base_weights(tree: ParamModule, *, role: str, value_head_params: int = 0) -> list[Term]:
    """Frozen QLoRA base under OpenRLHF ``--load_in_4bit``: NF4 for every ``nn.Linear`` weight but the LM head.

        packed   = ceil(n / 2) bytes                                    (two 4-bit codes per byte)
        absmax   = ceil(n / 64) bytes (uint8) + 4·ceil(ceil(n/64) / 256) + 4·17 bytes per tensor
        bf16     = embeddings, LM head, linear biases, routers, fused experts, value head
        fp32     = norms (OpenRLHF casts modules named "norm" to fp32 when load_in_4bit)

    Source: bitsandbytes functional.py ``quantize_4bit`` (absmax ``zeros(blocks, fp32)``, packed
    ``(n + 1) // 2`` uint8, double quant ``quantize_blockwise(absmax, blocksize=256)``); OpenRLHF
    openrlhf/models/actor.py@01b8a23 (``BitsAndBytesConfig(nf4, double_quant)``, norm→fp32,
    lm_head/embed_tokens→bf16). transformers skips the output embedding (``get_keys_to_not_convert``).
    Assumes: the shared 256-entry dynamic map of double quantisation is not charged (one per process);
    routers and 3-D fused experts are not ``nn.Linear`` in transformers v5 and stay bf16.
    Checked by: tests/memory/test_model_states.py::test_nf4_base_weights_by_hand
    """
    packed = constants = bf16 = fp32 = 0
    for module in tree.walk():
        for tensor in module.tensors:
            if tensor.buffer or tensor.tied:
                continue
            n = tensor.numel
            if module.kind == ModuleKind.NORM:
                fp32 += n
            elif module.kind == ModuleKind.LINEAR and tensor.name == "weight" and module.path != "lm_head":
                blocks = -(-n // NF4_BLOCKSIZE)
                packed += bytes_for(n, DType.NF4)
                second_level = -(-blocks // NF4_ABSMAX_BLOCKSIZE) + NF4_PER_TENSOR_FP32_ELEMENTS
                constants += bytes_for(blocks, NF4_ABSMAX_DTYPE) + bytes_for(second_level, DType.FP32)
            else:
                bf16 += n
    source = code(BNB, "quantize_4bit: packed (n+1)//2, absmax blocks of 64, double quant blocks of 256")
    keep = code("OpenRLHF/OpenRLHF:openrlhf/models/actor.py@01b8a23", "norm→fp32, lm_head/embed_tokens→bf16")
    return [Term(path=f"{role}.params.nf4_packed", bytes=packed, category=Category.PARAM, device=Device.GPU,
                 source=source),
            Term(path=f"{role}.params.nf4_constants", bytes=constants, category=Category.PARAM, device=Device.GPU,
                 source=source),
            _term(f"{role}.params.bf16", bf16 + value_head_params, DType.BF16, Category.PARAM, Device.GPU, keep),
            _term(f"{role}.params.fp32_norms", fp32, DType.FP32, Category.PARAM, Device.GPU, keep)]
