"""SGLang rollout engines: KV pool sizing from ``mem_fraction_static``, start-up outcome, and the GPU and host
memory of one engine rank while generating, with weights only, and released (framework-neutral).

SGLang sizes its KV pool from *free* memory, not from the device total (vLLM's ``gpu_memory_utilization``):

    pre   = free memory after the distributed init (min over the world; other processes already subtracted)
    post  = free memory after the weights are loaded
    kv    = post − pre × (1 − f)          (f = mem_fraction_static; so weights + kv ≈ f × pre)
    tokens = kv // cell_bytes // page_size × page_size

and keeps ``(1 − f) × pre`` for what is allocated later: activations, CUDA graphs, attention metadata.
Weights and the KV pool are allocated inside torch_memory_saver regions tagged "weights" and "kv_cache" (CUDA
graphs under "cuda_graph"), which ``release_memory_occupation(tags)`` unmaps and ``resume_memory_occupation``
maps back; weights are not backed up unless the engine enables a weights CPU backup.

Paths below are in sgl-project/sglang at v0.5.12 (read from the PyPI wheel ``sglang-0.5.12``, under
``python/sglang/srt/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from memplan.dtypes import DType, bytes_for
from memplan.errors import ConfigError
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.memory.vllm import VllmConfig, rotary_cache_numel, weight_bytes_per_rank
from memplan.memory.vllm_budget import (
    CUSTOM_ALLREDUCE_BYTES, NCCL_TP2_COMMUNICATOR_BYTES, NCCL_TP_WIDE_COMMUNICATOR_BYTES, VLLM_CUDA_CONTEXT_BYTES,
    profile_peak_bytes,
)
from memplan.memory.vllm_sleep import EngineState
from memplan.model.spec import ModelSpec
from memplan.sources import Source, code, measurement
from memplan.units import GiB, MiB

SGLANG = "sgl-project/sglang"
DEFAULT_SGLANG_VERSION = "0.5.12"
#: SGLang's own reserve heuristic for what lies outside ``mem_fraction_static`` (MiB terms, server_args.py
#: ``_handle_gpu_memory_settings`` L1540-1574): 512 MiB of constant metadata, 2 MiB per decode CUDA-graph
#: batch size up to the largest, 8 MiB per piecewise CUDA-graph token size ("non-torch memory" of those
#: graphs). Its activation reserve is not used (:func:`activation_peak_bytes`).
METADATA_BYTES = 512 * MiB
GRAPH_BYTES_PER_DECODE_BS = 2 * MiB
GRAPH_BYTES_PER_PIECEWISE_SIZE = 8 * MiB
#: Bytes of the rotary cos/sin cache element on CUDA: kept in fp32 (layers/rotary_embedding/base.py L70-73).
ROTARY_CACHE_ELEMENT_BYTES = 4


def sglang_source(path: str, detail: str, version: str = DEFAULT_SGLANG_VERSION) -> Source:
    """A code citation into SGLang at ``version``."""
    return code(f"{SGLANG}:python/sglang/srt/{path}@v{version}", detail)


def default_chunked_prefill_size(gpu_memory_mib: int) -> int:
    """SGLang's default chunked-prefill size for a GPU of ``gpu_memory_mib`` (nvidia-smi ``memory.total``).

        < 20 GiB: 2048;  < 35: 2048;  < 60: 4096;  < 90: 8192;  < 160: 8192;  else 16384   (GiB = 1024 MiB)

    Source: server_args.py@v0.5.12 ``_handle_gpu_memory_settings`` L1426-1482; the capacity is the smallest
    ``nvidia-smi --query-gpu=memory.total`` value (utils/common.py ``get_nvgpu_memory_capacity``).
    Checked by: tests/memory/test_sglang.py::test_defaults_h100
    """
    for limit_gib, size in ((20, 2048), (35, 2048), (60, 4096), (90, 8192), (160, 8192)):
        if gpu_memory_mib < limit_gib * 1024:
            return size
    return 16384


def default_cuda_graph_max_bs(gpu_memory_mib: int, tensor_parallel_size: int) -> int:
    """SGLang's default largest decode CUDA-graph batch size.

        < 20 GiB: 8;  < 35: 24 (tp < 4) / 80;  < 60: 32 / 160;  < 160: 256 / 512;  else 512

    Source: server_args.py@v0.5.12 L1426-1482. Checked by: tests/memory/test_sglang.py::test_defaults_h100
    """
    small_tp = tensor_parallel_size < 4
    for limit_gib, small, large in ((20, 8, 8), (35, 24, 80), (60, 32, 160), (160, 256, 512)):
        if gpu_memory_mib < limit_gib * 1024:
            return small if small_tp else large
    return 512


def piecewise_capture_tokens(max_tokens: int) -> tuple[int, ...]:
    """Token sizes SGLang captures piecewise CUDA graphs for (``max_tokens`` = chunked-prefill size, non-MLA).

    Source: server_args.py@v0.5.12 ``_generate_piecewise_cuda_graph_tokens`` L1657-1675, L1514-1520.
    Checked by: tests/memory/test_sglang.py::test_defaults_h100
    """
    sizes = (list(range(4, 33, 4)) + list(range(48, 257, 16)) + list(range(288, 513, 32))
             + list(range(576, 1025, 64)) + list(range(1280, 4097, 256)) + list(range(4608, max_tokens + 1, 512)))
    return tuple(s for s in sizes if s <= max_tokens)


@dataclass(frozen=True, slots=True, kw_only=True)
class SglangConfig:
    """One resolved SGLang engine (every field explicit)."""

    tensor_parallel_size: int
    """GPUs per engine."""
    mem_fraction_static: float
    """Fraction of the *free* memory at start-up for weights + KV pool (0 < f < 1)."""
    context_len: int
    """Longest request (the model's context length unless overridden)."""
    chunked_prefill_size: int
    """Tokens per prefill chunk (bounds the activation peak)."""
    cuda_graph_max_bs: int
    """Largest decode batch captured as a CUDA graph."""
    disable_cuda_graph: bool = False
    """No decode CUDA graphs (piecewise prefill graphs are decided separately)."""
    piecewise_cuda_graph: bool = True
    """Piecewise CUDA graphs for prefill (on by default for plain CUDA language models without LoRA)."""
    page_size: int = 1
    """Tokens per KV page."""
    max_running_requests: int | None = None
    """Cap on concurrent requests (None: SGLang derives it from the pool)."""
    kv_cache_dtype: DType = DType.BF16
    """KV element type."""
    weight_dtype: DType = DType.BF16
    """Weight element type."""
    sglang_version: str = DEFAULT_SGLANG_VERSION
    """Only 0.5.12 has been read."""

    def __post_init__(self) -> None:
        checks = {
            "sglang.tensor_parallel_size": self.tensor_parallel_size >= 1,
            "sglang.mem_fraction_static": 0 < self.mem_fraction_static < 1,
            "sglang.context_len": self.context_len >= 1,
            "sglang.chunked_prefill_size": self.chunked_prefill_size >= 1,
            "sglang.cuda_graph_max_bs": self.cuda_graph_max_bs >= 1,
            "sglang.page_size": self.page_size >= 1,
            "sglang.version": self.sglang_version == DEFAULT_SGLANG_VERSION,
        }
        for location, ok in checks.items():
            if not ok:
                raise ConfigError(location, "out of range")


def sglang_config(*, tensor_parallel_size: int, mem_fraction_static: float, context_len: int,
                  gpu_memory_mib: int, disable_cuda_graph: bool = False,
                  max_running_requests: int | None = None) -> SglangConfig:
    """An engine with SGLang's GPU-size defaults for chunked prefill and CUDA-graph batch sizes.

    Source: :func:`default_chunked_prefill_size`, :func:`default_cuda_graph_max_bs`.
    Checked by: tests/memory/test_sglang.py::test_defaults_h100
    """
    return SglangConfig(tensor_parallel_size=tensor_parallel_size, mem_fraction_static=mem_fraction_static,
                        context_len=context_len, chunked_prefill_size=default_chunked_prefill_size(gpu_memory_mib),
                        cuda_graph_max_bs=default_cuda_graph_max_bs(gpu_memory_mib, tensor_parallel_size),
                        disable_cuda_graph=disable_cuda_graph, max_running_requests=max_running_requests)


def kv_cell_bytes(spec: ModelSpec, cfg: SglangConfig) -> int:
    """KV bytes per token on one rank (SGLang's ``cell_size``).

        MHA/GQA: max(1, kv_heads // tp) × (head_dim + v_head_dim) × L × dtype_bytes   (v_head_dim = head_dim)
        MLA:     (kv_lora_rank + qk_rope_head_dim) × L × dtype_bytes

    Source: model_executor/pool_configurator.py@v0.5.12 ``DefaultPoolConfigurator._compute_cell_size`` L125-180;
    configs/model_config.py ``get_num_kv_heads`` (``max(1, total // tp)``).
    Checked by: tests/memory/test_sglang.py::test_qwen25_7b_tp2_h100_by_hand
    """
    layers = spec.num_hidden_layers
    if spec.mla is not None:
        return bytes_for((spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim) * layers, cfg.kv_cache_dtype)
    heads = max(1, spec.num_key_value_heads // cfg.tensor_parallel_size)
    return bytes_for(heads * 2 * spec.head_dim * layers, cfg.kv_cache_dtype)


def weight_bytes(spec: ModelSpec, cfg: SglangConfig) -> int:
    """Weight bytes on one rank: vLLM's TP shard layout (SGLang's layers share it, vocab padded to 64) with
    the rotary cache in fp32 instead of the model dtype.

    Source: layers/vocab_parallel_embedding.py@v0.5.12 L45 (``DEFAULT_VOCAB_PADDING_SIZE = 64``);
    layers/rotary_embedding/base.py L70-98 (fp32 ``cos_sin_cache`` on CUDA); :func:`weight_bytes_per_rank`.
    Checked by: tests/memory/test_sglang.py::test_qwen25_7b_tp2_h100_by_hand
    """
    rotary = rotary_cache_numel(spec)
    return (weight_bytes_per_rank(spec, cfg.tensor_parallel_size, cfg.weight_dtype)
            - bytes_for(rotary, cfg.weight_dtype) + rotary * ROTARY_CACHE_ELEMENT_BYTES)


def communicator_bytes(cfg: SglangConfig) -> int:
    """NCCL communicator + custom all-reduce buffers of one rank (0 at tp = 1), allocated before ``pre``.

    Source: model_executor/model_runner.py@v0.5.12 ``init_torch_distributed`` L1186-1328 (``set_custom_all_reduce``,
    ``init_distributed_environment``, then ``pre_model_load_memory``); sizes: the vLLM records
    (memory/vllm_budget.py ``tp_communicator_bytes``), SGLang's distributed layer being vLLM's.
    Assumes: one node with NVLink; SGLang's custom all-reduce buffers equal vLLM 0.17's.
    """
    if cfg.tensor_parallel_size == 1:
        return 0
    nccl = NCCL_TP2_COMMUNICATOR_BYTES if cfg.tensor_parallel_size == 2 else NCCL_TP_WIDE_COMMUNICATOR_BYTES
    return nccl + CUSTOM_ALLREDUCE_BYTES


def pre_load_free_bytes(cfg: SglangConfig, total_gpu_bytes: int, *, other_process_bytes: int = 0) -> int:
    """Free memory SGLang reads before loading weights: total − other processes − its context − NCCL.

    Source: model_executor/model_runner.py@v0.5.12 L1299-1304 (``pre_model_load_memory``, min over the world),
    utils/common.py ``get_available_gpu_memory`` L529-653 (``mem_get_info`` free after ``empty_cache``, GiB).
    Assumes: the SGLang scheduler's CUDA context equals vLLM's measured worker context
    (``VLLM_CUDA_CONTEXT_BYTES``, record pr21489-gemma3-4b-b200-startup.toml).
    Checked by: tests/memory/test_sglang.py::test_qwen25_7b_tp2_h100_by_hand
    """
    return total_gpu_bytes - other_process_bytes - VLLM_CUDA_CONTEXT_BYTES - communicator_bytes(cfg)


def kv_budget_bytes(spec: ModelSpec, cfg: SglangConfig, pre_free_bytes: int) -> int:
    """Bytes SGLang gives the KV pool (may be ≤ 0: then it refuses to start).

        rest_gib = post_gib − pre_gib × (1 − f),   post = pre − weights;   bytes = int(rest_gib × 2^30)

    Source: model_executor/model_runner_kv_cache_mixin.py@v0.5.12 ``_profile_available_bytes`` L62-76.
    Assumes: loading allocates nothing on the GPU beyond the weights.
    Checked by: tests/memory/test_sglang.py::test_qwen25_7b_tp2_h100_by_hand
    """
    pre = pre_free_bytes / GiB
    post = (pre_free_bytes - weight_bytes(spec, cfg)) / GiB
    return int((post - pre * (1 - cfg.mem_fraction_static)) * GiB)


@dataclass(frozen=True, slots=True, kw_only=True)
class SglangCapacity:
    """What a KV budget buys on one rank."""

    max_total_num_tokens: int
    """Token slots in the pool (SGLang's ``max_total_num_tokens``)."""
    pool_bytes: int
    """Bytes of the K and V buffers: (tokens + page_size) × cell (one padded page)."""
    max_running_requests: int
    """Concurrent requests SGLang allows."""
    max_request_tokens: int
    """Longest request accepted: min(context_len − 1, tokens − 1) (longer ones are rejected, not an OOM)."""


def kv_capacity(spec: ModelSpec, cfg: SglangConfig, kv_budget: int) -> SglangCapacity:
    """Tokens, pool bytes and request limits for a KV budget.

        tokens = max(budget // cell // page × page, 0)
        requests = min(user cap, clamp(int(tokens / context_len × 512), 2048, 4096))   (user cap given)
                 = min(clamp(...), tokens // 2)                                         (no cap)

    Source: model_executor/pool_configurator.py@v0.5.12 ``calculate_pool_sizes`` L182-187;
    mem_cache/memory_pool.py L897-919 (``size + page_size`` rows per layer for K and V);
    model_runner_kv_cache_mixin.py ``_resolve_max_num_reqs`` L817-836; managers/tp_worker.py L304-307.
    Checked by: tests/memory/test_sglang.py::test_qwen25_7b_tp2_h100_by_hand
    """
    cell = kv_cell_bytes(spec, cfg)
    tokens = max(kv_budget // cell // cfg.page_size * cfg.page_size, 0)
    estimated = max(min(int(tokens / cfg.context_len * 512), 4096), 2048)
    if cfg.max_running_requests is not None:
        requests = min(cfg.max_running_requests, estimated)
    else:
        requests = min(estimated, tokens // 2)
    return SglangCapacity(max_total_num_tokens=tokens, pool_bytes=(tokens + cfg.page_size) * cell if tokens else 0,
                          max_running_requests=requests, max_request_tokens=max(min(cfg.context_len, tokens) - 1, 0))


class SglangStartupStatus(StrEnum):
    """Outcome of SGLang's start-up."""

    OK = "ok"
    """The engine starts."""
    NOT_ENOUGH_MEMORY = "not_enough_memory"
    """The KV pool would hold no token."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SglangStartup:
    """What SGLang decides at start-up."""

    status: SglangStartupStatus
    """The outcome."""
    message: str
    """SGLang's error text (empty when OK)."""
    pre_free_bytes: int
    """Free memory before the weights load."""
    kv_budget_bytes: int
    """The KV budget."""
    capacity: SglangCapacity
    """What the budget buys."""


def startup_check(spec: ModelSpec, cfg: SglangConfig, total_gpu_bytes: int, *,
                  other_process_bytes: int = 0) -> SglangStartup:
    """Will the engine start next to ``other_process_bytes`` held by other processes?

    SGLang has no check of free memory against a share of the total: the fraction applies to what is free,
    so a busy GPU only shrinks the pool. It fails when the pool would hold no token: ``MemoryPoolConfig``
    raises "Not enough memory. Please try to increase --mem-fraction-static. Current value:
    mem_fraction_static=f" (f × pre ≤ weights). A pool shorter than ``context_len`` starts, and rejects
    longer requests (``max_request_tokens``).

    Source: model_executor/pool_configurator.py@v0.5.12 L51-56; managers/tp_worker.py L304-311.
    Checked by: tests/memory/test_sglang.py::test_startup_not_enough_memory
    """
    pre = pre_load_free_bytes(cfg, total_gpu_bytes, other_process_bytes=other_process_bytes)
    budget = kv_budget_bytes(spec, cfg, pre)
    cap = kv_capacity(spec, cfg, budget)
    if cap.max_total_num_tokens <= 0:
        message = ("Not enough memory. Please try to increase --mem-fraction-static. "
                   f"Current value: mem_fraction_static={cfg.mem_fraction_static}")
        return SglangStartup(status=SglangStartupStatus.NOT_ENOUGH_MEMORY, message=message, pre_free_bytes=pre,
                             kv_budget_bytes=budget, capacity=cap)
    return SglangStartup(status=SglangStartupStatus.OK, message="", pre_free_bytes=pre, kv_budget_bytes=budget,
                         capacity=cap)


def activation_peak_bytes(spec: ModelSpec, cfg: SglangConfig) -> int:
    """Peak activations of one rank: memplan's forward + sampler peak (memory/vllm_budget.py
    ``profile_peak_bytes``) over a prefill chunk of ``chunked_prefill_size`` tokens and a decode batch of
    ``max_running_requests`` rows (``cuda_graph_max_bs`` when uncapped).

    SGLang does not profile a forward; its own reserve for activations, ``max(chunked, 2048) × 1.5 MiB``
    (server_args.py@v0.5.12 L1545-1548: 12 GiB at 8192 tokens whatever the model), is a sizing heuristic for
    the fraction, not a measurement, so the model-dependent peak is used instead.
    Source: model_executor/model_runner.py@v0.5.12 (chunked prefill bounds the tokens of one forward);
    :func:`memplan.memory.vllm_budget.profile_peak_bytes`.
    Assumes: SGLang's Llama/Qwen model code keeps the same [T, H] and MLP intermediates as vLLM's; its sampler
    peak per logit equals vLLM's (unvalidated).
    Checked by: tests/memory/test_sglang.py::test_qwen25_7b_tp2_h100_by_hand
    """
    rows = cfg.max_running_requests or cfg.cuda_graph_max_bs
    engine = VllmConfig(tensor_parallel_size=cfg.tensor_parallel_size, gpu_memory_utilization=1.0,
                        max_model_len=cfg.context_len, max_num_seqs=rows,
                        max_num_batched_tokens=cfg.chunked_prefill_size, weight_dtype=cfg.weight_dtype)
    return profile_peak_bytes(spec, engine)


def dynamic_parts(cfg: SglangConfig) -> list[tuple[str, int]]:
    """(name, bytes) of the graph and metadata memory one rank allocates outside ``mem_fraction_static``, by
    SGLang's own estimate:

        cuda_graphs       = cuda_graph_max_bs × 2 MiB                (0 with CUDA graphs disabled)
        piecewise_graphs  = len(piecewise sizes) × 8 MiB             (0 when piecewise graphs are off)
        metadata          = 512 MiB

    Source: server_args.py@v0.5.12 L1540-1571 (the reserve SGLang subtracts when it picks the fraction itself);
    model_executor/model_runner.py L2967-2990 (piecewise graphs depend only on their own switch, not on
    ``disable_cuda_graph``).
    Assumes: SGLang's heuristic is the physical size (not validated against a log); its ``tp/8`` GiB allowance
    is taken as the communicators, modelled separately (:func:`communicator_bytes`).
    Checked by: tests/memory/test_sglang.py::test_qwen25_7b_tp2_h100_by_hand
    """
    graphs = 0 if cfg.disable_cuda_graph else cfg.cuda_graph_max_bs * GRAPH_BYTES_PER_DECODE_BS
    piecewise = (len(piecewise_capture_tokens(cfg.chunked_prefill_size)) * GRAPH_BYTES_PER_PIECEWISE_SIZE
                 if cfg.piecewise_cuda_graph else 0)
    return [("cuda_graphs", graphs), ("piecewise_graphs", piecewise), ("metadata", METADATA_BYTES)]


def sglang_state_terms(spec: ModelSpec, cfg: SglangConfig, total_gpu_bytes: int, state: EngineState, *,
                       other_process_bytes: int = 0, path: str = "rollout", phase: Phase | None = None) -> list[Term]:
    """One GPU (one TP rank) of an engine whose "weights" and "kv_cache" regions are released while asleep.

        GENERATING   = weights + kv_pool + activations + graphs + metadata + context + NCCL
        WEIGHTS_ONLY = GENERATING − kv_pool − activations
        ASLEEP       = GENERATING − kv_pool − activations − weights + stashed_buffers

    Releasing "kv_cache" flushes the cache with ``empty_cache`` (activation blocks returned); graphs are under
    the "cuda_graph" tag, which stays mapped unless released too; releasing "weights" first clones the model's
    buffers (the fp32 rotary cache) on the GPU, dropped on resume. ``other_process_bytes`` is what other
    processes hold when the engine starts (it sizes the pool).

    Source: managers/scheduler_update_weights_mixin.py@v0.5.12 ``release_memory_occupation`` L127-158 and
    ``_export_static_state`` L219-224 (``buffer.detach().clone()``, same device), ``resume_memory_occupation``
    L160-186; managers/scheduler.py ``flush_cache`` L3442-3457 (``empty_device_cache``); model_executor/model_runner.py L1454-1467 (weights region), mem_cache/memory_pool.py L897-919 (KV
    region), model_executor/cuda_graph_runner.py L940-955 (graph region).
    Checked by: tests/memory/test_sglang.py::test_qwen25_7b_tp2_h100_by_hand
    """
    pre = pre_load_free_bytes(cfg, total_gpu_bytes, other_process_bytes=other_process_bytes)
    cap = kv_capacity(spec, cfg, kv_budget_bytes(spec, cfg, pre))
    src = sglang_source("model_executor/model_runner.py", "load_model / init_memory_pool")
    heur = sglang_source("server_args.py", "_handle_gpu_memory_settings reserve heuristic")
    rec = measurement("validation/published/vllm/pr21489-gemma3-4b-b200-startup.toml", "worker CUDA context")
    parts: list[tuple[str, int, Category, Source]] = []
    if state != EngineState.ASLEEP:
        parts.append(("weights", weight_bytes(spec, cfg), Category.PARAM, src))
    else:
        stash = rotary_cache_numel(spec) * ROTARY_CACHE_ELEMENT_BYTES
        parts.append(("stashed_buffers", stash, Category.PARAM, sglang_source(
            "managers/scheduler_update_weights_mixin.py", "_export_static_state: buffers cloned on the GPU")))
    if state == EngineState.GENERATING:
        parts.append(("kv_cache", cap.pool_bytes, Category.KV_CACHE, src))
        parts.append(("activations", activation_peak_bytes(spec, cfg), Category.TEMP, src))
    parts += [(name, nbytes, Category.OVERHEAD, heur) for name, nbytes in dynamic_parts(cfg) if nbytes]
    parts.append(("cuda_context", VLLM_CUDA_CONTEXT_BYTES, Category.OVERHEAD, rec))
    if communicator_bytes(cfg):
        parts.append(("nccl", communicator_bytes(cfg), Category.OVERHEAD, sglang_source(
            "model_executor/model_runner.py", "init_torch_distributed")))
    return [Term(path=f"{path}.{name}", bytes=nbytes, category=category, device=Device.GPU, source=source,
                 phase=phase) for name, nbytes, category, source in parts]


def sglang_host_terms(spec: ModelSpec, cfg: SglangConfig, *, weights_cpu_backup: bool = False,
                      path: str = "rollout", phase: Phase | None = None) -> list[Term]:
    """Host RAM one engine rank's release holds: nothing unless the weights region keeps a CPU backup
    (``enable_weights_cpu_backup``, default off), then the rank's weight bytes.

    Source: model_executor/model_runner.py@v0.5.12 L1454-1460 (``region(GPU_MEMORY_TYPE_WEIGHTS,
    enable_cpu_backup=...)``), server_args.py L753 (default False).
    Assumes: the backup is one host copy of the region (torch_memory_saver's C++ side, pinning not read).
    Checked by: tests/memory/test_sglang.py::test_host_terms
    """
    if not weights_cpu_backup:
        return []
    return [Term(path=f"{path}.weights_cpu_backup", bytes=weight_bytes(spec, cfg), category=Category.PARAM,
                 device=Device.CPU, source=sglang_source("model_executor/model_runner.py",
                                                         "weights region with enable_cpu_backup"), phase=phase)]
