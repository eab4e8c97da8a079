"""vLLM's KV-cache budget, capacity and start-up checks, and the memory of one engine GPU, per version.

At start-up every version computes (``determine_available_memory`` / V0 ``determine_num_available_blocks``):

    requested = ceil(total × u)                                     (0.17+; the float product before)
    kv_budget = requested − weights − activation_peak − non_torch − cuda_graph_estimate

with ``total`` = cudaMemGetInfo total (catalogue ``runtime_total_bytes``); ``activation_peak`` the torch peak of
the dummy forward + sampler (:func:`profile_peak_bytes`); ``non_torch`` what appears outside torch after the
memory snapshot (workspaces; 0.9.1 and V0 also NCCL; 0.6.4 also the CUDA context and other processes);
``cuda_graph_estimate`` only in 0.27.1 on the V1 runner (MoE).

Outside ``requested`` (what the engine holds beyond ``total × u``; read from each version's worker):

    version   CUDA context   NCCL + custom all-reduce (tp > 1)   CUDA graphs
    0.6.4     inside         inside                              outside (captured after the KV cache)
    0.7.3     outside        inside (snapshot precedes NCCL)     outside
    0.9.1     outside        inside (snapshot precedes NCCL)     outside
    0.17.0    outside        outside (NCCL precedes snapshot)    outside
    0.27.1    outside        outside                             inside for the V1 runner (estimate), else outside

Constants tie to ``validation/published/vllm/`` records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from memplan.dtypes import bytes_for
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.memory.host_alloc import ALLOCATOR_SOURCE, pinned_block_bytes
from memplan.memory.vllm import (
    OPENRLHF_ENGINE, VllmConfig, VllmRunner, blocks_per_request, kv_layout, page_size_bytes, runner_for,
    vllm_source, weight_allocations_per_rank, weight_bytes_per_rank,
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
#: A hand count of the tensors alive inside the sampler's sort gives 38 (tests/memory/test_vllm.py
#: ::test_sampler_peak_hand_counted_from_vllm_v0_source); the remaining 1.2 B per logit of the record is
#: not attributed to a tensor.
SAMPLER_BYTES_PER_LOGIT = 39
#: Non-torch memory of a one-GPU engine created after the snapshot (cuBLAS/attention workspaces): 0.16 GiB in
#: two 80 GB runs. Records: gaie-pr550-a100-80g.toml, mellea-pr416-a100-80g.toml
NON_TORCH_BYTES = int(0.16 * GiB)
#: NCCL + custom all-reduce buffers counted as non-torch when the snapshot precedes NCCL init (V0):
#: 3.58 − 1.79 GiB between TP 2 and TP 1 of the same run. Records: pr10511-llama3-8b-tp2.toml, -tp1.toml
V0_TP_NON_TORCH_BYTES = int(1.79 * GiB)
#: V0 CUDA-graph memory per decoder layer at TP 1: 0.21 GiB / 16 layers (Llama-3.2-1B, 35 graphs).
#: Record: pr11349-llama3.2-1b-cuda-graphs.toml
CUDA_GRAPH_BYTES_PER_LAYER_TP1 = int(0.21 * GiB) // 16
#: V0 CUDA-graph memory per decoder layer at TP > 1 (custom all-reduce buffers per graph): 2464 MiB / 60 layers
#: (Yi-1.5-34B, TP 4). Record: issue7553-yi34b-tp4-cuda-graphs.toml
CUDA_GRAPH_BYTES_PER_LAYER_TP = 2464 * MiB // 60
#: V1/V2-runner CUDA-graph memory per decoder layer at TP 1 ("Graph capturing finished ..., took 0.65 GiB",
#: gemma-3-4b: 34 layers, B200). Record: pr21489-gemma3-4b-b200-startup.toml
CUDA_GRAPH_BYTES_PER_LAYER_V1_TP1 = int(0.65 * GiB) // 34
#: V1/V2-runner CUDA-graph memory per decoder layer at TP > 1: "took 2.65 GiB" / 80 layers (Qwen2.5-VL-72B,
#: TP 4, 67 capture sizes, vLLM 0.8.3). Record: issue16570-qwen25vl-72b-tp4-cuda-graphs.toml
#: (checked by issue18136-qwen3-32b-tp4-cuda-graphs.toml: 64 layers, 2.28 GiB logged, 2.12 predicted).
CUDA_GRAPH_BYTES_PER_LAYER_V1_TP = int(2.65 * GiB) // 80
#: Device memory a vLLM worker holds before its memory snapshot at TP 1 (CUDA context, loaded modules): the
#: start-up line "Free memory on device (177.66/178.36 GiB)" of an idle B200 gives 178.36 − 177.66 = 0.70 GiB.
#: Record: pr21489-gemma3-4b-b200-startup.toml
VLLM_CUDA_CONTEXT_BYTES = round((178.36 - 177.66) * GiB)
#: GPU memory of the one NCCL communicator a TP worker warms up (``PyNcclCommunicator``), 4 A100 with NVLink,
#: after a 4 MB all-reduce: 544 MB in a 2-rank group, 688 MB in a larger one (read as MiB).
#: Record: nccl-issue964-a100-nvlink-groups.toml
NCCL_TP2_COMMUNICATOR_BYTES = 544 * MiB
NCCL_TP_WIDE_COMMUNICATOR_BYTES = 688 * MiB
#: Custom all-reduce buffers of one rank: ``meta`` (meta_size + max_size), ``buffer`` (max_size) and
#: ``rank_data`` (8 MiB), max_size = 8 MiB; the small Signal struct (``meta_size``) is ignored.
#: Source: vllm/distributed/device_communicators/custom_all_reduce.py@v0.17.0 L59, L176-190
CUSTOM_ALLREDUCE_BYTES = 3 * 8 * MiB
#: 0.6.4 measures the CUDA context with the other non-torch memory: 0.35 GiB on a one-GPU RTX 3090 run
#: ("non_torch_memory=0.35GiB"). Records: issue10517-llama3.1-8b-rtx3090-20k.toml, -29k.toml
V064_NON_TORCH_BYTES = int(0.35 * GiB)

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
    Checked by: tests/memory/test_vllm.py::test_sampler_peak_hand_counted_from_vllm_v0_source
    """
    rows = min(cfg.max_num_seqs, cfg.max_num_batched_tokens)
    hidden = bytes_for(cfg.max_num_batched_tokens * spec.hidden_size, cfg.weight_dtype)
    return rows * spec.vocab_size * SAMPLER_BYTES_PER_LOGIT + hidden


