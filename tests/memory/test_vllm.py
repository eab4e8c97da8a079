"""vLLM rollout engines: hand-computed KV/weight arithmetic, the budget per version, and published vLLM logs."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

import pytest

from memplan.errors import ConfigError
from memplan.memory import vllm_budget as vb
from memplan.memory.breakdown import Category, Device, Phase
from memplan.hardware import resolve_gpu
from memplan.memory.vllm import (
    DEFAULT_VLLM_VERSION, VLLM_BEHAVIOURS, VllmConfig, behaviour, blocks_per_request, kv_bytes_per_token,
    kv_heads_per_rank, kv_layout, openrlhf_vllm_config, page_size_bytes, weight_bytes_per_rank,
)
from memplan.model import load_model_spec
from memplan.units import GiB, MiB

RECORDS = Path(__file__).resolve().parents[2] / "validation" / "published" / "vllm"
CASES = {p.stem: tomllib.loads(p.read_text()) for p in sorted(RECORDS.glob("*.toml"))}
#: A100 80GB as cudaMemGetInfo reports it (hardware/data/gpus.toml runtime_total_bytes).
A100_TOTAL = 85_100_068_864


def _cfg(version: str = DEFAULT_VLLM_VERSION, **kw) -> VllmConfig:
    base = dict(tensor_parallel_size=1, gpu_memory_utilization=0.9, max_model_len=2048, max_num_seqs=128,
                max_num_batched_tokens=2048, vllm_version=version)
    base.update(kw)
    return VllmConfig(**base)


def _record_cfg(case: dict) -> VllmConfig:
    c = case["config"]
    return _cfg(case["vllm_version"], tensor_parallel_size=c.get("tensor_parallel_size", 1),
                gpu_memory_utilization=c.get("gpu_memory_utilization", 0.9),
                max_model_len=c.get("max_model_len", 2048), max_num_seqs=c.get("max_num_seqs", 256),
                max_num_batched_tokens=c.get("max_num_batched_tokens", 2048), block_size=c.get("block_size", 16))


# ----------------------------------------------------------------------------- KV arithmetic


def test_kv_bytes_per_token_hand_computed() -> None:
    # 2 (K and V) × layers × kv heads × head_dim × 2 B (bf16)
    assert kv_bytes_per_token(load_model_spec("llama-3-8b"), 1) == 2 * 32 * 8 * 128 * 2 == 131_072
    assert kv_bytes_per_token(load_model_spec("llama-2-7b"), 1) == 2 * 32 * 32 * 128 * 2 == 524_288
    assert kv_bytes_per_token(load_model_spec("llama-3-70b"), 1) == 2 * 80 * 8 * 128 * 2 == 327_680
    # TP 2 halves the KV heads of each rank when kv_heads >= 2
    assert kv_bytes_per_token(load_model_spec("llama-3-8b"), 2) == 65_536
    assert kv_bytes_per_token(load_model_spec("llama-2-7b"), 2) == 262_144
    assert kv_bytes_per_token(load_model_spec("llama-3-70b"), 2) == 163_840
    # TP 16 > 8 KV heads: each rank keeps one (replicated) head: 2 × 32 × 1 × 128 × 2
    assert kv_bytes_per_token(load_model_spec("llama-3-8b"), 16) == 16_384
    # MLA keeps one latent of kv_lora_rank + rope dim per layer on every rank: 61 × (512 + 64) × 2
    assert kv_bytes_per_token(load_model_spec("deepseek-v3"), 1) == 61 * 576 * 2 == 70_272
    assert kv_bytes_per_token(load_model_spec("deepseek-v3"), 8) == 70_272


def test_page_size_is_block_times_token_bytes_per_layer() -> None:
    spec = load_model_spec("llama-3-8b")
    # 2 × 16 tokens × 8 heads × 128 × 2 B = 64 KiB per layer and block
    assert page_size_bytes(spec, _cfg()) == 2 * 16 * 8 * 128 * 2 == 64 * 1024


def test_kv_heads_replicated_past_their_count() -> None:
    spec = load_model_spec("qwen2.5-7b")  # 4 KV heads
    assert [kv_heads_per_rank(spec, tp) for tp in (1, 2, 4, 8)] == [4, 2, 1, 1]
    with pytest.raises(ConfigError):
        kv_heads_per_rank(spec, 3)


# ----------------------------------------------------------------------------- weights


def test_weights_tp_split_hand_computed() -> None:
    spec = load_model_spec("llama-3-8b")
    h, i, v, layers = 4096, 14336, 128256, 32
    per_layer = (4096 * h + 2 * 1024 * h + h * 4096) // 2 + 3 * i * h // 2 + 2 * h  # q,k,v,o + gate,up,down + 2 norms
    numel = 2 * v * h // 2 + layers * per_layer + h + 8192 * 128  # embed + head (vocab split), final norm, rotary
    assert weight_bytes_per_rank(spec, 2) == 2 * numel == 8_032_624_640


def test_vocab_padded_to_64_before_the_split() -> None:
    base = load_model_spec("llama-2-7b")
    odd = dataclasses.replace(base, vocab_size=32_001)  # padded to 32064: 63 more rows in embed and head
    assert weight_bytes_per_rank(odd, 1) - weight_bytes_per_rank(base, 1) == 2 * (2 * 64 * 4096)
    # tied heads are stored once
    tied = dataclasses.replace(base, tie_word_embeddings=True)
    assert weight_bytes_per_rank(base, 1) - weight_bytes_per_rank(tied, 1) == 2 * 32_000 * 4096


def test_weights_match_logged_llama3_8b() -> None:
    # parameters 8,030,261,248 × 2 B + rotary cache 8192 × 128 × 2 B = 16,062,619,648 B = 14.9595 GiB
    assert weight_bytes_per_rank(load_model_spec("llama-3-8b"), 1) == 8_030_261_248 * 2 + 8192 * 128 * 2


def test_weights_match_logged_llama31_8b() -> None:
    # 131072-row rotary cache (llama3 rope type keeps max_position rows): 14.98876 GiB, logged "14.9888"
    got = weight_bytes_per_rank(load_model_spec("llama-3.1-8b"), 1)
    assert got == 8_030_261_248 * 2 + 131_072 * 128 * 2
    assert round(got / GiB, 4) == 14.9888


def test_tp_must_divide_heads() -> None:
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        weight_bytes_per_rank(load_model_spec("llama-3-8b"), 3)


# ----------------------------------------------------------------------------- config and versions


def test_openrlhf_scheduler_defaults() -> None:
    # engine usage context → SchedulerConfig defaults 2048 tokens / 128 seqs, chunked prefill on
    cfg = openrlhf_vllm_config(max_len=4096, tensor_parallel_size=2)
    assert (cfg.max_num_batched_tokens, cfg.max_num_seqs, cfg.gpu_memory_utilization) == (2048, 128, 0.95)
    assert cfg.vllm_version == DEFAULT_VLLM_VERSION == "0.27.1"
    # max_len 8: tokens = min(128 × 8, 2048) = 1024
    assert openrlhf_vllm_config(max_len=8).max_num_batched_tokens == 1024
    # V0 (chunked prefill off): max(max_len, 2048)
    assert openrlhf_vllm_config(max_len=20_000, vllm_version="0.6.4").max_num_batched_tokens == 20_000
    assert openrlhf_vllm_config(max_len=2048, enable_sleep=True).sleep_level == 1


def test_unknown_version_and_bad_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="vllm.version"):
        behaviour("9.9.9")
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        _cfg(gpu_memory_utilization=1.5)


def test_version_table_rows() -> None:
    new, v17, v9, v0 = behaviour("0.27.1"), behaviour("0.17.0"), behaviour("0.9.1"), behaviour("0.7.3")
    assert new.requested_ceil and new.startup_free_check and new.cudagraph_estimate_default
    assert v17.startup_free_check and not v17.cudagraph_estimate_default and v17.in_flight_batches == 1
    assert not v0.startup_free_check and v0.nccl_in_budget and not v0.hybrid_allocator
    # 0.9.1: V1 runner, float share, free check, but the snapshot still precedes NCCL init
    assert v9.startup_free_check and v9.nccl_in_budget and not v9.requested_ceil and v9.hybrid_allocator
    # only 0.6.4 measures its own CUDA context inside the share
    assert [v for v, b in sorted(VLLM_BEHAVIOURS.items()) if b.context_in_budget] == ["0.6.4"]
    # hybrid grouping: larger kind when max < r × min, r = 1.5 (0.27.1), 1.25 (0.17.0), never (0.9.1)
    assert (new.group_max_ratio_pct, v17.group_max_ratio_pct, v9.group_max_ratio_pct) == (150, 125, 100)


def test_openrlhf_091_llm_class_defaults() -> None:
    # OpenRLHF 0.8.5 builds vllm.LLM (LLM class): 8192 batched tokens, 256 sequences on an A100 or a GPU-less driver
    cfg = openrlhf_vllm_config(max_len=2048, tensor_parallel_size=2, vllm_version="0.9.1")
    assert (cfg.max_num_batched_tokens, cfg.max_num_seqs) == (8192, 256)


def test_hybrid_group_size_per_version() -> None:
    # 12 sliding + 13 full layers (gpt-oss-20b + eagle, the example in kv_cache_utils.py@v0.17.0 L1043-1047):
    # 13 < 1.25 × 12 = 15 → group of 13 in 0.17.0 and 0.27.1; 0.9.1 always takes the smaller count, 12
    base = load_model_spec("gemma-2-9b")
    spec = dataclasses.replace(base, num_hidden_layers=25, layer_types=base.layer_types[:24] + base.layer_types[1:2])
    counts = {t: spec.layer_types.count(t) for t in set(spec.layer_types)}
    assert sorted(counts.values()) == [12, 13]
    sizes = [kv_layout(spec, openrlhf_vllm_config(max_len=4096, vllm_version=v)).group_size
             for v in ("0.9.1", "0.17.0", "0.27.1")]
    assert sizes == [12, 13, 13]


# ----------------------------------------------------------------------------- budget


def test_budget_formula_worked_example() -> None:
    cfg = _cfg(gpu_memory_utilization=0.9)
    # 80 GiB × 0.9 = 72 GiB; − 16 (weights) − 1 (activations) − 0.5 (non-torch) = 54.5 GiB
    got = vb.kv_budget_from_components(cfg, 80 * GiB, weights=16 * GiB, activation_peak=GiB, non_torch=GiB // 2)
    assert got == 72 * GiB - 16 * GiB - GiB - GiB // 2 == int(54.5 * GiB)
    # requested rounds up in 0.17+ (math.ceil) and down in V0: 0.95 × 85,100,068,864 = 80,845,065,420.8
    assert vb.requested_bytes(_cfg(gpu_memory_utilization=0.95), A100_TOTAL) == 80_845_065_421
    assert vb.requested_bytes(_cfg("0.7.3", gpu_memory_utilization=0.95), A100_TOTAL) == 80_845_065_420


def test_budget_llama3_8b_openrlhf_defaults() -> None:
    spec, cfg = load_model_spec("llama-3-8b"), openrlhf_vllm_config(max_len=2048)
    weights = 16_062_619_648
    sampler = 128 * 128_256 * 39 + 2048 * 4096 * 2     # 128 rows of logits + the [T, H] hidden states
    forward = 2048 * (3 * 4096 + 3 * 14336) * 2         # below the sampler
    assert vb.profile_peak_bytes(spec, cfg) == max(sampler, forward) == 657_031_168
    non_torch = int(0.16 * GiB)
    # dense model on 0.27.1 → V2 runner → CUDA graphs are not estimated in the budget
    expected = 80_845_065_421 - weights - sampler - non_torch
    assert vb.kv_cache_budget_bytes(spec, cfg, A100_TOTAL) == expected == 63_953_615_914
    cap = vb.kv_capacity(spec, cfg, expected)
    # one block of all 32 layers = 32 × 64 KiB = 2 MiB
    assert cap.num_blocks == expected // (64 * 1024) // 32 == 30_495
    assert cap.blocks_per_seq == 2048 // 16 and cap.seqs_at_max_len == 30_495 // 128 == 238
    assert cap.num_tokens == int(30_495 / 128 * 2048) == 487_920
    assert cap.pool_bytes == 30_495 * 2 * MiB


def test_capacity_hand_computed_v17_tokens() -> None:
    spec, cfg = load_model_spec("llama-3-8b"), openrlhf_vllm_config(max_len=3000, vllm_version="0.17.0")
    cap = vb.kv_capacity(spec, cfg, 1000 * 2 * MiB + 5)
    # 0.17.0 logs num_blocks // groups × block_size; concurrency uses ceil(3000 / 16) = 188 blocks
    assert (cap.num_blocks, cap.num_tokens, cap.blocks_per_seq) == (1000, 16_000, 188)


def test_gemma2_hybrid_groups() -> None:
    gemma = load_model_spec("gemma-2-9b")  # 21 full + 21 sliding (window 4096) layers
    cfg = openrlhf_vllm_config(max_len=8192)
    layout = kv_layout(gemma, cfg)
    assert (layout.group_size, layout.num_full_groups, layout.num_sliding_groups) == (21, 1, 1)
    # full: 8192/16 = 512 blocks; sliding: ceil(min(4095 + 2 × 2048, 8192) / 16) + 1 = 513
    assert blocks_per_request(gemma, cfg, 8192) == 512 + 513
    # 0.17.0: one batch in flight: ceil(min(4095 + 2048, 8192) / 16) + 1 = 385
    assert blocks_per_request(gemma, openrlhf_vllm_config(max_len=8192, vllm_version="0.17.0"), 8192) == 512 + 385
    # V0 keeps every token in every layer: one group of 42
    assert kv_layout(gemma, openrlhf_vllm_config(max_len=8192, vllm_version="0.7.3")).group_size == 42
    # Gemma-3-1B: 4 full, 22 sliding → group 4: 1 full group, ceil(22/4) = 6 sliding groups
    g3 = kv_layout(load_model_spec("gemma-3-1b"), cfg)
    assert (g3.group_size, g3.num_full_groups, g3.num_sliding_groups) == (4, 1, 6)
    # every-layer-sliding Mistral-7B-v0.1 runs as full attention (vLLM reads windows from layer_types)
    assert kv_layout(load_model_spec("mistral-7b"), cfg).num_sliding_groups == 0


# ----------------------------------------------------------------------------- profile, non-torch, graphs


def test_forward_peak_matches_issue10517() -> None:
    spec = load_model_spec("llama-3.1-8b")
    for name in ("issue10517-llama3.1-8b-rtx3090-20k", "issue10517-llama3.1-8b-rtx3090-29k"):
        case = CASES[name]
        logged = (case["logged"]["peak_torch_gib"] - case["logged"]["weights_gib"]) * GiB
        got = vb.profile_peak_bytes(spec, _record_cfg(case))
        assert abs(got - logged) / logged <= case["tolerance"]["activation_relative"], case["source"]


def test_sampler_peak_hand_counted_from_vllm_v0_source() -> None:
    """The V0 profile run's sampler peak for Llama-3-8B, counted tensor by tensor from the source, not from the
    log that calibrated SAMPLER_BYTES_PER_LOGIT.

    profile_run samples 256 rows (max_num_seqs) with top_p 0.99, top_k V − 1 (vllm/worker/model_runner.py@v0.7.3
    ``profile_run``), so Sampler.forward runs ``_apply_top_k_top_p`` (model_executor/layers/sampler.py@v0.7.3).
    Its worst moment is inside ``logits.sort``; alive then, per logit [256, 128256]:
        bf16 logits still held by the model runner                      2 B
        fp32 copy (``logits.to(torch.float)``)                          4 B
        sort outputs: values fp32 + indices int64                   4 + 8 B
        reverse indices int64 (256 segments ≥ 128: SortStable.cu ``segmented_sort_pairs``)   8 B
        cub SortPairs without DoubleBuffer: alternate keys + values 4 + 8 B
                                                                        = 38 B
    (later, at the top-p scatter: 2 + 4 + 4 + 8 + 1 + 4 + 4 + 1 + 4 = 32 B, lower), plus the forward's [T, H]
    bf16 hidden states, still referenced: 8192 × 4096 × 2 B.
    """
    spec = load_model_spec("llama-3-8b")
    case = CASES["pr10511-llama3-8b-tp1"]
    rows, vocab = 256, 128_256
    hand = rows * vocab * (2 + 4 + 4 + 8 + 8 + 4 + 8) + 8192 * 4096 * 2
    got = vb.sampler_peak_bytes(spec, _record_cfg(case))
    # never below the tensors counted; at most 2 B per logit more (cub's histogram scratch and the caching
    # allocator's rounding of the seven blocks, which the hand count leaves out)
    assert hand <= got <= hand + 2 * rows * vocab
    # the log (1.26 GiB) sits above the hand count (1.2245 GiB) by the same kind of margin
    logged = case["logged"]["activation_peak_gib"] * GiB
    assert 0 <= logged - hand <= 2 * rows * vocab
    assert vb.profile_peak_bytes(spec, _record_cfg(case)) == got  # the sampler, not the forward, sets the peak


def test_profile_peak_does_not_change_with_tp_as_pr10511_logs() -> None:
    """The same run at TP 2 logs the same activation peak as at TP 1 (1.26 GiB both): the sampler gathers full-vocab
    logits on every rank, while the forward's MLP intermediates halve. memplan must not let TP change it."""
    spec = load_model_spec("llama-3-8b")
    tp1, tp2 = (CASES[f"pr10511-llama3-8b-tp{n}"] for n in (1, 2))
    assert tp1["logged"]["activation_peak_gib"] == tp2["logged"]["activation_peak_gib"]
    assert vb.forward_peak_bytes(spec, _record_cfg(tp2)) < vb.forward_peak_bytes(spec, _record_cfg(tp1))
    assert vb.profile_peak_bytes(spec, _record_cfg(tp2)) == vb.profile_peak_bytes(spec, _record_cfg(tp1))


