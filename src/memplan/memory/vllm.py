"""vLLM rollout engines as OpenRLHF creates them: configuration, version behaviours, weights, KV layout.

The budget arithmetic (profile peak, KV budget, capacity, start-up checks) and the per-GPU terms are
in :mod:`memplan.memory.vllm_budget`; this module holds what those formulas are computed from.

OpenRLHF builds each engine with ``vllm.AsyncEngineArgs(model=..., tensor_parallel_size=tp,
max_model_len=max_len, dtype="bfloat16", gpu_memory_utilization=u, enforce_eager=..., enable_prefix_caching=...,
enable_sleep_mode=...)`` and ``vllm.AsyncLLMEngine.from_engine_args`` (OpenRLHF/OpenRLHF:
openrlhf/trainer/ray/vllm_engine.py@3c3be6234e0cb353e76bb8019947db9dfe99fca7 (v0.11.0) ``create_vllm_engines``
L265-282 and ``RolloutRayActor.__init__`` L63-64; the same kwargs at v0.9.5 c0e2ee2 L225-242). It passes no
``max_num_seqs``, ``max_num_batched_tokens``, ``block_size`` or ``kv_cache_dtype``, so vLLM's defaults for
the *engine* usage context apply (``AsyncLLM.from_engine_args(usage_context=ENGINE_CONTEXT)``), not those of
``LLM(...)`` or ``vllm serve``. OpenRLHF pins vLLM in ``setup.py`` extras: ``vllm==0.27.1`` at v0.11.0
(L77), ``vllm==0.17.0`` at v0.9.5.

Glossary: *rank* = one TP worker process = one GPU; *page* = the bytes of one KV block of one layer;
*block* = ``block_size`` tokens; *group* = layers sharing one block table (vLLM's hybrid allocator).
"""

from __future__ import annotations

from functools import lru_cache
from dataclasses import dataclass
from enum import StrEnum

from memplan.dtypes import DType, bytes_for
from memplan.errors import ConfigError
from memplan.model.params import ModuleKind, param_tree
from memplan.model.spec import AttentionType, ModelSpec
from memplan.sources import Source, code

VLLM = "vllm-project/vllm"
OPENRLHF_ENGINE = "OpenRLHF/OpenRLHF:openrlhf/trainer/ray/vllm_engine.py@3c3be6234e0cb353e76bb8019947db9dfe99fca7"

#: vLLM version OpenRLHF 0.11.0 pins (setup.py@3c3be62 L77: ``"vllm": ["vllm==0.27.1"]``).
DEFAULT_VLLM_VERSION = "0.27.1"
#: OpenRLHF's default ``--vllm.gpu_memory_utilization`` (reference/openrlhf.md §1.1).
OPENRLHF_GPU_MEMORY_UTILIZATION = 0.95
#: ``CacheConfig.block_size`` default: tokens per KV block (vllm/config/cache.py@v0.27.1).
DEFAULT_BLOCK_SIZE = 16
#: ``DEFAULT_VOCAB_PADDING_SIZE`` (vllm/model_executor/layers/vocab_parallel_embedding.py@v0.27.1 L32):
#: embedding and LM-head rows are padded to a multiple of this before the TP split (``pad_vocab_size`` L87-89).
VOCAB_PADDING = 64
#: Rope types whose cos/sin cache has ``max_position × factor`` rows (vLLM ``LinearScalingRotaryEmbedding``,
#: ``DynamicNTKScalingRotaryEmbedding``); others (plain, llama3, yarn with HF's extended max_position) have
#: ``max_position_embeddings`` rows.
_ROPE_TYPES_SCALING_ROWS = frozenset({"linear", "dynamic"})


