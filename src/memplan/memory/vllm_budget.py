"""vLLM's KV-cache budget, capacity and start-up checks, and the memory of one engine GPU, per version.

At start-up every version computes (``determine_available_memory`` / V0 ``determine_num_available_blocks``):

    requested = ceil(total × u)                                     (0.17+; the float product before)
    kv_budget = requested − weights − activation_peak − non_torch − cuda_graph_estimate

with ``total`` = cudaMemGetInfo total (catalogue ``runtime_total_bytes``); ``activation_peak`` the torch peak of
the dummy forward + sampler (:func:`profile_peak_bytes`); ``non_torch`` what appears outside torch after the
memory snapshot (workspaces; V0 also NCCL; 0.6.4 also other processes); ``cuda_graph_estimate`` only in 0.27.1
on the V1 runner (MoE). Outside ``requested``: the engine's CUDA context and (0.17+) NCCL, created before the
snapshot, and CUDA graphs not estimated in the budget. Constants tie to ``validation/published/vllm/`` records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from memplan.dtypes import bytes_for
from memplan.memory import overhead
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.memory.vllm import (
    OPENRLHF_ENGINE, VllmConfig, VllmRunner, blocks_per_request, kv_layout, page_size_bytes, runner_for,
    vllm_source, weight_bytes_per_rank,
)
from memplan.model.spec import ModelSpec
from memplan.sources import Source, code, measurement
from memplan.units import GiB, MiB

_REC = "validation/published/vllm/"

#: [T, H] activations live at the forward peak next to the MLP intermediates. Two are read in the code
#: (vllm/model_executor/models/llama.py: the residual and the normed MLP input); the third is fitted so the
#: two logged peaks of vllm#10517 (20k and 29k tokens) agree to 0.5 %.
#: Records: issue10517-llama3.1-8b-rtx3090-20k.toml, issue10517-llama3.1-8b-rtx3090-29k.toml
FORWARD_HIDDEN_COPIES = 3
#: MLP intermediates per token: gate_up output (2·I/tp) and the SiluAndMul output (I/tp) (llama.py LlamaMLP).
FORWARD_MLP_COPIES = 3
#: Peak bytes per logit of the dummy sampler run ([rows, V]: bf16 logits, fp32 copy, top-k/top-p sort values
#: and int64 indices, probabilities): (1.26 GiB − 64 MiB hidden states) / (256 × 128256) = 39.2, from a run whose
#: activation peak is the sampler's at both TP 1 and TP 2. Record: pr10511-llama3-8b-tp1.toml (V0 sampler).
SAMPLER_BYTES_PER_LOGIT = 39
#: Non-torch memory of a one-GPU engine created after the snapshot (cuBLAS/attention workspaces): 0.16 GiB in
#: two 80 GB runs. Records: gaie-pr550-a100-80g.toml, mellea-pr416-a100-80g.toml
NON_TORCH_BYTES = int(0.16 * GiB)
#: NCCL + custom all-reduce buffers counted as non-torch when the snapshot precedes NCCL init (V0):
#: 3.58 − 1.79 GiB between TP 2 and TP 1 of the same run. Records: pr10511-llama3-8b-tp2.toml, -tp1.toml
V0_TP_NON_TORCH_BYTES = int(1.79 * GiB)
#: CUDA-graph memory per decoder layer at TP 1: 0.21 GiB / 16 layers (Llama-3.2-1B, 35 graphs).
#: Record: pr11349-llama3.2-1b-cuda-graphs.toml
CUDA_GRAPH_BYTES_PER_LAYER_TP1 = int(0.21 * GiB) // 16
#: CUDA-graph memory per decoder layer at TP > 1 (custom all-reduce buffers per graph): 2464 MiB / 60 layers
#: (Yi-1.5-34B, TP 4). Record: issue7553-yi34b-tp4-cuda-graphs.toml
CUDA_GRAPH_BYTES_PER_LAYER_TP = 2464 * MiB // 60

_BUDGET_SRC = ("vllm/v1/worker/gpu_worker.py", "determine_available_memory")
_V0_WORKER = ("vllm/worker/worker.py", "determine_num_available_blocks")


def _is_v0(cfg: VllmConfig) -> bool:
    return cfg.behaviour.runner_dense == VllmRunner.V0


def _worker_source(cfg: VllmConfig, detail: str) -> Source:
    path, fn = _V0_WORKER if _is_v0(cfg) else _BUDGET_SRC
    return vllm_source(cfg.vllm_version, path, f"{fn}: {detail}")


def forward_peak_bytes(spec: ModelSpec, cfg: VllmConfig) -> int:
    """Peak activations of the dummy forward over ``T = max_num_batched_tokens`` tokens on one rank.

        dense:  T × (3·H + 3·I/tp) × 2 B          (residual, MLP input, one more [T,H]; gate_up 2I/tp, act I/tp)
        MoE:    T × (3·H + k·(3·I_e/tp + H)) × 2 B (fused_moe caches: [T,k,2I_e/tp], [T·k,I_e/tp], [T,k,H])

    Source: vllm/v1/worker/gpu_model_runner.py@v0.27.1 ``profile_run`` L6433 (``_dummy_run(max_num_tokens,
    is_profile=True)``); v1/worker/gpu/model_runner.py L719-721; model code llama.py ``LlamaMLP``.
    Assumes: attention temporaries (q,k,v: (q+2kv)/tp per token) are below the MLP peak; torch.compile fusions
    ignored; the MoE branch is unvalidated.
    Checked by: tests/memory/test_vllm.py::test_forward_peak_matches_issue10517
    """
    tp, h, t = cfg.tensor_parallel_size, spec.hidden_size, cfg.max_num_batched_tokens
    dense = FORWARD_HIDDEN_COPIES * h + FORWARD_MLP_COPIES * spec.intermediate_size // tp
    per_token = dense
    if spec.is_moe and spec.moe is not None:
        moe = spec.moe
        per_token = max(dense, FORWARD_HIDDEN_COPIES * h
                        + moe.num_experts_per_tok * (FORWARD_MLP_COPIES * moe.moe_intermediate_size // tp + h))
    return bytes_for(t * per_token, cfg.weight_dtype)


def sampler_peak_bytes(spec: ModelSpec, cfg: VllmConfig) -> int:
    """Peak of the dummy sampler run: rows = min(max_num_seqs, max_num_batched_tokens) full-vocab logits.

        bytes = rows × V × SAMPLER_BYTES_PER_LOGIT + T × H × 2 B (the forward's hidden states, still alive)

    Source: vllm/v1/worker/gpu_model_runner.py@v0.27.1 ``_dummy_sampler_run`` L6242-6302 (temperature 0.5,
    top_p 0.9, top_k V−1: the top-k/top-p path runs); ``_dummy_run`` L571 (rows = min(tokens, max_num_reqs)).
    Assumes: logits are gathered over TP (full V on every rank); the per-logit constant was measured on the V0
    sampler and is used for V1/V2 unchanged.
    Checked by: tests/memory/test_vllm.py::test_profile_peak_matches_pr10511
    """
    rows = min(cfg.max_num_seqs, cfg.max_num_batched_tokens)
    hidden = bytes_for(cfg.max_num_batched_tokens * spec.hidden_size, cfg.weight_dtype)
    return rows * spec.vocab_size * SAMPLER_BYTES_PER_LOGIT + hidden


def profile_peak_bytes(spec: ModelSpec, cfg: VllmConfig) -> int:
    """The "PyTorch activation peak" vLLM subtracts: max(forward peak, sampler peak).

    Source: see :func:`forward_peak_bytes` and :func:`sampler_peak_bytes` (the sampler runs after the forward
    has freed its intermediates).
    Checked by: tests/memory/test_vllm.py::test_profile_peak_matches_pr10511
    """
    return max(forward_peak_bytes(spec, cfg), sampler_peak_bytes(spec, cfg))


def non_torch_bytes(cfg: VllmConfig) -> int:
    """Non-torch memory inside the budget on one rank.

        NON_TORCH_BYTES (+ V0_TP_NON_TORCH_BYTES when tp > 1 and the version snapshots before NCCL init)

    Source: records gaie-pr550 / mellea-pr416 (0.16 GiB) and pr10511 tp1/tp2 (NCCL + custom all-reduce);
    vllm/worker/worker.py@v0.7.3 L161-166 (snapshot, then NCCL) vs v1/worker/gpu_worker.py@v0.27.1 L373-396
    (NCCL, then snapshot).
    Assumes: one value for every GPU and model (the logs range 0.03-0.35 GiB at TP 1; pr10511 shows 1.79).
    Checked by: tests/memory/test_vllm.py::test_non_torch_tied_to_records
    """
    extra = V0_TP_NON_TORCH_BYTES if cfg.tensor_parallel_size > 1 and cfg.behaviour.nccl_in_budget else 0
    return NON_TORCH_BYTES + extra


def cuda_graph_bytes(spec: ModelSpec, cfg: VllmConfig) -> int:
    """CUDA-graph pool of one rank: 0 with ``enforce_eager``, else L × per-layer cost (TP 1 or TP > 1 record).

    Source: records pr11349 (TP 1) and issue7553 (TP 4); vLLM's own V0 warning "CUDA graphs can take
    additional 1~3 GiB memory per GPU" (record mlcommons-inference-issue2408).
    Assumes: cost proportional to decoder layers; capture sizes (max_num_seqs) and V1 piecewise graphs not modelled.
    Checked by: tests/memory/test_vllm.py::test_cuda_graphs_by_version
    """
    if cfg.enforce_eager:
        return 0
    per_layer = CUDA_GRAPH_BYTES_PER_LAYER_TP1 if cfg.tensor_parallel_size == 1 else CUDA_GRAPH_BYTES_PER_LAYER_TP
    return spec.num_hidden_layers * per_layer


def cuda_graph_in_budget(spec: ModelSpec, cfg: VllmConfig) -> bool:
    """Whether the version subtracts its CUDA-graph estimate from the KV budget.

    0.27.1: yes on the V1 runner (``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`` defaults to 1, gpu_worker.py
    L512-548); the V2 runner (dense models) returns 0 from ``profile_cudagraph_memory`` (gpu/model_runner.py
    L749-751), so its graphs land outside the budget. 0.17.0 and V0: never (graphs are captured in
    ``compile_or_warm_up_model`` after the KV cache exists).
    Checked by: tests/memory/test_vllm.py::test_cuda_graphs_by_version
    """
    return (not cfg.enforce_eager and cfg.behaviour.cudagraph_estimate_default
            and runner_for(spec, cfg.vllm_version) == VllmRunner.V1)


def requested_bytes(cfg: VllmConfig, total_gpu_bytes: int) -> int:
    """The engine's share: ``ceil(total × u)`` (0.17+, ``request_memory``) or ``int(total × u)`` (V0 float).

    Source: vllm/v1/worker/utils.py@v0.27.1 ``request_memory`` L409-430; vllm/worker/worker.py@v0.7.3 L233-234.
    Checked by: tests/memory/test_vllm.py::test_budget_formula_worked_example
    """
    product = total_gpu_bytes * cfg.gpu_memory_utilization
    return math.ceil(product) if cfg.behaviour.requested_ceil else int(product)


def kv_budget_from_components(cfg: VllmConfig, total_gpu_bytes: int, *, weights: int, activation_peak: int,
                              non_torch: int, cuda_graph_estimate: int = 0) -> int:
    """vLLM's KV budget from its components (may be negative: then vLLM refuses to start).

        kv = requested − weights − activation_peak − non_torch − cuda_graph_estimate

    Source: vllm/v1/worker/gpu_worker.py@v0.27.1 L544-548 and utils/mem_utils.py L317-326 (``non_kv_cache_memory
    = total_consumed + transient_peak_headroom``: the same three parts measured from mem_get_info);
    @v0.17.0 L407-409 with mem_utils ``non_kv_cache_memory = non_torch + peak_activation + weights``;
    vllm/worker/worker.py@v0.7.3 L233-236; @v0.6.4.post1 L200-217 (``peak_torch`` includes the weights).
    Checked by: tests/memory/test_vllm.py::test_budget_formula_worked_example, ::test_published_kv_formula
    """
    return requested_bytes(cfg, total_gpu_bytes) - weights - activation_peak - non_torch - cuda_graph_estimate


def kv_cache_budget_bytes(spec: ModelSpec, cfg: VllmConfig, total_gpu_bytes: int, *,
                          other_process_bytes: int = 0) -> int:
    """The KV budget memplan predicts for one rank (every component from memplan's formulas).

    ``other_process_bytes`` (memory other processes hold at start-up) lowers the budget only in 0.6.4, which
    counts it as non-torch; later versions refuse to start instead (:func:`startup_check`).
    Source: :func:`kv_budget_from_components`.
    Checked by: tests/memory/test_vllm.py::test_budget_llama3_8b_openrlhf_defaults
    """
    others = other_process_bytes if cfg.behaviour.others_in_budget else 0
    graphs = cuda_graph_bytes(spec, cfg) if cuda_graph_in_budget(spec, cfg) else 0
    return kv_budget_from_components(
        cfg, total_gpu_bytes, weights=weight_bytes_per_rank(spec, cfg.tensor_parallel_size, cfg.weight_dtype),
        activation_peak=profile_peak_bytes(spec, cfg), non_torch=non_torch_bytes(cfg) + others,
        cuda_graph_estimate=graphs)


@dataclass(frozen=True, slots=True, kw_only=True)
class KvCapacity:
    """What a KV budget buys on one rank."""

    num_blocks: int
    """Blocks in the shared pool (``budget // page // group_size``)."""
    pool_bytes: int
    """Bytes the KV tensors take (``num_blocks × page × group_size``; ≤ budget)."""
    blocks_per_seq: int
    """Blocks one ``max_model_len`` request needs across all groups."""
    max_concurrency: float
    """``num_blocks / blocks_per_seq``: vLLM's "Maximum concurrency for L tokens per request"."""
    seqs_at_max_len: int
    """Requests of ``max_model_len`` tokens that fit at once (floor of the concurrency)."""
    num_tokens: int
    """vLLM's "GPU KV cache size: N tokens" for this version."""


def kv_capacity(spec: ModelSpec, cfg: VllmConfig, kv_budget: int) -> KvCapacity:
    """Blocks, tokens and concurrent ``max_model_len`` sequences a budget holds.

        num_blocks = max(kv_budget // page // group_size, 0)
        concurrency = num_blocks / Σ_groups blocks(max_model_len)
        tokens = int(concurrency × max_model_len)       (0.27.1)
               = num_blocks // num_groups × block_size  (0.17.0; V0: num_blocks × block_size)

    Source: vllm/v1/core/kv_cache_utils.py@v0.27.1 ``get_num_blocks`` L993-1010, ``get_kv_cache_config_from_groups``
    L1361-1443, ``get_max_concurrency_for_kv_cache_config`` L937-959, ``get_kv_cache_capacity`` L1877-1887;
    @v0.17.0 ``_report_kv_cache_config`` L1282-1314; vllm/worker/worker.py@v0.7.3 L240-249.
    Checked by: tests/memory/test_vllm.py::test_budget_llama3_8b_openrlhf_defaults,
    ::test_capacity_hand_computed_v17_tokens, ::test_published_blocks
    """
    layout = kv_layout(spec, cfg)
    page = page_size_bytes(spec, cfg)
    num_blocks = max(kv_budget // page // layout.group_size, 0)
    per_seq = blocks_per_request(spec, cfg, cfg.max_model_len)
    concurrency = num_blocks / per_seq
    if cfg.behaviour.tokens_from_concurrency:
        tokens = int(concurrency * cfg.max_model_len)
    else:
        tokens = num_blocks // (layout.num_full_groups + layout.num_sliding_groups) * cfg.block_size
    return KvCapacity(num_blocks=num_blocks, pool_bytes=num_blocks * page * layout.group_size,
                      blocks_per_seq=per_seq, max_concurrency=concurrency, seqs_at_max_len=num_blocks // per_seq,
                      num_tokens=tokens)


def kv_capacity_tokens(spec: ModelSpec, cfg: VllmConfig, total_gpu_bytes: int) -> int:
    """vLLM's "GPU KV cache size" for memplan's predicted budget. Source: :func:`kv_capacity`."""
    return kv_capacity(spec, cfg, kv_cache_budget_bytes(spec, cfg, total_gpu_bytes)).num_tokens


def kv_capacity_seqs(spec: ModelSpec, cfg: VllmConfig, total_gpu_bytes: int) -> int:
    """``max_model_len`` sequences the predicted budget holds at once. Source: :func:`kv_capacity`."""
    return kv_capacity(spec, cfg, kv_cache_budget_bytes(spec, cfg, total_gpu_bytes)).seqs_at_max_len


class StartupStatus(StrEnum):
    """Outcome of engine start-up."""

    OK = "ok"
    """The engine starts."""
    INSUFFICIENT_FREE_MEMORY = "insufficient_free_memory"
    """Free memory at the snapshot is below ``ceil(total × u)`` (0.17+)."""
    NO_KV_MEMORY = "no_kv_memory"
    """The KV budget is ≤ 0 (V0: zero blocks)."""
    MAX_MODEL_LEN_TOO_LARGE = "max_model_len_too_large"
    """One ``max_model_len`` request does not fit in the KV cache."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StartupCheck:
    """What vLLM decides at start-up, with its message."""

    status: StartupStatus
    """The outcome."""
    message: str
    """vLLM's error text for this version (empty when OK)."""
    free_bytes: int
    """Free device memory at the engine's memory snapshot."""
    requested_bytes: int
    """The engine's share ``total × u``."""
    kv_budget_bytes: int
    """The predicted KV budget."""


def _gib(value: int) -> str:
    """vLLM's ``format_gib``: ``round(b / GiB, 2)`` as Python prints it."""
    return f"{round(value / GiB, 2)}"


def max_len_that_fits(spec: ModelSpec, cfg: VllmConfig, kv_budget: int) -> int:
    """Longest request the budget holds (vLLM's ``estimate_max_model_len`` binary search; 0 if none).

    Source: vllm/v1/core/kv_cache_utils.py@v0.27.1 L800-851.
    Checked by: tests/memory/test_vllm.py::test_startup_max_model_len_too_large
    """
    layout, page = kv_layout(spec, cfg), page_size_bytes(spec, cfg)
    lo, hi, best = 1, cfg.max_model_len, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if blocks_per_request(spec, cfg, mid) * page * layout.group_size <= kv_budget:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def free_memory_message(cfg: VllmConfig, free: int, total: int, requested: int, device: str = "cuda:0") -> str:
    """vLLM's start-up error when other processes hold memory (``request_memory``, v1/worker/utils.py@v0.27.1
    L418-426; same text at v0.17.0 L225-233)."""
    return (f"Free memory on device {device} ({_gib(free)}/{_gib(total)} GiB) on startup is less than desired "
            f"GPU memory utilization ({cfg.gpu_memory_utilization}, {_gib(requested)} GiB).")


def startup_check(spec: ModelSpec, cfg: VllmConfig, total_gpu_bytes: int, *,
                  other_process_bytes: int = 0) -> StartupCheck:
    """Will the engine start on a GPU where other processes already hold ``other_process_bytes``?

    1. (0.17+) free at the snapshot = total − others − own CUDA context − own NCCL (tp > 1) must be ≥
       ``ceil(total × u)``: "Free memory on device ... is less than desired GPU memory utilization".
    2. budget ≤ 0: "No available memory for the cache blocks."
    3. one ``max_model_len`` request must fit: V1 "To serve at least one request with the model's max seq len
       (L), (X GiB KV cache is needed, ...)"; V0 "The model's max seq len (L) is larger than the maximum number
       of tokens that can be stored in KV cache (N)."

    Source: vllm/v1/worker/utils.py@v0.27.1 L409-430; gpu_worker.py L373-396 (snapshot after NCCL);
    kv_cache_utils.py L751-788 (@v0.17.0 L620-650 spells "models's"); vllm/worker/worker.py@v0.7.3 L535-549.
    Assumes: the engine's own pre-snapshot memory is one CUDA context (memory/overhead.py) plus one NCCL
    communicator when tp > 1; other processes do not change their memory during profiling.
    Checked by: tests/memory/test_vllm.py::test_startup_*
    """
    b = cfg.behaviour
    requested = requested_bytes(cfg, total_gpu_bytes)
    own = overhead.CUDA_CONTEXT_BYTES
    if cfg.tensor_parallel_size > 1 and not b.nccl_in_budget:
        own += overhead.NCCL_COMMUNICATOR_BYTES
    free = total_gpu_bytes - other_process_bytes - own
    budget = kv_cache_budget_bytes(spec, cfg, total_gpu_bytes, other_process_bytes=other_process_bytes)

    def result(status: StartupStatus, message: str = "") -> StartupCheck:
        return StartupCheck(status=status, message=message, free_bytes=free, requested_bytes=requested,
                            kv_budget_bytes=budget)

    if b.startup_free_check and free < requested:
        message = free_memory_message(cfg, free, total_gpu_bytes, requested)
        return result(StartupStatus.INSUFFICIENT_FREE_MEMORY, message)
    cap = kv_capacity(spec, cfg, budget)
    if budget <= 0 or cap.num_blocks == 0:
        return result(StartupStatus.NO_KV_MEMORY, "No available memory for the cache blocks.")
    if cap.blocks_per_seq > cap.num_blocks:
        return result(StartupStatus.MAX_MODEL_LEN_TOO_LARGE, _too_long_message(spec, cfg, budget, cap))
    return result(StartupStatus.OK)


def _too_long_message(spec: ModelSpec, cfg: VllmConfig, budget: int, cap: KvCapacity) -> str:
    if _is_v0(cfg):
        return (f"The model's max seq len ({cfg.max_model_len}) is larger than the maximum number of tokens that "
                f"can be stored in KV cache ({cap.num_blocks * cfg.block_size}).")
    needed = cap.blocks_per_seq * page_size_bytes(spec, cfg) * kv_layout(spec, cfg).group_size
    model = "models's" if cfg.vllm_version == "0.17.0" else "model's"
    return (f"To serve at least one request with the {model} max seq len ({cfg.max_model_len}), "
            f"({_gib(needed)} GiB KV cache is needed, which is larger than the available KV cache memory "
            f"({_gib(budget)} GiB). Based on the available memory, the estimated maximum model length is "
            f"{max_len_that_fits(spec, cfg, budget)}.")


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutDemand:
    """Rollout sequences one engine must generate against what its KV cache holds at once."""

    seqs_per_engine: int
    """``ceil(rollout_batch_size × n_samples_per_prompt / num_engines)``."""
    concurrent_seqs: int
    """Sequences running at once at ``max_model_len``: min(max_num_seqs, KV capacity)."""
    waves: int
    """``ceil(seqs_per_engine / concurrent_seqs)``: 1 = all at once; more = queued (slower, not an OOM)."""
    note: str
    """A throughput note for reports."""


def rollout_demand(spec: ModelSpec, cfg: VllmConfig, total_gpu_bytes: int, *, rollout_batch_size: int,
                   n_samples_per_prompt: int, num_engines: int) -> RolloutDemand:
    """Sequences per engine vs. concurrent capacity. Memory is bounded by the KV budget either way: vLLM queues
    (or preempts) what does not fit, so more waves cost time, not memory.

        seqs = ceil(B × n / E);  concurrent = min(max_num_seqs, floor(num_blocks / blocks(max_model_len)))

    Source: OpenRLHF samples_generator.py@3c3be62 L100-120 (one generate call over the rollout batch);
    vllm/v1/core/sched/scheduler.py@v0.27.1 L109 (``max_num_running_reqs = max_num_seqs``), ``schedule`` L439-599
    (admits while blocks allow, preempts when they run out).
    Assumes: every sequence reaches max_model_len (worst case; shorter ones pack more).
    Checked by: tests/memory/test_vllm.py::test_rollout_demand_waves
    """
    seqs = -(-rollout_batch_size * n_samples_per_prompt // max(num_engines, 1))
    cap = kv_capacity(spec, cfg, kv_cache_budget_bytes(spec, cfg, total_gpu_bytes))
    concurrent = min(cfg.max_num_seqs, cap.seqs_at_max_len)
    waves = -(-seqs // concurrent) if concurrent else 0
    bound = "max_num_seqs" if cfg.max_num_seqs <= cap.seqs_at_max_len else "the KV cache"
    note = (f"{seqs} sequences per engine, {concurrent} at once at max_len ({bound} binds): "
            + ("all run concurrently" if waves == 1 else f"{waves} waves; throughput, not memory"))
    return RolloutDemand(seqs_per_engine=seqs, concurrent_seqs=concurrent, waves=waves, note=note)


def engine_gpu_terms(spec: ModelSpec, cfg: VllmConfig, total_gpu_bytes: int, *, path: str = "rollout",
                     phase_when_awake: Phase = Phase.ROLLOUT) -> list[Term]:
    """One GPU (one TP rank) of one engine, phase by phase. No sleep: all persistent. Sleep level 1: weights in
    ``phase_when_awake`` and WEIGHT_SYNC (OpenRLHF wakes only "weights" before the sync and leaves them awake until
    the next generation), the KV pool in ``phase_when_awake`` only. The rest stays: sleep releases only the
    "weights"/"kv_cache" CuMem pools and does not empty torch's cache (activations, CUDA graphs, non-torch,
    context, NCCL remain).

    Source: vllm/device_allocator/cumem.py@v0.27.1 ``sleep`` L229-281, ``wake_up`` L283-310;
    sleep_mode_backend.py L120-139 ("NCCL live outside CuMemAllocator's pool"); gpu_worker.py L192-225, L437,
    L664 (pools tagged "weights"/"kv_cache"); OpenRLHF ppo_trainer.py@3c3be62 L300-319, samples_generator.py
    L105-121.
    Checked by: tests/memory/test_vllm.py::test_engine_terms_sleep_phases
    """
    budget = kv_cache_budget_bytes(spec, cfg, total_gpu_bytes)
    cap = kv_capacity(spec, cfg, budget)
    sleeping = cfg.sleep_level == 1
    weights_src = vllm_source(cfg.vllm_version, "vllm/model_executor/layers/linear.py", "TP shards")
    kv_src = vllm_source(cfg.vllm_version, "vllm/v1/core/kv_cache_utils.py", "get_kv_cache_config_from_groups")
    weights = weight_bytes_per_rank(spec, cfg.tensor_parallel_size, cfg.weight_dtype)

    def term(name: str, nbytes: int, category: Category, source: Source, phase: Phase | None = None) -> Term:
        return Term(path=f"{path}.{name}", bytes=nbytes, category=category, device=Device.GPU, source=source,
                    phase=phase)

    terms = ([term("weights", weights, Category.PARAM, weights_src, p) for p in (phase_when_awake, Phase.WEIGHT_SYNC)]
             if sleeping else [term("weights", weights, Category.PARAM, weights_src)])
    terms.append(term("kv_cache", cap.pool_bytes, Category.KV_CACHE, kv_src, phase_when_awake if sleeping else None))
    terms.append(term("activations", profile_peak_bytes(spec, cfg), Category.TEMP,
                      _worker_source(cfg, "profile_run peak (kept in torch's cache)")))
    terms.append(term("non_torch", non_torch_bytes(cfg), Category.OVERHEAD,
                      measurement(_REC + "gaie-pr550-a100-80g.toml", "non-torch memory, one GPU")))
    if graphs := cuda_graph_bytes(spec, cfg):
        terms.append(term("cuda_graphs", graphs, Category.OVERHEAD,
                          measurement(_REC + "pr11349-llama3.2-1b-cuda-graphs.toml", "graph pool per layer")))
    terms.append(overhead.cuda_context(f"{path}.cuda_context"))
    if not cfg.behaviour.nccl_in_budget:
        terms += overhead.nccl_buffers(f"{path}.nccl", cfg.tensor_parallel_size)
    return terms


def sleep_released_bytes(spec: ModelSpec, cfg: VllmConfig, total_gpu_bytes: int) -> int:
    """What ``sleep(level=1)`` frees on one GPU: the "weights" and "kv_cache" CuMem pools (vLLM's log "Sleep mode
    freed X GiB"). Source: cumem.py@v0.27.1 L229-281. Checked by: ::test_engine_terms_sleep_phases"""
    cap = kv_capacity(spec, cfg, kv_cache_budget_bytes(spec, cfg, total_gpu_bytes))
    return weight_bytes_per_rank(spec, cfg.tensor_parallel_size, cfg.weight_dtype) + cap.pool_bytes


def engine_host_terms(spec: ModelSpec, cfg: VllmConfig, *, path: str = "rollout") -> list[Term]:
    """Host RAM of one engine rank beyond its process baseline (memory/host.py ``process_runtime``).

    Sleep level 1 copies the "weights" pool into pinned host tensors (``pin_memory=PIN_MEMORY``). ``wake_up``
    drops the tensors, but PyTorch's caching host allocator keeps freed pinned blocks for reuse, and OpenRLHF
    puts the engines to sleep right after creating them, so the shard is counted in every phase.

        bytes = weight_bytes_per_rank (bf16 shard incl. rotary cache)

    Source: vllm/device_allocator/cumem.py@v0.27.1 L251-265 (cpu_backup_tensor, pinned), L302-310;
    OpenRLHF vllm_engine.py@3c3be62 L310-311 (sleep after creation).
    Assumes: pinned blocks are not returned to the OS between sleeps (torch CachingHostAllocator) — inference.
    Checked by: tests/memory/test_vllm.py::test_engine_host_terms
    """
    if cfg.sleep_level != 1:
        return []
    src = code(f"{OPENRLHF_ENGINE}", "create_vllm_engines: enable_sleep_mode, sleep() after creation")
    return [Term(path=f"{path}.sleeping_weights", bytes=weight_bytes_per_rank(spec, cfg.tensor_parallel_size,
                                                                              cfg.weight_dtype),
                 category=Category.PARAM, device=Device.CPU, source=src)]