def test_non_torch_tied_to_records() -> None:
    assert CASES["gaie-pr550-a100-80g"]["logged"]["non_torch_gib"] == 0.16
    assert CASES["mellea-pr416-a100-80g"]["logged"]["non_torch_gib"] == 0.16
    assert vb.non_torch_bytes(_cfg()) == int(0.16 * GiB)
    tp1, tp2 = (CASES[f"pr10511-llama3-8b-tp{n}"]["logged"]["non_torch_gib"] for n in (1, 2))
    assert vb.V0_TP_NON_TORCH_BYTES == int((tp2 - tp1) * GiB)
    assert vb.non_torch_bytes(_cfg("0.7.3", tensor_parallel_size=2)) == int(0.16 * GiB) + int(1.79 * GiB)
    assert vb.non_torch_bytes(_cfg("0.27.1", tensor_parallel_size=2)) == int(0.16 * GiB)  # NCCL outside budget


def test_non_torch_064_holds_the_context() -> None:
    # 0.6.4 measures used − torch after the profile: its 0.35 GiB (RTX 3090 log) already holds the CUDA context,
    # so no context is charged outside its share
    assert vb.V064_NON_TORCH_BYTES == int(CASES["issue10517-llama3.1-8b-rtx3090-20k"]["logged"]["non_torch_gib"] * GiB)
    assert vb.non_torch_bytes(_cfg("0.6.4")) == int(0.35 * GiB)
    assert vb.context_outside_bytes(_cfg("0.6.4")) == 0
    assert vb.context_outside_bytes(_cfg("0.7.3", tensor_parallel_size=2)) == vb.VLLM_CUDA_CONTEXT_BYTES