class VllmRunner(StrEnum):
    """Which model runner profiles memory (it decides whether CUDA graphs are budgeted)."""

    V0 = "v0"
    """Legacy engine (vllm/worker/worker.py)."""
    V1 = "v1"
    """vllm/v1/worker/gpu_model_runner.py."""
    V2 = "v2"
    """vllm/v1/worker/gpu/model_runner.py (default for dense models in 0.27.1)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VllmBehaviour:
    """The memory-relevant behaviour of one vLLM version (read from its source)."""

    version: str
    """The release whose wheel was read."""
    runner_dense: VllmRunner
    """Model runner for dense, non-hybrid models."""
    runner_moe: VllmRunner
    """Model runner for MoE models (0.27.1: V1 unless the architecture is in the V2 default list)."""
    requested_ceil: bool
    """``requested = ceil(total × u)`` (``request_memory``) instead of the float product."""
    startup_free_check: bool
    """Raises "Free memory on device ... less than desired GPU memory utilization" at start-up."""
    nccl_in_budget: bool
    """The memory snapshot precedes NCCL init, so NCCL/custom all-reduce buffers count as non-torch."""
    context_in_budget: bool
    """The CUDA context is measured as non-torch memory inside ``total × u`` (0.6.4: used − torch after the
    profile run); later versions take their baseline after the context exists, so it lies outside the share."""
    others_in_budget: bool
    """Other processes' memory on the GPU counts as this engine's non-torch memory (0.6.4: used − torch)."""
    cudagraph_estimate_default: bool
    """``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`` default: the V1 runner's graph estimate is subtracted."""
    hybrid_allocator: bool
    """Sliding-window layers keep only their window (hybrid KV cache manager)."""
    group_max_ratio_pct: int
    """Hybrid grouping: layers per group = the larger kind's count when ``100 × max < pct × min``, else the
    smaller kind's (100: always the smaller)."""
    in_flight_batches: int
    """Concurrent scheduler batches (2 with async scheduling): sliding-window admission budget multiplier."""
    default_max_num_seqs: int
    """``max_num_seqs`` for the usage context OpenRLHF (or the logged run) uses."""
    default_max_num_batched_tokens: int
    """``max_num_batched_tokens`` before the max_model_len adjustments."""
    chunked_prefill: bool
    """Chunked prefill on by default (then max_num_batched_tokens is not raised to max_model_len)."""
    tokens_from_concurrency: bool
    """"GPU KV cache size" log = int(concurrency × max_model_len) (else num_blocks // groups × block_size)."""
    source: str
    """Where each field was read."""
    v2_model_types: frozenset[str] = frozenset()
    """HF ``model_type`` values this version runs on the V2 runner whatever ``runner_dense``/``runner_moe`` say
    (0.24.0: a fixed architecture list, ``DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES``)."""


def _src(version: str, path: str) -> str:
    return f"{VLLM}:{path}@v{version}"