def profile_peak_bytes(spec: ModelSpec, cfg: VllmConfig) -> int:
    """The "PyTorch activation peak" vLLM subtracts: max(forward peak, sampler peak).

    Source: see :func:`forward_peak_bytes` and :func:`sampler_peak_bytes` (the sampler runs after the forward
    has freed its intermediates).
    Checked by: tests/memory/test_vllm.py::test_profile_peak_does_not_change_with_tp_as_pr10511_logs
    """
    return max(forward_peak_bytes(spec, cfg), sampler_peak_bytes(spec, cfg))


def tp_communicator_bytes(cfg: VllmConfig) -> int:
    """NCCL + custom all-reduce memory of one TP rank (0 at tp = 1).

        V0:   V0_TP_NON_TORCH_BYTES                                  (measured: TP 2 − TP 1 non-torch)
        V1:   NCCL communicator (544 MiB at tp = 2, 688 MiB above) + CUSTOM_ALLREDUCE_BYTES

    Source: records pr10511-llama3-8b-tp1/-tp2 (V0) and nccl-issue964-a100-nvlink-groups (V1: one eager
    ``PyNcclCommunicator`` per TP group, vllm/distributed/device_communicators/cuda_communicator.py@v0.17.0 L73-78;
    the world group has no device communicator, parallel_state.py L1132-1141; torch's own NCCL group is lazy);
    custom_all_reduce.py@v0.17.0 L176-190.
    Assumes: one node with NVLink (custom all-reduce on); no SymmMem buffers (sm 9.0/10.0 only, all_reduce_utils.py
    L49-61); NVLS (H100 NVSwitch) buffers not modelled.
    Checked by: tests/memory/test_vllm.py::test_pre_snapshot_memory_h100_tp4
    """
    if cfg.tensor_parallel_size == 1:
        return 0
    if _is_v0(cfg):
        return V0_TP_NON_TORCH_BYTES
    nccl = NCCL_TP2_COMMUNICATOR_BYTES if cfg.tensor_parallel_size == 2 else NCCL_TP_WIDE_COMMUNICATOR_BYTES
    return nccl + CUSTOM_ALLREDUCE_BYTES