def test_cuda_graphs_by_version() -> None:
    llama, mixtral = load_model_spec("llama-3-8b"), load_model_spec("mixtral-8x7b")
    qwen_moe = load_model_spec("qwen1.5-moe-a2.7b")
    # V0 (0.7.3): 0.21 GiB / 16 layers at TP 1; 2464 MiB / 60 layers at TP > 1
    assert vb.cuda_graph_bytes(llama, _cfg("0.7.3")) == 32 * (int(0.21 * GiB) // 16)
    assert vb.cuda_graph_bytes(llama, _cfg("0.7.3", tensor_parallel_size=2)) == 32 * (2464 * MiB // 60)
    # V1/V2 runners (0.9.1+): 0.65 GiB / 34 layers at TP 1; 2.65 GiB / 80 layers at TP > 1
    assert vb.cuda_graph_bytes(llama, _cfg()) == 32 * (int(0.65 * GiB) // 34)
    assert vb.cuda_graph_bytes(llama, _cfg("0.9.1", tensor_parallel_size=2)) == 32 * (int(2.65 * GiB) // 80)
    assert vb.cuda_graph_bytes(llama, _cfg(enforce_eager=True)) == 0
    assert not vb.cuda_graph_in_budget(llama, _cfg())              # 0.27.1 dense: V2 runner, estimate = 0
    assert vb.cuda_graph_in_budget(mixtral, _cfg(tensor_parallel_size=2))  # 0.27.1 MoE: V1 runner, default on
    assert not vb.cuda_graph_in_budget(qwen_moe, _cfg())          # qwen2_moe is on 0.27.1's V2 list
    assert not vb.cuda_graph_in_budget(mixtral, _cfg("0.17.0", tensor_parallel_size=2))
    assert not vb.cuda_graph_in_budget(mixtral, _cfg(tensor_parallel_size=2, enforce_eager=True))
    cfg = _cfg(tensor_parallel_size=2)
    with_graphs = vb.kv_cache_budget_bytes(mixtral, cfg, A100_TOTAL)
    eager = vb.kv_cache_budget_bytes(mixtral, dataclasses.replace(cfg, enforce_eager=True), A100_TOTAL)
    assert eager - with_graphs == 32 * vb.CUDA_GRAPH_BYTES_PER_LAYER_V1_TP
    # estimated inside the share → not charged again outside it
    names = {t.path for t in vb.engine_gpu_terms(mixtral, cfg, A100_TOTAL)}
    assert "rollout.cuda_graphs" not in names and "rollout.nccl" in names


@pytest.mark.parametrize("name", ["issue16570-qwen25vl-72b-tp4-cuda-graphs", "issue18136-qwen3-32b-tp4-cuda-graphs",
                                  "pr21489-gemma3-4b-b200-startup"])
def test_v1_cuda_graphs_match_logs(name: str) -> None:
    """V1 "Graph capturing finished ..., took X GiB" against layers × per-layer cost (tolerance per record)."""
    case = CASES[name]
    c = case["config"]
    spec = (load_model_spec(c["model"]) if "model" in c
            else dataclasses.replace(load_model_spec("llama-3-8b"), num_hidden_layers=c["num_hidden_layers"]))
    got = vb.cuda_graph_bytes(spec, _cfg("0.17.0", tensor_parallel_size=c["tensor_parallel_size"])) / GiB
    logged = case["logged"]["cuda_graph_gib"]
    assert abs(got - logged) / logged <= case["tolerance"]["cuda_graph_relative"], case["source"]


def test_cuda_graph_per_layer_scaling_between_logs() -> None:
    # two TP-4 V1 logs: 2.65 GiB / 80 layers = 33.9 MiB, 2.28 GiB / 64 layers = 36.5 MiB per layer (8 % apart)
    a = CASES["issue16570-qwen25vl-72b-tp4-cuda-graphs"]["logged"]["cuda_graph_gib"] / 80
    b = CASES["issue18136-qwen3-32b-tp4-cuda-graphs"]["logged"]["cuda_graph_gib"] / 64
    assert abs(a - b) / a < 0.08


# ----------------------------------------------------------------------------- memory before the snapshot


def test_vllm_context_tied_to_record() -> None:
    log = CASES["pr21489-gemma3-4b-b200-startup"]["logged"]
    assert vb.VLLM_CUDA_CONTEXT_BYTES == round((log["startup_total_gib"] - log["startup_free_gib"]) * GiB)
    assert abs(vb.VLLM_CUDA_CONTEXT_BYTES / GiB - 0.70) < 1e-9
    # TP 1: nothing but the context precedes the snapshot
    assert vb.context_outside_bytes(_cfg("0.17.0")) == vb.VLLM_CUDA_CONTEXT_BYTES


def test_nccl_tied_to_record() -> None:
    rec = CASES["nccl-issue964-a100-nvlink-groups"]["measured"]
    assert vb.NCCL_TP2_COMMUNICATOR_BYTES == rec["two_rank_mb"] * MiB
    assert vb.NCCL_TP_WIDE_COMMUNICATOR_BYTES == rec["wider_mb"] * MiB
    # custom all-reduce: meta (8 MiB + Signal), buffer (8 MiB), rank_data (8 MiB)
    assert vb.CUSTOM_ALLREDUCE_BYTES == 24 * MiB
    assert vb.tp_communicator_bytes(_cfg("0.17.0", tensor_parallel_size=2)) == 544 * MiB + 24 * MiB
    assert vb.tp_communicator_bytes(_cfg("0.17.0", tensor_parallel_size=8)) == 688 * MiB + 24 * MiB
    assert vb.tp_communicator_bytes(_cfg("0.17.0")) == 0
    # 0.17+: before the snapshot (outside the share); 0.9.1: after it (inside, as non-torch)
    assert vb.context_outside_bytes(_cfg("0.17.0", tensor_parallel_size=2)) == vb.VLLM_CUDA_CONTEXT_BYTES + 568 * MiB
    assert vb.context_outside_bytes(_cfg("0.9.1", tensor_parallel_size=2)) == vb.VLLM_CUDA_CONTEXT_BYTES
    assert vb.non_torch_bytes(_cfg("0.9.1", tensor_parallel_size=2)) == int(0.16 * GiB) + 568 * MiB


def test_pre_snapshot_memory_h100_tp4() -> None:
    """total − free at the snapshot of a TP-4 engine (context + NCCL + custom all-reduce) vs vLLM's log."""
    case = CASES["pr48601-qwen36-27b-h100-tp4-startup"]
    log = case["logged"]
    logged = log["startup_total_gib"] - log["startup_free_gib"]          # 1.54 GiB
    got = vb.context_outside_bytes(_cfg("0.27.1", tensor_parallel_size=4)) / GiB  # 0.70 + 0.672 + 0.023
    assert abs(got - logged) <= case["tolerance"]["pre_snapshot_gib"], case["source"]


def test_issue16570_predicted_not_to_fit() -> None:
    """0.95 on a 39.38 GiB A100 leaves 1.97 GiB outside the share; context + 80 layers of graphs need 3.35 GiB,
    and the logged engine died in the sampler warm-up right after graph capture."""
    case = CASES["issue16570-qwen25vl-72b-tp4-cuda-graphs"]
    c = case["config"]
    spec = load_model_spec(c["model"])
    cfg = _cfg("0.9.1", tensor_parallel_size=c["tensor_parallel_size"],
               gpu_memory_utilization=c["gpu_memory_utilization"], max_num_seqs=c["max_num_seqs"],
               max_model_len=c["max_model_len"], max_num_batched_tokens=8192)
    total = int(c["total_gib"] * GiB)
    headroom = total - vb.requested_bytes(cfg, total)
    outside = vb.outside_budget_bytes(spec, cfg)
    assert outside == vb.VLLM_CUDA_CONTEXT_BYTES + 80 * vb.CUDA_GRAPH_BYTES_PER_LAYER_V1_TP
    assert outside > headroom and "OOM" in case["logged"]["outcome"]
    terms = vb.engine_gpu_terms(spec, cfg, total)
    assert sum(t.bytes for t in terms) > total


# ----------------------------------------------------------------------------- the OpenRLHF 70B engine


def _llama3_70b_tp2(version: str):  # type: ignore[no-untyped-def]
    spec = load_model_spec("llama-3-70b")
    cfg = openrlhf_vllm_config(max_len=2048, tensor_parallel_size=2, gpu_memory_utilization=0.95,
                               vllm_version=version)
    return spec, cfg, resolve_gpu("a100-80g").capacity_bytes


def test_llama3_70b_tp2_a100_fits_at_095() -> None:
    """OpenRLHF's 70B script (4 engines × TP 2, u = 0.95, CUDA graphs on) on A100-80G with vLLM 0.17.0, computed
    by hand from vLLM's budget rule and the records' logged numbers (not from memplan's constants).

    vLLM 0.17 holds ``requested = ceil(u × total)`` (vllm/v1/worker/utils.py ``request_memory``) and, outside it,
    what it allocates before its snapshot or after the KV pool: the CUDA context (pr21489 log: 178.36 − 177.66
    GiB free at start-up), the TP group's NCCL communicator (nccl-issue964: 544 MB with 2 ranks, read as MiB)
    plus the custom all-reduce buffers (custom_all_reduce.py@v0.17.0 L176-190: meta 8 MiB + signal, buffer
    8 MiB, rank_data 8 MiB), and the CUDA graphs captured after the KV pool (issue16570 log: 2.65 GiB over its
    model's 80 layers; Llama-3-70B has 80 too).
    """
    spec, cfg, capacity = _llama3_70b_tp2("0.17.0")
    startup, graphs_log = CASES["pr21489-gemma3-4b-b200-startup"], CASES["issue16570-qwen25vl-72b-tp4-cuda-graphs"]
    requested = math.ceil(capacity * 0.95)
    context = (startup["logged"]["startup_total_gib"] - startup["logged"]["startup_free_gib"]) * GiB
    nccl = CASES["nccl-issue964-a100-nvlink-groups"]["measured"]["two_rank_mb"] * MiB + 3 * 8 * MiB
    graph_layers = load_model_spec(graphs_log["config"]["model"]).num_hidden_layers
    graphs = graphs_log["logged"]["cuda_graph_gib"] * GiB / graph_layers * spec.num_hidden_layers
    hand = requested + context + nccl + graphs  # 75.293 + 0.700 + 0.555 + 2.650 = 79.198 GiB of 79.256
    total = sum(t.bytes for t in vb.engine_gpu_terms(spec, cfg, capacity))
    # memplan's KV pool is whole blocks of all 80 layers (2.5 MiB at most below the share); GiB figures of the
    # logs are converted with int() in memplan (a few bytes)
    assert hand - 80 * page_size_bytes(spec, cfg) - 1024 <= total <= hand + 1024
    # fits, by 0.06 GiB by hand: tight (far inside the records' own spread)
    assert 0 < capacity - hand < GiB // 4 and 0 < capacity - total < GiB // 4


def test_llama3_70b_tp2_a100_fits_with_091() -> None:
    """The same engine under 0.9.1 (OpenRLHF 0.8.5's pin): NCCL sits inside the share, so only the context and
    the graphs are outside it: 75.293 + 0.700 + 2.650 = 78.643 GiB, 0.61 GiB free."""
    spec, cfg, capacity = _llama3_70b_tp2("0.9.1")
    # published outcome: OpenRLHF's train_ppo_llama_ray_70b.sh@v0.8.5 (these engines) "works on 32× A100-80G"
    row03_path = RECORDS.parent / "openrlhf_rl" / "row03-llama3-70b-ppo-32xa100.toml"
    row03 = tomllib.loads(row03_path.read_text())
    assert row03["outcome"].startswith("works")
    assert "--vllm_tensor_parallel_size 2" in " ".join(row03["command"].split())
    assert sum(t.bytes for t in vb.engine_gpu_terms(spec, cfg, capacity)) <= capacity
    names = {t.path.split(".")[1] for t in vb.engine_gpu_terms(spec, cfg, capacity)}
    assert "nccl" not in names
    total = sum(t.bytes for t in vb.engine_gpu_terms(spec, cfg, capacity))
    assert 0.5 * GiB < capacity - total < 0.7 * GiB  # the docstring's hand sum: 0.61 GiB free


# ----------------------------------------------------------------------------- start-up


def test_startup_free_memory_message_matches_record() -> None:
    case = CASES["pytorch-issue175666-startup-free-memory"]
    cfg = _cfg("0.17.0", gpu_memory_utilization=0.9)
    total = int(22.048 * GiB)  # prints 22.05; 0.9 × total prints 19.84
    requested = vb.requested_bytes(cfg, total)
    assert abs(requested / GiB - case["logged"]["requested_gib"]) <= case["tolerance"]["requested_gib"]
    msg = vb.free_memory_message(cfg, int(19.77 * GiB), total, requested, device="cuda:1")
    assert msg == case["logged"]["error"]


def test_startup_fails_on_shared_gpu_only_from_017() -> None:
    spec, cfg = load_model_spec("llama-3-8b"), openrlhf_vllm_config(max_len=2048)
    assert vb.startup_check(spec, cfg, A100_TOTAL).status == vb.StartupStatus.OK
    # a DeepSpeed process holding 10 GiB: free = 79.26 − 10 − 0.70 (own context) = 68.56 < 75.29 GiB
    shared = vb.startup_check(spec, cfg, A100_TOTAL, other_process_bytes=10 * GiB)
    assert shared.status == vb.StartupStatus.INSUFFICIENT_FREE_MEMORY
    assert shared.message.startswith("Free memory on device cuda:0 (68.56/79.26 GiB) on startup is less than "
                                     "desired GPU memory utilization (0.95, 75.29 GiB)")
    # 0.9.1 checks too (before NCCL), and names no device (gpu_worker.py@v0.9.1 L138-147)
    v9 = openrlhf_vllm_config(max_len=2048, vllm_version="0.9.1")
    assert vb.startup_check(spec, v9, A100_TOTAL, other_process_bytes=10 * GiB).message.startswith(
        "Free memory on device (68.56/79.26 GiB) on startup is less than desired GPU memory utilization (0.95, ")
    old = openrlhf_vllm_config(max_len=2048, vllm_version="0.7.3")
    assert vb.startup_check(spec, old, A100_TOTAL, other_process_bytes=10 * GiB).status == vb.StartupStatus.OK


def test_startup_no_kv_memory() -> None:
    # 16 GiB × 0.9 = 14.4 GiB < 14.96 GiB weights + 0.61 GiB activations + 0.16 GiB non-torch
    cfg = openrlhf_vllm_config(max_len=2048, gpu_memory_utilization=0.9)
    check = vb.startup_check(load_model_spec("llama-3-8b"), cfg, 16 * GiB)
    assert check.status == vb.StartupStatus.NO_KV_MEMORY and check.kv_budget_bytes < 0
    assert check.message == "No available memory for the cache blocks."


def test_startup_max_model_len_too_large() -> None:
    spec = load_model_spec("qwen2.5-7b")  # 28 × 2 × 4 × 128 × 2 = 57,344 B per token
    cfg = openrlhf_vllm_config(max_len=131_072, gpu_memory_utilization=0.9)
    check = vb.startup_check(spec, cfg, 20 * GiB)  # 18 − 14.22 (weights) − 0.72 − 0.16 ≈ 2.9 GiB left
    assert check.status == vb.StartupStatus.MAX_MODEL_LEN_TOO_LARGE
    assert check.message.startswith("To serve at least one request with the model's max seq len (131072), (7.0 GiB "
                                    "KV cache is needed")  # 8192 blocks × 16 × 57,344 B = 7 GiB
    fits = vb.max_len_that_fits(spec, cfg, check.kv_budget_bytes)
    # one block of 28 layers = 28 × (2 × 16 × 4 × 128 × 2 B) = 917,504 B; whole blocks of 16 tokens
    assert fits == check.kv_budget_bytes // (28 * 32 * 1024) * 16 == 54_352
    v0 = openrlhf_vllm_config(max_len=29_000, gpu_memory_utilization=0.9, vllm_version="0.6.4")
    v0_check = vb.startup_check(load_model_spec("llama-3.1-8b"), v0, int(23.58 * GiB))
    assert v0_check.status == vb.StartupStatus.MAX_MODEL_LEN_TOO_LARGE
    assert v0_check.message.startswith("The model's max seq len (29000) is larger than the maximum number of tokens")


# ----------------------------------------------------------------------------- rollout and terms


def test_rollout_demand_waves() -> None:
    spec, cfg = load_model_spec("llama-3-8b"), openrlhf_vllm_config(max_len=2048)
    d = vb.rollout_demand(spec, cfg, A100_TOTAL, rollout_batch_size=1024, n_samples_per_prompt=8, num_engines=8)
    # 1024 × 8 / 8 = 1024 sequences; min(max_num_seqs 128, 238 at max_len) = 128 at once → 8 waves
    assert (d.seqs_per_engine, d.concurrent_seqs, d.waves) == (1024, 128, 8)
    assert "throughput, not memory" in d.note


def test_engine_terms_sleep_phases() -> None:
    spec = load_model_spec("llama-3-8b")
    awake = vb.engine_gpu_terms(spec, openrlhf_vllm_config(max_len=2048), A100_TOTAL)
    assert all(t.phase is None and t.device == Device.GPU for t in awake)
    names = {t.path for t in awake}
    assert names == {f"rollout.{n}" for n in ("weights", "kv_cache", "activations", "non_torch", "cuda_graphs",
                                              "cuda_context")}
    # everything the engine holds stays under requested + context + graphs (outside the budget)
    requested = vb.requested_bytes(openrlhf_vllm_config(max_len=2048), A100_TOTAL)
    inside = sum(t.bytes for t in awake if t.path.split(".")[1] in ("weights", "kv_cache", "activations", "non_torch"))
    assert requested - 2 * MiB < inside <= requested

    cfg = openrlhf_vllm_config(max_len=2048, enable_sleep=True, tensor_parallel_size=2)
    terms = vb.engine_gpu_terms(spec, cfg, A100_TOTAL)
    by_phase = {p: {t.path.split(".")[1] for t in terms if t.phase in (None, p)}
                for p in (Phase.ROLLOUT, Phase.TRAINING, Phase.WEIGHT_SYNC)}
    assert {"weights", "kv_cache"} <= by_phase[Phase.ROLLOUT]
    assert "weights" in by_phase[Phase.WEIGHT_SYNC] and "kv_cache" not in by_phase[Phase.WEIGHT_SYNC]
    assert not {"weights", "kv_cache"} & by_phase[Phase.TRAINING]
    assert {"activations", "cuda_graphs", "non_torch", "cuda_context", "nccl"} <= by_phase[Phase.TRAINING]
    kv = next(t for t in terms if t.category == Category.KV_CACHE)
    assert vb.sleep_released_bytes(spec, cfg, A100_TOTAL) == weight_bytes_per_rank(spec, 2) + kv.bytes


def test_engine_host_terms() -> None:
    spec = load_model_spec("llama-3-70b")
    assert vb.engine_host_terms(spec, openrlhf_vllm_config(max_len=2048, tensor_parallel_size=4)) == []
    cfg = openrlhf_vllm_config(max_len=2048, tensor_parallel_size=4, enable_sleep=True)
    term, rounding = vb.engine_host_terms(spec, cfg)  # rounding: tests/memory/test_host_alloc.py
    assert rounding.path == "rollout.sleeping_weights.pinned_rounding"
    assert term.device == Device.CPU and term.phase is None
    assert term.bytes == weight_bytes_per_rank(spec, 4)


# ----------------------------------------------------------------------------- published logs (golden)


def _cases_with(*keys: str, model: bool = False):
    for name, case in CASES.items():
        logged = case.get("logged", {})
        if all(k in logged for k in keys) and (not model or "model" in case.get("config", {})) \
                and "vllm_version" in case:
            yield pytest.param(case, id=name)


@pytest.mark.parametrize("case", list(_cases_with("weights_gib", model=True)))
def test_published_weights(case: dict) -> None:
    c = case["config"]
    got = weight_bytes_per_rank(load_model_spec(c["model"]), c["tensor_parallel_size"]) / GiB
    logged = case["logged"]["weights_gib"]
    assert abs(got - logged) / logged <= case["tolerance"]["weights_relative"], case["source"]


@pytest.mark.parametrize("case", list(_cases_with("kv_budget_gib", "weights_gib", "non_torch_gib")))
def test_published_kv_formula(case: dict) -> None:
    """vLLM's KV budget from the logged components must equal the logged budget up to rounding."""
    log, cfg = case["logged"], _record_cfg(case)
    # 0.6.4 logs the torch peak including the weights
    activation = log.get("activation_peak_gib", log.get("peak_torch_gib", 0) - log["weights_gib"])
    got = vb.kv_budget_from_components(cfg, int(log["total_gib"] * GiB), weights=int(log["weights_gib"] * GiB),
                                       activation_peak=int(activation * GiB), non_torch=int(log["non_torch_gib"] * GiB))
    assert abs(got / GiB - log["kv_budget_gib"]) <= case["tolerance"]["kv_formula_gib"], case["source"]
    if "requested_gib" in log:
        assert abs(vb.requested_bytes(cfg, int(log["total_gib"] * GiB)) / GiB - log["requested_gib"]) <= 0.01
    if "error" in log and log["kv_budget_gib"] <= 0:
        assert log["error"].startswith("No available memory for the cache blocks")


@pytest.mark.parametrize("case", list(_cases_with("kv_budget_gib", "num_blocks", model=True)))
def test_published_blocks(case: dict) -> None:
    """Blocks vLLM made of its logged budget, and the too-long error it raised."""
    spec, cfg, log = load_model_spec(case["config"]["model"]), _record_cfg(case), case["logged"]
    cap = vb.kv_capacity(spec, cfg, int(log["kv_budget_gib"] * GiB))
    assert abs(cap.num_blocks - log["num_blocks"]) <= case["tolerance"]["num_blocks"], case["source"]
    if "kv_tokens" in log:  # V0: max tokens = logged blocks × 16
        assert log["num_blocks"] * cfg.block_size == log["kv_tokens"] < cfg.max_model_len


@pytest.mark.parametrize("case", list(_cases_with("num_blocks", "max_concurrency", model=True)))
def test_published_concurrency(case: dict) -> None:
    spec, cfg, log = load_model_spec(case["config"]["model"]), _record_cfg(case), case["logged"]
    budget = log["num_blocks"] * page_size_bytes(spec, cfg) * kv_layout(spec, cfg).group_size
    cap = vb.kv_capacity(spec, cfg, budget)
    assert cap.num_blocks == log["num_blocks"]
    assert abs(cap.max_concurrency - log["max_concurrency"]) <= 0.005, case["source"]


@pytest.mark.parametrize("case", list(_cases_with("kv_budget_gib", "weights_gib", model=True)))
def test_published_end_to_end_budget(case: dict) -> None:
    """memplan's own budget (its activation, non-torch and weight formulas) against the logged budget."""
    c, log = case["config"], case["logged"]
    got = vb.kv_cache_budget_bytes(load_model_spec(c["model"]), _record_cfg(case), int(log["total_gib"] * GiB))
    assert abs(got / GiB - log["kv_budget_gib"]) <= case["tolerance"]["end_to_end_kv_gib"], case["source"]


def test_every_record_cites_a_url() -> None:
    assert len(CASES) >= 10
    for name, case in CASES.items():
        assert case["source"].startswith("https://github.com/"), name
        assert case["quote"] and case["id"], name


@pytest.mark.parametrize("name", ["llama-3-8b", "qwen2.5-7b", "llama-3-70b", "mixtral-8x7b", "deepseek-v3"])
def test_shards_cover_the_model(name: str) -> None:
    """Σ over TP ranks ≥ one full copy (replicated norms, KV heads, rotary cache); each rank holds less."""
    spec = load_model_spec(name)
    full = weight_bytes_per_rank(spec, 1)
    for tp in (2, 4, 8):
        shard = weight_bytes_per_rank(spec, tp)
        assert full / tp <= shard < full