VLLM_BEHAVIOURS: dict[str, VllmBehaviour] = {
    "0.6.4": VllmBehaviour(
        version="0.6.4.post1", runner_dense=VllmRunner.V0, runner_moe=VllmRunner.V0, requested_ceil=False,
        startup_free_check=False, nccl_in_budget=True, context_in_budget=True, others_in_budget=True,
        cudagraph_estimate_default=False, hybrid_allocator=False, group_max_ratio_pct=100, in_flight_batches=1,
        default_max_num_seqs=256, default_max_num_batched_tokens=2048, chunked_prefill=False,
        tokens_from_concurrency=False,
        source=_src("0.6.4.post1", "vllm/worker/worker.py") + " init_device L122-147 (no snapshot; NCCL after), "
        "determine_num_available_blocks L174-250: total×u − (allocated_bytes.all.peak + non-torch), non-torch = "
        "(total − free) − torch allocated after the profile: context, NCCL and other processes' memory included"),
    "0.7.3": VllmBehaviour(
        version="0.7.3", runner_dense=VllmRunner.V0, runner_moe=VllmRunner.V0, requested_ceil=False,
        startup_free_check=False, nccl_in_budget=True, context_in_budget=False, others_in_budget=False,
        cudagraph_estimate_default=False, hybrid_allocator=False, group_max_ratio_pct=100, in_flight_batches=1,
        default_max_num_seqs=256, default_max_num_batched_tokens=2048, chunked_prefill=False,
        tokens_from_concurrency=False,
        source=_src("0.7.3", "vllm/worker/worker.py") + " L161-166 (set_device, then snapshot, then NCCL), L205-271 "
        "(total×u − weights − torch peak increase − non-torch increase)"),
    "0.9.1": VllmBehaviour(
        version="0.9.1", runner_dense=VllmRunner.V1, runner_moe=VllmRunner.V1, requested_ceil=False,
        startup_free_check=True, nccl_in_budget=True, context_in_budget=False, others_in_budget=False,
        cudagraph_estimate_default=False, hybrid_allocator=True, group_max_ratio_pct=100, in_flight_batches=1,
        default_max_num_seqs=256, default_max_num_batched_tokens=8192, chunked_prefill=True,
        tokens_from_concurrency=False,
        source=_src("0.9.1", "vllm/v1/worker/gpu_worker.py") + " init_device L115-155 (snapshot, free check, then "
        "init_worker_distributed_environment), determine_available_memory L183-230 (requested − non_kv), "
        "compile_or_warm_up_model L247-261 (graphs after the KV cache); utils.py memory_profiling L2342-2415; "
        "engine/arg_utils.py L1540-1605 (LLM class: 8192 tokens, 256 seqs on A100 or a GPU-less Ray driver); "
        "v1/core/kv_cache_utils.py L825 (group = min), L867 (tokens = blocks // groups × block)"),
    "0.17.0": VllmBehaviour(
        version="0.17.0", runner_dense=VllmRunner.V1, runner_moe=VllmRunner.V1, requested_ceil=True,
        startup_free_check=True, nccl_in_budget=False, context_in_budget=False, others_in_budget=False,
        cudagraph_estimate_default=False, hybrid_allocator=True, group_max_ratio_pct=125,
        in_flight_batches=1, default_max_num_seqs=128, default_max_num_batched_tokens=2048, chunked_prefill=True,
        tokens_from_concurrency=False,
        source=_src("0.17.0", "vllm/v1/worker/gpu_worker.py") + " init_device L262-286, determine_available_memory "
        "L384-409; v1/worker/utils.py request_memory L217-237; no VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS in envs.py; "
        "v1/core/kv_cache_utils.py L1040-1049 (group = max when max < 1.25 × min)"),
    "0.24.0": VllmBehaviour(
        version="0.24.0", runner_dense=VllmRunner.V1, runner_moe=VllmRunner.V1, requested_ceil=True,
        startup_free_check=True, nccl_in_budget=False, context_in_budget=False, others_in_budget=False,
        cudagraph_estimate_default=True, hybrid_allocator=True, group_max_ratio_pct=150,
        in_flight_batches=1, default_max_num_seqs=128, default_max_num_batched_tokens=2048, chunked_prefill=True,
        tokens_from_concurrency=True, v2_model_types=frozenset(
            {"qwen3", "deepseek_v2", "qwen2_moe", "granitemoe", "llama", "mistral"}),
        source=_src("0.24.0", "vllm/v1/worker/gpu_worker.py") + " init_device L318-342 (NCCL, then snapshot and "
        "request_memory), determine_available_memory L400-552 (requested − non_kv − graph estimate when "
        "VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS); v1/worker/utils.py request_memory L405-425 (ceil, free check); "
        "envs.py L1894-1895 (estimate default '1'); config/vllm.py L68-77 (V2 runner only for Qwen3, DeepseekV2, "
        "Qwen2Moe, GraniteMoe, Llama, Mistral), L522-548 (use_v2_model_runner); v1/worker/gpu/model_runner.py "
        "L684-686 (V2 profile_cudagraph_memory returns 0); v1/kv_cache_interface.py L506-526 (sliding admission: "
        "window − 1 + max_num_batched_tokens, one batch); v1/core/kv_cache_utils.py L1195 (group = max when "
        "max < 1.5 × min), L1788-1798 (tokens = int(concurrency × max_model_len)); config/scheduler.py L42-44"),
    "0.27.1": VllmBehaviour(
        version="0.27.1", runner_dense=VllmRunner.V2, runner_moe=VllmRunner.V1, requested_ceil=True,
        startup_free_check=True, nccl_in_budget=False, context_in_budget=False, others_in_budget=False,
        cudagraph_estimate_default=True, hybrid_allocator=True, group_max_ratio_pct=150,
        in_flight_batches=2, default_max_num_seqs=128, default_max_num_batched_tokens=2048, chunked_prefill=True,
        tokens_from_concurrency=True,
        source=_src("0.27.1", "vllm/v1/worker/gpu_worker.py") + " L395-396, L498-548; envs.py L2018-2019 "
        "(estimate default '1'); config/vllm.py L69-79, L540-550, L637-658 (V2 runner for dense models, async "
        "scheduling); v1/worker/gpu/model_runner.py L749-751 (V2 profile_cudagraph_memory returns 0); "
        "v1/core/kv_cache_utils.py L1248 (group = max when max < 1.5 × min)"),
}

