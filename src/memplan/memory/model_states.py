"""Model states (weights, gradients, optimizer state) per rank, and an engine's terms put together with
DeepSpeed's own buffers (memory/ds_buffers.py).

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
buffers (memory/ds_buffers.py); ``{role}.offload.*`` host-side offload buffers (memory/host.py). Persistent terms have
``phase=None``; transients carry the phase they peak in.

Measured with real DeepSpeed 0.19.8 on its CPU accelerator (scripts/probe_deepspeed_buffers.py probe:
2 ranks, gloo, a 2,106,624-parameter Llama, bf16, reduce_bucket_size 5e6, OpenRLHF's two param groups,
MemTracker; "probe" below): resident bytes between steps equal memplan's persistent terms to within
700 B at stages 1-3 (e.g. ZeRO-3: 27,904,785 measured vs 27,904,128), and the ZeRO-2 backward peak is
33,173,784 vs 33,173,120 predicted. Per-rank peaks of larger runs: validation/deepspeed_cpu (memplan validate).
"""

from __future__ import annotations

from memplan.dtypes import DType, bytes_for
from memplan.memory.sharding import ZeroStage
from memplan.memory import host
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.memory.ds_buffers import (
    Z3, Z12, compact_grad_upcast, hpz_secondary_params, offload_gpu_buffers, reduce_buckets, reduce_flat_copy,
    zero3_gathered_params, zero3_module_grads,
)
from memplan.memory.zero import (
    ParamLayout, ZeroConfig, ds_source, ds_term, flat_group_numel, grads_in_partition_numel,
    largest_sub_group_numel, persistent_numel, stage3_frozen_partition_numel, stage3_partition_numel,
    stage3_trainable_partition_numel, stage12_partition_numels,
)
from memplan.model.params import ModuleKind, ParamModule
from memplan.sources import code

FP16_OPT = "runtime/fp16/fused_optimizer.py"
BF16_OPT = "runtime/bf16_optimizer.py"