def non_torch_bytes(cfg: VllmConfig) -> int:
    """Non-torch memory inside the budget on one rank.

        NON_TORCH_BYTES                 (0.6.4: V064_NON_TORCH_BYTES, which holds the CUDA context too)
        + tp_communicator_bytes         (when the version snapshots before NCCL init: V0, 0.9.1)

    Source: records gaie-pr550 / mellea-pr416 (0.16 GiB), issue10517 (0.6.4, 0.35 GiB);
    vllm/worker/worker.py@v0.7.3 L161-166 (snapshot, then NCCL); v1/worker/gpu_worker.py@v0.9.1 L128-155 (same);
    @v0.17.0 L265-284 (NCCL, then snapshot).
    Assumes: one value for every GPU and model (the logs range 0.03-0.35 GiB at TP 1).
    Checked by: tests/memory/test_vllm.py::test_non_torch_tied_to_records
    """
    b = cfg.behaviour
    base = V064_NON_TORCH_BYTES if b.context_in_budget else NON_TORCH_BYTES
    return base + (tp_communicator_bytes(cfg) if b.nccl_in_budget else 0)


def context_outside_bytes(cfg: VllmConfig) -> int:
    """What the worker holds before its snapshot, outside ``requested``: the CUDA context, plus NCCL and custom
    all-reduce when they are initialised first (0.17+, tp > 1). 0 for 0.6.4 (it measures the context inside).

        VLLM_CUDA_CONTEXT_BYTES + (tp_communicator_bytes if not nccl_in_budget)

    Source: v1/worker/gpu_worker.py@v0.17.0 init_device L256-286 (set_device, NCCL init, then MemorySnapshot);
    @v0.9.1 L128-137 (set_device, MemorySnapshot, NCCL after); utils/mem_utils.py@v0.17.0 ``memory_profiling``
    (``non_torch_increase`` is measured from that snapshot, so what precedes it is not charged).
    Checked by: tests/memory/test_vllm.py::test_pre_snapshot_memory_h100_tp4
    """
    b = cfg.behaviour
    context = 0 if b.context_in_budget else VLLM_CUDA_CONTEXT_BYTES
    return context + (0 if b.nccl_in_budget else tp_communicator_bytes(cfg))


def cuda_graph_bytes(spec: ModelSpec, cfg: VllmConfig) -> int:
    """CUDA-graph pool of one rank: 0 with ``enforce_eager``, else L × per-layer cost of the runner and TP.

        V0:      L × 13.4 MiB (tp = 1) / 41.1 MiB (tp > 1)        records pr11349, issue7553
        V1, V2:  L × 19.6 MiB (tp = 1) / 33.9 MiB (tp > 1)        records pr21489, issue16570 (issue18136: −7 %)

    Source: the records above ("Graph capturing finished in X secs, took Y GiB" is the free-memory drop across
    ``capture_model``, v1/worker/gpu_model_runner.py@v0.17.0 L5298-5366); vLLM's own V0 warning "CUDA graphs can
    take additional 1~3 GiB memory per GPU" (record mlcommons-inference-issue2408).
    Assumes: cost proportional to decoder layers (two TP-4 logs, 64 and 80 layers, agree to 7 %); the V1 records
    captured 67 sizes (up to 512 tokens); 0.17.0's OpenRLHF engine captures 35 piecewise sizes (up to 256,
    config/vllm.py@v0.17.0 L1368-1421) plus full decode graphs; the difference is not modelled (no log shows it).
    Checked by: tests/memory/test_vllm.py::test_cuda_graphs_by_version, ::test_v1_cuda_graphs_match_logs
    """
    if cfg.enforce_eager:
        return 0
    if _is_v0(cfg):
        per_layer = CUDA_GRAPH_BYTES_PER_LAYER_TP1 if cfg.tensor_parallel_size == 1 else CUDA_GRAPH_BYTES_PER_LAYER_TP
    else:
        per_layer = (CUDA_GRAPH_BYTES_PER_LAYER_V1_TP1 if cfg.tensor_parallel_size == 1
                     else CUDA_GRAPH_BYTES_PER_LAYER_V1_TP)
    return spec.num_hidden_layers * per_layer