#: Architectures 0.27.1 runs on the V2 runner even though they are MoE (config/vllm.py L69-79), by model_type.
_V2_MOE_MODEL_TYPES = frozenset({"qwen2_moe", "deepseek_v2"})


def behaviour(version: str) -> VllmBehaviour:
    """The behaviour table entry for ``version``; :class:`ConfigError` for a version not read."""
    try:
        return VLLM_BEHAVIOURS[version]
    except KeyError:
        known = ", ".join(sorted(VLLM_BEHAVIOURS))
        raise ConfigError("vllm.version", f"no behaviour table for vLLM {version!r}; known: {known}") from None


def runner_for(spec: ModelSpec, version: str) -> VllmRunner:
    """The model runner ``version`` uses for ``spec`` (0.27.1: V2 for dense, V1 for most MoE; 0.24.0: V2 only for
    the architectures in ``v2_model_types``, so Qwen2/Qwen2.5 and Gemma run on V1)."""
    b = behaviour(version)
    if spec.model_type in b.v2_model_types:
        return VllmRunner.V2
    if not spec.is_moe:
        return b.runner_dense
    if b.runner_dense == VllmRunner.V2 and spec.model_type in _V2_MOE_MODEL_TYPES:
        return VllmRunner.V2
    return b.runner_moe


@dataclass(frozen=True, slots=True, kw_only=True)
class VllmConfig:
    """One resolved vLLM engine (every field explicit; see :func:`openrlhf_vllm_config` for OpenRLHF's)."""

    tensor_parallel_size: int
    """GPUs per engine; weights and KV heads are split over them."""
    gpu_memory_utilization: float
    """Fraction of each GPU's *total* memory the engine may use (0 < u ≤ 1)."""
    max_model_len: int
    """Longest sequence (OpenRLHF passes ``max_len``)."""
    max_num_seqs: int
    """Most sequences scheduled at once (sampler rows in the profile run)."""
    max_num_batched_tokens: int
    """Token budget of one forward (tokens in the profile run)."""
    block_size: int = DEFAULT_BLOCK_SIZE
    """Tokens per KV block."""
    enforce_eager: bool = False
    """No CUDA graphs."""
    enable_prefix_caching: bool = False
    """Reuses KV blocks across requests; no effect on the pool size."""
    sleep_level: int = 0
    """0: never sleeps; 1: ``sleep(level=1)`` between rollouts (weights to host RAM, KV cache freed); 2:
    ``sleep(level=2)``: weights discarded, not backed up (:mod:`memplan.memory.vllm_sleep`)."""
    kv_cache_dtype: DType = DType.BF16
    """KV element type (``auto`` = the model dtype, which OpenRLHF forces to bfloat16)."""
    weight_dtype: DType = DType.BF16
    """Weight element type (OpenRLHF passes ``dtype="bfloat16"`` whatever the checkpoint)."""
    vllm_version: str = DEFAULT_VLLM_VERSION
    """Key into :data:`VLLM_BEHAVIOURS`."""

    def __post_init__(self) -> None:
        checks = {
            "VllmConfig.tensor_parallel_size": self.tensor_parallel_size >= 1,
            "VllmConfig.gpu_memory_utilization": 0 < self.gpu_memory_utilization <= 1,
            "VllmConfig.max_model_len": self.max_model_len >= 1,
            "VllmConfig.max_num_seqs": self.max_num_seqs >= 1,
            "VllmConfig.max_num_batched_tokens": self.max_num_batched_tokens >= 1,
            "VllmConfig.block_size": self.block_size >= 1,
            "VllmConfig.sleep_level": self.sleep_level in (0, 1, 2),
        }
        for location, ok in checks.items():
            if not ok:
                raise ConfigError(location, "out of range")
        behaviour(self.vllm_version)

    @property
    def behaviour(self) -> VllmBehaviour:
        """This version's behaviour table entry."""
        return behaviour(self.vllm_version)