#: Adam keeps two moments per element (exp_avg, exp_avg_sq): FusedAdam ops/adam/fused_adam.py:155-157,
#: DeepSpeedCPUAdam ops/adam/cpu_adam.py:161-164 (fp32 by default, ``fp32_optimizer_states=True``).
ADAM_MOMENT_DTYPE = DType.FP32
#: Master weights and their step-time gradients are fp32 (``master_weights_and_grads_dtype`` default).
MASTER_DTYPE = DType.FP32


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
        return [ds_term(path, layout.num_params, lp, Category.PARAM, Device.GPU,
                      ds_source(FP16_OPT, "fp16_groups_flat :94 (views of the module weights)"))]
    if zero.stage != ZeroStage.ZERO_3:
        flat = sum(flat_group_numel(sum(g), zero.dp_degree) for g in layout.trainable_groups)
        return [ds_term(path, flat + layout.frozen_params, lp, Category.PARAM, Device.GPU,
                      ds_source(Z12, "bit16_groups_flat padded to 2·dp :441-446; frozen params unflattened"))]
    n = zero.dp_degree
    persistent = persistent_numel(layout, zero.param_persistence_threshold)
    persist_parts = sum(stage3_partition_numel(numel, n) * count for numel, count in layout.tensor_histogram
                        if layout.per_tensor and numel <= zero.param_persistence_threshold)
    parts = stage3_trainable_partition_numel(layout, n) + stage3_frozen_partition_numel(layout, n)
    terms = [ds_term(f"{path}.persistent", persistent + persist_parts, lp, Category.PARAM, Device.GPU,
                   ds_source("runtime/zero/parameter_offload.py", "ds_persist when numel <= threshold :325"))]
    device = Device.CPU if zero.offload_param else Device.GPU
    where = ", pinned host" if zero.offload_param else ""
    terms.append(ds_term(f"{path}.partition", parts - persist_parts, lp, Category.PARAM, device,
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
    keeps bf16 gradient partitions unless gradients accumulate in fp32.
    Assumes: as resident (every phase). Estimates of a run place them in time instead where
    memory/grad_timeline.py models the engine (``trained_model_states(placed_gradients=...)``): growing
    through backward, then the step's ``grads_in_partition`` (stage 1/2) or T (stage 0).
    Probe: after backward the ZeRO-2 worst rank holds 2,106,880 B (= this formula), ZeRO-3 a bf16
    partition, and fp32 gradient accumulation at ZeRO-2 a 4,213,248 B fp32 partition (both exact).
    Checked by: tests/memory/test_model_states.py::test_zero_paper_figure_1, ::test_grad_accum_dtype_fp32
    """
    lp, acc, t, path = zero.param_dtype, zero.grad_accum_dtype, layout.trainable_params, f"{role}.grads"
    if zero.stage == ZeroStage.ZERO_3:
        device = Device.CPU if zero.offload_optimizer else Device.GPU
        return [ds_term(path, stage3_trainable_partition_numel(layout, zero.dp_degree), acc, Category.GRAD, device,
                      ds_source(Z3, "grad_partitions_flat_buffer in gradient_accumulation_dtype :791-795"))]
    autograd = ds_source("runtime/engine.py", "autograd param.grad, reduced at the boundary")
    if zero.stage == ZeroStage.ZERO_0 or zero.uses_bf16_optimizer:
        terms = [ds_term(path, t, lp, Category.GRAD, Device.GPU, autograd)]
        if zero.uses_bf16_optimizer:
            flat = sum(flat_group_numel(sum(g), zero.dp_degree) for g in layout.trainable_groups)
            terms.append(ds_term(f"{path}.fp32_accum", flat, acc, Category.GRAD, Device.GPU,
                               ds_source(BF16_OPT, "fp32_groups_gradients_flat :191")))
        return terms
    compact = acc != lp
    terms = []
    if zero.stage == ZeroStage.ZERO_1:
        terms.append(ds_term(f"{path}.accum", t, acc, Category.GRAD, Device.GPU,
                           ds_source(Z12, "param.grad_accum :1234-1240")) if compact
                     else ds_term(path, t, lp, Category.GRAD, Device.GPU, autograd))
    elif not compact:
        terms += grads_in_partition(layout, zero, role=role)
    if compact:
        terms.append(ds_term(f"{path}.partition", sum(stage12_partition_numels(layout, zero.dp_degree)), acc,
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
    return [ds_term(f"{role}.grads.partition", grads_in_partition_numel(layout, zero.dp_degree), zero.param_dtype,
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
    return [ds_term(f"{role}.optimizer.master_params", numel, MASTER_DTYPE, Category.OPTIMIZER, device, source)]


def adam_moments(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """Adam's ``exp_avg`` and ``exp_avg_sq``, each the size of the master partition, fp32.

        bytes = 2 × 4 × (T | Σ ps | p3)

    Source: FusedAdam deepspeed/ops/adam/fused_adam.py:155-157 (GPU); DeepSpeedCPUAdam
    ops/adam/cpu_adam.py:161-164 (host, pageable ``zeros_like``), created at the first step.
    Assumes: OpenRLHF's AdamW (``create_optimizer``: FusedAdam, or DeepSpeedCPUAdam with the optimizer offloaded).
    Checked by: tests/memory/test_model_states.py::test_zero_paper_figure_1
    """
    numel = _optimizer_numel(layout, zero)
    device = Device.CPU if zero.offload_optimizer else Device.GPU
    source = ds_source("ops/adam/cpu_adam.py" if zero.offload_optimizer else "ops/adam/fused_adam.py",
                       "state exp_avg/exp_avg_sq zeros_like(fp32 param)")
    return [ds_term(f"{role}.optimizer.{name}", numel, ADAM_MOMENT_DTYPE, Category.OPTIMIZER, device, source)
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
        return [ds_term(f"{path}.fp32_grads", layout.trainable_params, MASTER_DTYPE, Category.OPTIMIZER, Device.GPU,
                      ds_source(FP16_OPT, "grads_groups_flat :286-291"), step)]
    if zero.stage == ZeroStage.ZERO_3:
        largest, flat_dtype = largest_sub_group_numel(layout, zero.dp_degree, zero.sub_group_size), acc
        source = ds_source(Z3, "_prepare_fp32_grad_for_sub_group :2686-2687")
    else:
        if acc != lp:
            return []
        largest, flat_dtype = max(stage12_partition_numels(layout, zero.dp_degree)), lp
        source = ds_source(Z12, "step: flatten then .to(fp32) :3117-3118")
    terms = [ds_term(f"{path}.fp32_grads", largest, MASTER_DTYPE, Category.OPTIMIZER, Device.GPU, source, step)]
    if flat_dtype != MASTER_DTYPE:
        terms.append(ds_term(f"{path}.grad_flat_copy", largest, flat_dtype, Category.OPTIMIZER, Device.GPU, source, step))
    return terms


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
    return terms + host.offloaded_optimizer_buffers(layout, zero, role=role) + host.pinned_overheads(layout, zero, role=role)


def frozen_model_states(layout: ParamLayout, zero: ZeroConfig, *, role: str,
                        forward_phases: tuple[Phase, ...] = (Phase.FORWARD,)) -> list[Term]:
    """A frozen model under OpenRLHF's eval config (reference, reward, KD teacher): weights only.

        stage 0: the whole model in lp on every GPU (a replica; parameter offload has no effect)
        stage 3: partitions (pinned host with ``offload_param``) + persistent tensors + the weights gathered
                 for the running module and the prefetch (forward only, nothing retained)

    Source: ``eval_zero_config``; DeepSpeedZeRoOffload (engine.py:2715-2738), no optimizer, no buckets.
    Checked by: tests/memory/test_model_states.py::test_frozen_reference_models
    """
    frozen = ParamLayout(trainable_groups=(), frozen_tensors=layout.all_tensors(),
                         largest_layer_params=layout.largest_layer_params, per_tensor=layout.per_tensor)
    return [*lp_params(frozen, zero, role=role), *hpz_secondary_params(frozen, zero, role=role),
            *zero3_gathered_params(frozen, zero, role=role, phases=forward_phases, training=False),
            *host.pinned_overheads(frozen, zero, role=role)]


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
    """Frozen QLoRA base loaded in 4 bit (bitsandbytes): NF4 for every ``nn.Linear`` weight but the LM head.

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
            ds_term(f"{role}.params.bf16", bf16 + value_head_params, DType.BF16, Category.PARAM, Device.GPU, keep),
            ds_term(f"{role}.params.fp32_norms", fp32, DType.FP32, Category.PARAM, Device.GPU, keep)]