def cuda_graph_in_budget(spec: ModelSpec, cfg: VllmConfig) -> bool:
    """Whether the version subtracts its CUDA-graph estimate from the KV budget.

    0.27.1: yes on the V1 runner (``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`` defaults to 1, gpu_worker.py
    L512-548); the V2 runner (dense models) returns 0 from ``profile_cudagraph_memory`` (gpu/model_runner.py
    L749-751), so its graphs land outside the budget. 0.17.0, 0.9.1 and V0: never (graphs are captured in
    ``compile_or_warm_up_model`` after the KV cache exists: v1/worker/gpu_worker.py@v0.17.0 L484-522,
    @v0.9.1 L247-261).
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


#: Versions whose start-up error names no device ("Free memory on device (…"): v1/worker/gpu_worker.py@v0.9.1
#: L138-147.
_FREE_MESSAGE_WITHOUT_DEVICE = frozenset({"0.9.1"})
#: Versions that spell "models's" in the max-seq-len error (kv_cache_utils.py@v0.9.1 L573, @v0.17.0 L620-650).
_MODELS_S = frozenset({"0.9.1", "0.17.0"})
#: Versions that print that error's GiB with ``:.2f`` (kv_cache_utils.py@v0.9.1 L572-576) rather than format_gib.
_TWO_DECIMALS = frozenset({"0.9.1"})


def free_memory_message(cfg: VllmConfig, free: int, total: int, requested: int, device: str = "cuda:0") -> str:
    """vLLM's start-up error when other processes hold memory (``request_memory``, v1/worker/utils.py@v0.27.1
    L418-426; same text at v0.17.0 L225-233; v1/worker/gpu_worker.py@v0.9.1 L138-147 without the device)."""
    where = "" if cfg.vllm_version in _FREE_MESSAGE_WITHOUT_DEVICE else f"{device} "
    return (f"Free memory on device {where}({_gib(free)}/{_gib(total)} GiB) on startup is less than desired "
            f"GPU memory utilization ({cfg.gpu_memory_utilization}, {_gib(requested)} GiB).")


def startup_check(spec: ModelSpec, cfg: VllmConfig, total_gpu_bytes: int, *,
                  other_process_bytes: int = 0) -> StartupCheck:
    """Will the engine start on a GPU where other processes already hold ``other_process_bytes``?

    1. (0.9.1+) free at the snapshot = total − others − :func:`context_outside_bytes` must be ≥ ``total × u``
       (0.17+: ``ceil``): "Free memory on device ... is less than desired GPU memory utilization".
    2. budget ≤ 0: "No available memory for the cache blocks."
    3. one ``max_model_len`` request must fit: V1 "To serve at least one request with the model's max seq len
       (L), (X GiB KV cache is needed, ...)"; V0 "The model's max seq len (L) is larger than the maximum number
       of tokens that can be stored in KV cache (N)."

    Source: vllm/v1/worker/utils.py@v0.27.1 L409-430; gpu_worker.py L373-396 (snapshot after NCCL);
    kv_cache_utils.py L751-788 (@v0.17.0 L620-650 spells "models's"); v1/worker/gpu_worker.py@v0.9.1 L128-147
    (snapshot and check before NCCL); vllm/worker/worker.py@v0.7.3 L535-549.
    Assumes: the engine's own pre-snapshot memory is :func:`context_outside_bytes`; other processes do not change
    their memory during profiling.
    Checked by: tests/memory/test_vllm.py::test_startup_*
    """
    b = cfg.behaviour
    requested = requested_bytes(cfg, total_gpu_bytes)
    free = total_gpu_bytes - other_process_bytes - context_outside_bytes(cfg)
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
    model = "models's" if cfg.vllm_version in _MODELS_S else "model's"
    gib = (lambda b: f"{b / GiB:.2f}") if cfg.vllm_version in _TWO_DECIMALS else _gib
    return (f"To serve at least one request with the {model} max seq len ({cfg.max_model_len}), "
            f"({gib(needed)} GiB KV cache is needed, which is larger than the available KV cache memory "
            f"({gib(budget)} GiB). Based on the available memory, the estimated maximum model length is "
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
    context, NCCL remain). Beyond ``requested``: :func:`outside_budget_bytes` (graphs, context, 0.17+ NCCL).

    Source: vllm/device_allocator/cumem.py@v0.27.1 ``sleep`` L229-281, ``wake_up`` L283-310;
    sleep_mode_backend.py L120-139 ("NCCL live outside CuMemAllocator's pool"); gpu_worker.py L192-225, L437,
    L664 (pools tagged "weights"/"kv_cache"); OpenRLHF ppo_trainer.py@3c3be62 L300-319, samples_generator.py
    L105-121.
    Checked by: tests/memory/test_vllm.py::test_engine_terms_sleep_phases
    """
    budget = kv_cache_budget_bytes(spec, cfg, total_gpu_bytes)
    cap = kv_capacity(spec, cfg, budget)
    sleeping = cfg.sleep_level >= 1
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
    non_torch_rec = ("issue10517-llama3.1-8b-rtx3090-20k.toml" if cfg.behaviour.context_in_budget
                     else "gaie-pr550-a100-80g.toml")
    terms.append(term("non_torch", non_torch_bytes(cfg), Category.OVERHEAD,
                      measurement(_REC + non_torch_rec, "non-torch memory inside the share")))
    terms += [term(name, nbytes, Category.OVERHEAD, src) for name, nbytes, src in _outside_parts(spec, cfg) if nbytes]
    return terms