def openrlhf_vllm_config(*, max_len: int, tensor_parallel_size: int = 1,
                         gpu_memory_utilization: float = OPENRLHF_GPU_MEMORY_UTILIZATION, enforce_eager: bool = False,
                         enable_prefix_caching: bool = False, enable_sleep: bool = False,
                         vllm_version: str = DEFAULT_VLLM_VERSION) -> VllmConfig:
    """The engine OpenRLHF builds, with vLLM's scheduler defaults resolved for the engine usage context.

        max_num_batched_tokens = min(max_num_seqs_default × max_len, D_tokens)   (chunked prefill on)
                               = min(..., max(max_len, D_tokens))                (chunked prefill off)
        max_num_seqs           = min(max_num_seqs_default, max_num_batched_tokens)

    D_tokens = 2048 and max_num_seqs_default = 128 are ``SchedulerConfig.DEFAULT_MAX_NUM_BATCHED_TOKENS`` /
    ``DEFAULT_MAX_NUM_SEQS``: ``get_batch_defaults`` only knows ``LLM_CLASS`` and ``OPENAI_API_SERVER``, and
    ``AsyncLLM.from_engine_args`` passes ``ENGINE_CONTEXT``. The 0.9.1 row holds the ``LLM_CLASS`` values
    (8192 tokens, 256 seqs), as OpenRLHF 0.8.5 builds ``vllm.LLM`` (vllm_engine.py@v0.8.5 L70) from a Ray actor
    that holds no GPU (arg_utils.py@v0.9.1 L1540-1567: no device memory read → the non-H100 defaults).

    Source: vllm/engine/arg_utils.py@v0.27.1 ``get_batch_defaults`` L2515-2595 and
    ``_set_default_max_num_seqs_and_batched_tokens_args`` L2712-2800 (same logic at v0.17.0 L2101-2161);
    vllm/config/scheduler.py@v0.27.1 L42-44; vllm/v1/engine/async_llm.py@v0.27.1 L235-245; OpenRLHF
    vllm_engine.py@v0.11.0 L265-282 (no max_num_seqs / max_num_batched_tokens passed).
    Assumes: decoder-only text model (chunked prefill supported), performance_mode "balanced".
    Checked by: tests/memory/test_vllm.py::test_openrlhf_scheduler_defaults
    """
    b = behaviour(vllm_version)
    tokens = b.default_max_num_batched_tokens if b.chunked_prefill else max(max_len, b.default_max_num_batched_tokens)
    tokens = min(b.default_max_num_seqs * max_len, tokens)
    return VllmConfig(tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                      max_model_len=max_len, max_num_seqs=min(b.default_max_num_seqs, tokens),
                      max_num_batched_tokens=tokens, enforce_eager=enforce_eager,
                      enable_prefix_caching=enable_prefix_caching, sleep_level=1 if enable_sleep else 0,
                      vllm_version=vllm_version)


# --------------------------------------------------------------------------- weights


_COLUMN = frozenset({"q_proj", "gate_proj", "up_proj", "gate_up_proj", "q_b_proj", "kv_b_proj"})
_KV = frozenset({"k_proj", "v_proj"})
_ROW = frozenset({"o_proj", "down_proj"})
_VOCAB = frozenset({"embed_tokens", "lm_head"})


def kv_heads_per_rank(spec: ModelSpec, tp: int) -> int:
    """KV heads one rank holds: ``kv/tp``, or 1 (replicated) when ``tp ≥ kv`` (``QKVParallelLinear``).

    Source: vllm/model_executor/layers/linear.py@v0.27.1 L1076-1081.
    Checked by: tests/memory/test_vllm.py::test_kv_heads_replicated_past_their_count
    """
    kv = spec.num_key_value_heads
    if tp >= kv:
        if tp % kv:
            raise ConfigError("VllmConfig.tensor_parallel_size", f"{tp} is not a multiple of {kv} KV heads")
        return 1
    if kv % tp:
        raise ConfigError("VllmConfig.tensor_parallel_size", f"{kv} KV heads do not split over {tp} ranks")
    return kv // tp


def _divide(n: int, tp: int, what: str) -> int:
    if n % tp:
        raise ConfigError("VllmConfig.tensor_parallel_size", f"{what} ({n}) does not split over {tp} ranks")
    return n // tp


