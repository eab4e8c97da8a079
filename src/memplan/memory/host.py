"""Host RAM of one training or inference process (rank), and per node.

Three kinds of host memory: DeepSpeed's offload buffers (mostly pinned, i.e. page-locked: they cannot
be swapped and count against ``ulimit -l``), the model as it is loaded, and the process itself. The
offloaded fp32 master weights and Adam moments are produced by ``model_states.fp32_master`` and
``adam_moments`` with ``device=cpu``; this module adds the offload buffers around them.
"""

from __future__ import annotations

from collections.abc import Iterable

from memplan.dtypes import DType, bytes_for
from memplan.jobs.options import ZeroStage
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.memory.zero import (
    ParamLayout, ZeroConfig, ds_source, grads_in_partition_numel, stage3_trainable_partition_numel,
    stage12_partition_numels,
)
from memplan.sources import Source, measurement

Z12 = "runtime/zero/stage_1_and_2.py"
Z3 = "runtime/zero/stage3.py"
#: Gradients copied to host for the CPU optimizer are fp32 (``master_weights_and_grads_dtype``).
HOST_GRAD_DTYPE = DType.FP32

#: Resident memory of one Python process after ``import torch, deepspeed, transformers, peft`` (CPU
#: build, no CUDA context): 445,044 kB VmRSS, observed on this project's development machine with
#: torch 2.13, deepspeed 0.19.8, transformers 5.24. A lower bound for a GPU rank (CUDA libraries, NCCL,
#: Ray, the dataloader add to it); awaits a record under validation/measured/ from a GPU host.
PROCESS_RUNTIME_BASELINE_BYTES = 445_044 * 1024


def offloaded_optimizer_buffers(layout: ParamLayout, zero: ZeroConfig, *, role: str) -> list[Term]:
    """Host buffers DeepSpeed adds with ``offload_optimizer: cpu`` (``--adam_offload``), per rank.

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
    if zero.gradient_accumulation_steps > 1 and zero.grad_accum_dtype == lp:
        terms.append(_cpu(f"{path}.accumulated_grads", grads_in_partition_numel(layout, zero.dp_degree), lp,
                          Category.GRAD,
                          ds_source(Z12, f"accumulated_grads_in_cpu, whole tensors, {pinned} :1822-1826")))
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


def process_runtime(*, role: str) -> Term:
    """Resident memory of one process before any model: interpreter, torch, DeepSpeed, transformers.

    Source: PROCESS_RUNTIME_BASELINE_BYTES (a local observation, lower bound; awaits a measured record).
    Checked by: tests/memory/test_model_states.py::test_host_model_loading
    """
    return Term(path=f"{role}.runtime.process", bytes=PROCESS_RUNTIME_BASELINE_BYTES, category=Category.OVERHEAD,
                device=Device.CPU, source=measurement("memory/host.py PROCESS_RUNTIME_BASELINE_BYTES",
                                                      "VmRSS after imports, CPU build; no record yet"))


def host_terms(terms: Iterable[Term]) -> list[Term]:
    """The host (CPU) terms among one rank's terms."""
    return [t for t in terms if t.device == Device.CPU]


def per_node(rank_terms: Iterable[Term], zero: ZeroConfig) -> list[Term]:
    """Host terms of one rank multiplied by the engine's ranks on a node (identical ranks)."""
    return [Term(path=t.path, bytes=t.bytes * zero.ranks_per_node, category=t.category, device=t.device,
                 source=t.source, phase=t.phase) for t in host_terms(rank_terms)]


def _cpu(path: str, numel: int, dtype: DType, category: Category, source: Source) -> Term:
    return Term(path=path, bytes=bytes_for(numel, dtype), category=category, device=Device.CPU, source=source)