def _outside_parts(spec: ModelSpec, cfg: VllmConfig) -> list[tuple[str, int, Source]]:
    """(name, bytes, source) of what one rank holds outside ``requested``: CUDA graphs, the CUDA context and
    (0.17+, tp > 1) NCCL + custom all-reduce. See :func:`cuda_graph_bytes`, :func:`context_outside_bytes`."""
    b = cfg.behaviour
    graph_rec = ("pr11349-llama3.2-1b-cuda-graphs.toml" if _is_v0(cfg)
                 else "issue16570-qwen25vl-72b-tp4-cuda-graphs.toml")
    parts: list[tuple[str, int, Source]] = []
    if not cuda_graph_in_budget(spec, cfg):
        parts.append(("cuda_graphs", cuda_graph_bytes(spec, cfg),
                      measurement(_REC + graph_rec, "graph pool per layer")))
    if not b.context_in_budget:
        parts.append(("cuda_context", VLLM_CUDA_CONTEXT_BYTES, measurement(
            _REC + "pr21489-gemma3-4b-b200-startup.toml", "free-memory gap before the snapshot, TP 1")))
    if not b.nccl_in_budget:
        parts.append(("nccl", tp_communicator_bytes(cfg), measurement(
            _REC + "nccl-issue964-a100-nvlink-groups.toml", "one TP communicator + custom all-reduce buffers")))
    return parts


def outside_budget_bytes(spec: ModelSpec, cfg: VllmConfig) -> int:
    """Bytes one rank holds beyond ``requested`` (the engine's total is ``requested`` + this).

        cuda_graphs (unless estimated inside) + CUDA context (unless 0.6.4) + NCCL/custom all-reduce (0.17+)

    Source: :func:`engine_gpu_terms` (the same parts).
    Checked by: tests/memory/test_vllm.py::test_llama3_70b_tp2_a100_fits_at_095
    """
    return sum(nbytes for _, nbytes, _ in _outside_parts(spec, cfg))


def sleep_released_bytes(spec: ModelSpec, cfg: VllmConfig, total_gpu_bytes: int) -> int:
    """What ``sleep(level=1)`` frees on one GPU: the "weights" and "kv_cache" CuMem pools (vLLM's log "Sleep mode
    freed X GiB"). Source: cumem.py@v0.27.1 L229-281. Checked by: ::test_engine_terms_sleep_phases"""
    cap = kv_capacity(spec, cfg, kv_cache_budget_bytes(spec, cfg, total_gpu_bytes))
    return weight_bytes_per_rank(spec, cfg.tensor_parallel_size, cfg.weight_dtype) + cap.pool_bytes