def _shard_numel(spec: ModelSpec, module_name: str, kind: ModuleKind, tensor: str, shape: tuple[int, ...],
                 tp: int) -> int:
    """Elements of one tensor on one rank under vLLM's TP layers."""
    numel = 1
    for d in shape:
        numel *= d
    if kind == ModuleKind.EXPERTS:                        # FusedMoE: intermediate dim split
        return _divide(numel, tp, f"{module_name}.{tensor}")
    if module_name in _VOCAB:                             # VocabParallelEmbedding / ParallelLMHead
        padded = -(-spec.vocab_size // VOCAB_PADDING) * VOCAB_PADDING
        return _divide(padded, tp, "padded vocabulary") * shape[1]
    if module_name in _KV:                                # output = kv heads per rank × head_dim
        return numel // spec.num_key_value_heads * kv_heads_per_rank(spec, tp)
    if module_name == "qkv_proj":                         # fused: q split, k/v per rank
        per_row = numel // shape[0]
        rows = _divide(spec.q_dim, tp, "query width") + 2 * kv_heads_per_rank(spec, tp) * spec.head_dim
        return rows * per_row
    if module_name in _COLUMN:
        return _divide(numel, tp, f"{module_name}.{tensor}")
    if module_name in _ROW:                               # bias is not parallelised (RowParallelLinear)
        return numel if tensor == "bias" else _divide(numel, tp, f"{module_name}.{tensor}")
    return numel                                          # norms, routers, MLA a-projections: replicated


def rotary_cache_numel(spec: ModelSpec) -> int:
    """Elements of the rotary ``cos_sin_cache`` buffer: ``[rows, rotary_dim]``, one per model (``get_rope`` caches).

    rows = max_position_embeddings (× factor for linear/dynamic scaling); rotary_dim = head_dim (MLA:
    qk_rope_head_dim). It is registered in the model dtype during ``load_model``, so vLLM's "model weights"
    include it (Llama-3.1-8B: 131072 × 128 × 2 B = 32 MiB, the gap between 14.9575 GiB of parameters and the
    logged 14.9888 GiB in validation/published/vllm/issue10517-llama3.1-8b-rtx3090-20k.toml).

    Source: vllm/model_executor/layers/rotary_embedding/base.py@v0.27.1 L58-63 (``cache.to(dtype)``,
    ``register_buffer("cos_sin_cache")``); same at v0.6.4.post1 rotary_embedding.py L93-98.
    Assumes: full rotary (no partial_rotary_factor); Gemma-3's second (local) rope cache is not added.
    Checked by: tests/memory/test_vllm.py::test_weights_match_logged_llama31_8b
    """
    rows = spec.max_position_embeddings
    if spec.rope_scaling_type in _ROPE_TYPES_SCALING_ROWS and spec.rope_scaling_factor:
        rows = int(rows * spec.rope_scaling_factor)
    rotary_dim = spec.mla.qk_rope_head_dim if spec.mla is not None else spec.head_dim
    return rows * rotary_dim


@lru_cache(maxsize=256)
def weight_bytes_per_rank(spec: ModelSpec, tp: int, dtype: DType = DType.BF16) -> int:
    """Weight bytes on one TP rank of a vLLM engine.

    Column-parallel (q, gate/up, MLA q_b/kv_b) split their output and bias; row-parallel (o, down) split
    their input, bias replicated; k/v hold ``max(1, kv/tp)`` heads; embedding and LM head hold
    ``round_up(V, 64)/tp`` rows (a tied head is not stored twice); fused experts split their intermediate
    dim; norms, routers and MLA's a-projections are replicated. Plus the rotary cache (:func:`rotary_cache_numel`).

        bytes = dtype_bytes × (Σ_tensors shard_numel + rotary_cache_numel)

    Source: vllm/model_executor/layers/linear.py@v0.27.1 (ColumnParallelLinear, RowParallelLinear "bias is not
    parallelized" L1628, QKVParallelLinear L1076-1081); vocab_parallel_embedding.py L32, L87-89, L269-312;
    fused_moe/layer.py (w13 [E, 2I/tp, H], w2 [E, H, I/tp]).
    Assumes: every tensor in ``dtype`` (OpenRLHF forces bfloat16; DeepSeek's fp32 ``e_score_correction_bias``
    counted at 2 B); no expert parallelism; MLA's W_UK/W_UV copies made after loading are not added.
    Checked by: tests/memory/test_vllm.py::test_weights_match_logged_llama3_8b,
    ::test_weights_tp_split_hand_computed, golden ::test_published_weights
    """
    numel = rotary_cache_numel(spec)
    for module in param_tree(spec).walk():
        for tensor in module.tensors:
            if tensor.tied:
                continue
            numel += _shard_numel(spec, module.name, module.kind, tensor.name, tensor.shape, tp)
    return bytes_for(numel, dtype)


#: HF tensors vLLM fuses into one parameter per layer (QKVParallelLinear, MergedColumnParallelLinear).
_FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj",
          "up_proj": "gate_up_proj"}


def weight_allocations_per_rank(spec: ModelSpec, tp: int, dtype: DType = DType.BF16) -> tuple[int, ...]:
    """Bytes of each separate weight tensor one TP rank allocates (vLLM's parameters, in load order):
    q/k/v fused into ``qkv_proj``, gate/up into ``gate_up_proj``, every other tensor on its own, plus the
    rotary cache. They sum to :func:`weight_bytes_per_rank`.

    Source: vllm/model_executor/models/llama.py@v0.27.1 (``QKVParallelLinear``, ``MergedColumnParallelLinear``,
    ``stacked_params_mapping``); the shards of :func:`weight_bytes_per_rank`.
    Checked by: tests/memory/test_host_alloc.py::test_vllm_sleeping_weights_rounded_per_tensor
    """
    sizes: dict[tuple[int, str, str], int] = {}
    container = 0
    for index, module in enumerate(param_tree(spec).walk()):
        if module.kind == ModuleKind.CONTAINER:
            container = index
        for tensor in module.tensors:
            if tensor.tied:
                continue
            fused = _FUSED.get(module.name)
            key = (container, fused, tensor.name) if fused else (index, module.name, tensor.name)
            sizes[key] = sizes.get(key, 0) + _shard_numel(spec, module.name, module.kind, tensor.name,
                                                          tensor.shape, tp)
    return tuple(bytes_for(n, dtype) for n in (*sizes.values(), rotary_cache_numel(spec)) if n)


# --------------------------------------------------------------------------- KV layout


def page_size_bytes(spec: ModelSpec, cfg: VllmConfig) -> int:
    """Bytes of one KV block of one layer on one rank (vLLM's ``page_size_bytes``).

        standard:  2 × block_size × kv_heads_per_rank × head_dim × dtype_bytes
        MLA:       block_size × (kv_lora_rank + qk_rope_head_dim) × dtype_bytes   (one latent, every rank)

    Sliding-window layers use the same page (``SlidingWindowSpec.real_page_size_bytes``).
    Source: vllm/v1/kv_cache_interface.py@v0.27.1 ``AttentionSpec.real_page_size_bytes`` L211-225,
    ``MLAAttentionSpec.real_page_size_bytes`` L407-426, ``SlidingWindowSpec`` L568-584.
    Checked by: tests/memory/test_vllm.py::test_kv_bytes_per_token_hand_computed
    """
    if spec.mla is not None:
        return bytes_for(cfg.block_size * (spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim), cfg.kv_cache_dtype)
    heads = kv_heads_per_rank(spec, cfg.tensor_parallel_size)
    return bytes_for(2 * cfg.block_size * heads * spec.head_dim, cfg.kv_cache_dtype)


def kv_bytes_per_token(spec: ModelSpec, tp: int, dtype: DType = DType.BF16) -> int:
    """KV bytes one token takes on one rank if every layer keeps it (full attention).

        2 · L · max(1, kv/tp) · head_dim · dtype_bytes      (MLA: L · (kv_lora_rank + rope_dim) · dtype_bytes)

    Llama-3-8B bf16: 2·32·8·128·2 = 131,072 B; Llama-2-7B: 524,288 B; Llama-3-70B: 327,680 B.
    Source: as :func:`page_size_bytes` (page / block_size, times layers).
    Checked by: tests/memory/test_vllm.py::test_kv_bytes_per_token_hand_computed
    """
    cfg = VllmConfig(tensor_parallel_size=tp, gpu_memory_utilization=1.0, max_model_len=1, max_num_seqs=1,
                     max_num_batched_tokens=1, block_size=1, kv_cache_dtype=dtype)
    return page_size_bytes(spec, cfg) * spec.num_hidden_layers