def engine_host_terms(spec: ModelSpec, cfg: VllmConfig, *, path: str = "rollout") -> list[Term]:
    """Host RAM of one engine rank beyond its process (memory/host_process.py ``gpu_process``).

    Sleep level 1 copies the "weights" pool into pinned host tensors (``pin_memory=PIN_MEMORY``). ``wake_up``
    drops the tensors, but PyTorch's caching host allocator keeps freed pinned blocks for reuse, and OpenRLHF
    puts the engines to sleep right after creating them, so the shard is counted in every phase.

        bytes = weight_bytes_per_rank (bf16 shard incl. rotary cache)
        pinned_rounding = Σ_handles pinned_block_bytes(handle) − bytes   (one pinned backup per CuMem handle,
                          each rounded to a power of two by the caching host allocator, memory/host_alloc.py)

    Source: vllm/device_allocator/cumem.py@v0.27.1 L251-265 (cpu_backup_tensor, pinned), L302-310;
    OpenRLHF vllm_engine.py@3c3be62 L310-311 (sleep after creation).
    Assumes: pinned blocks are not returned to the OS between sleeps (torch CachingHostAllocator) — inference.
    Checked by: tests/memory/test_vllm.py::test_engine_host_terms
    """
    if cfg.sleep_level != 1:
        return []
    src = code(f"{OPENRLHF_ENGINE}", "create_vllm_engines: enable_sleep_mode, sleep() after creation")
    terms = [Term(path=f"{path}.sleeping_weights", bytes=weight_bytes_per_rank(spec, cfg.tensor_parallel_size,
                                                                               cfg.weight_dtype),
                  category=Category.PARAM, device=Device.CPU, source=src)]
    tensors = weight_allocations_per_rank(spec, cfg.tensor_parallel_size, cfg.weight_dtype)
    segments = cuda_segment_bytes(tensors)
    extra = sum(pinned_block_bytes(b) for b in segments) - sum(tensors)
    if extra > 0:
        terms.append(Term(path=f"{path}.sleeping_weights.pinned_rounding", bytes=extra, category=Category.OVERHEAD,
                          device=Device.CPU, source=code(ALLOCATOR_SOURCE.ref, (
                              f"{ALLOCATOR_SOURCE.detail}; one pinned backup per CuMem handle (cumem.py sleep: "
                              f"torch.empty(handle size, pin_memory=True)), {len(segments)} handles"))))
    return terms


#: PyTorch's CUDA caching allocator, whose segments become vLLM's CuMem handles: requests of at most
#: ``kSmallSize`` share ``kSmallBuffer`` segments, requests under ``kMinLargeAlloc`` share ``kLargeBuffer``
#: segments, larger ones get their own segment rounded up to ``kRoundLarge``.
#: Source: c10/core/AllocatorConfig.h@v2.13.0 :17-25; kLargeBuffer in c10/cuda/CUDACachingAllocator.cpp.
K_SMALL_SIZE, K_SMALL_BUFFER = 1 * MiB, 2 * MiB
K_MIN_LARGE_ALLOC, K_LARGE_BUFFER, K_ROUND_LARGE = 10 * MiB, 20 * MiB, 2 * MiB


def cuda_segment_bytes(tensor_bytes: tuple[int, ...]) -> tuple[int, ...]:
    """The segments (one CuMem handle each) the caching allocator maps for these tensors, in a fresh pool.

    Assumes: small and medium tensors pack their segments fully (no fragmentation between them).
    Checked by: tests/memory/test_host_alloc.py::test_vllm_sleeping_weights_rounded_per_tensor
    """
    small = sum(b for b in tensor_bytes if b <= K_SMALL_SIZE)
    medium = sum(b for b in tensor_bytes if K_SMALL_SIZE < b < K_MIN_LARGE_ALLOC)
    large = tuple(-(-b // K_ROUND_LARGE) * K_ROUND_LARGE for b in tensor_bytes if b >= K_MIN_LARGE_ALLOC)
    return ((K_SMALL_BUFFER,) * -(-small // K_SMALL_BUFFER) + (K_LARGE_BUFFER,) * -(-medium // K_LARGE_BUFFER)
            + large)