@dataclass(frozen=True, slots=True, kw_only=True)
class KvLayout:
    """How vLLM groups the layers into block tables sharing one block pool."""

    group_size: int
    """Layers per group: the pool has ``group_size`` tensors of ``num_blocks × page`` bytes."""
    num_full_groups: int
    """Groups of full-attention layers (a block per ``block_size`` tokens of every request)."""
    num_sliding_groups: int
    """Groups of sliding-window layers (only the window is kept)."""
    sliding_window: int
    """Window of the sliding layers (0 without any)."""


def kv_layout(spec: ModelSpec, cfg: VllmConfig) -> KvLayout:
    """Group the layers as vLLM's KV cache manager does.

    Uniform models: one group of all L layers. Mixed full/sliding (Gemma-2/3) with the hybrid allocator:
    group_size = min(#full, #sliding), or the max when max < r × min (r = 1.5 in 0.27.1, 1.25 in 0.17.0, never
    in 0.9.1: ``group_max_ratio_pct``); each kind is cut into ceil(n / group_size) groups (the last padded).

    Source: vllm/v1/core/kv_cache_utils.py@v0.27.1 ``get_kv_cache_groups`` L1781-1852,
    ``_get_kv_cache_groups_uniform_page_size`` L1140-1280 (group size L1246-1256); @v0.17.0 L1040-1049;
    @v0.9.1 ``_get_kv_cache_config_uniform_page_size`` L825;
    vllm/model_executor/models/llama.py@v0.27.1 L182-201 (a layer slides only when the config has ``layer_types``).
    Assumes: models whose every layer slides (Mistral-7B-v0.1: no ``layer_types`` in its HF config) run as full
    attention in vLLM, as llama.py reads the window only from ``layer_types``; pre-hybrid versions (V0) keep every
    token in every layer.
    Checked by: tests/memory/test_vllm.py::test_gemma2_hybrid_groups
    """
    n_sliding = sum(1 for t in spec.layer_types if t == AttentionType.SLIDING)
    n_full = spec.num_hidden_layers - n_sliding
    mixed = n_sliding and n_full and spec.sliding_window
    if not mixed or not cfg.behaviour.hybrid_allocator:
        return KvLayout(group_size=spec.num_hidden_layers, num_full_groups=1, num_sliding_groups=0, sliding_window=0)
    small, large = min(n_full, n_sliding), max(n_full, n_sliding)
    group = large if 100 * large < cfg.behaviour.group_max_ratio_pct * small else small
    return KvLayout(group_size=group, num_full_groups=-(-n_full // group), num_sliding_groups=-(-n_sliding // group),
                    sliding_window=int(spec.sliding_window or 0))


def blocks_per_request(spec: ModelSpec, cfg: VllmConfig, length: int) -> int:
    """Blocks (of the shared pool) one request of ``length`` tokens takes: Σ over groups.

        full group:    ceil(length / block_size)
        sliding group: ceil(min(window − 1 + in_flight_batches × max_num_batched_tokens, length) / block_size) + 1

    Source: vllm/v1/kv_cache_interface.py@v0.27.1 ``FullAttentionSpec.max_memory_usage_bytes`` L266-271,
    ``SlidingWindowSpec.max_admission_blocks_per_request`` L586-608 (v0.17.0 L256-270 uses one batch);
    kv_cache_utils.py ``get_max_concurrency_for_kv_cache_config`` L937-959.
    Checked by: tests/memory/test_vllm.py::test_gemma2_hybrid_groups
    """
    layout = kv_layout(spec, cfg)
    full = -(-length // cfg.block_size)
    in_flight = cfg.behaviour.in_flight_batches * cfg.max_num_batched_tokens
    window_tokens = min(layout.sliding_window - 1 + in_flight, length)
    sliding = -(-window_tokens // cfg.block_size) + 1
    return layout.num_full_groups * full + layout.num_sliding_groups * sliding


def vllm_source(version: str, path: str, detail: str) -> Source:
    """A code citation into vLLM at ``version``."""
    return code(_src(behaviour(version).version, path), detail)
