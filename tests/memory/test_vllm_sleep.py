"""vLLM 0.24.0 (the version verl 0.9.1 pins): its budget rules and the engine's GPU by sleep state.

Every expected number is vLLM's rule applied by hand to Qwen2.5-7B (HF config: H 3584, I 18944, 28 layers,
28 heads, 4 KV heads, head_dim 128, V 152064, max_position 131072, untied) at TP 2 on an H100 80GB, with the
arithmetic in the comments; the record constants are the ones ``validation/published/vllm/`` ties.
"""

from __future__ import annotations

import math

import pytest

from memplan.errors import ConfigError
from memplan.memory import vllm_budget as vb
from memplan.memory.breakdown import Device, Phase
from memplan.memory.vllm import VllmConfig, VllmRunner, runner_for
from memplan.memory.vllm_sleep import EngineState, vllm_sleep_host_terms, vllm_state_gpu_bytes, vllm_state_terms
from memplan.model import load_model_spec
from memplan.units import GiB, MiB

#: H100 80GB as cudaMemGetInfo reports it (hardware/data/gpus.toml runtime_total_bytes).
H100_TOTAL = 85_045_477_376


def _cfg(sleep_level: int = 2, **kw) -> VllmConfig:
    base = dict(tensor_parallel_size=2, gpu_memory_utilization=0.5, max_model_len=4096, max_num_seqs=256,
                max_num_batched_tokens=8192, sleep_level=sleep_level, vllm_version="0.24.0")
    base.update(kw)
    return VllmConfig(**base)


# Qwen2.5-7B weights on one of 2 ranks, elements:
#   embed_tokens, lm_head: round_up(152064, 64)/2 × 3584 = 76032 × 3584 = 272,498,688 each
#   per layer: q 3584×3584/2 = 6,422,528 (+ bias 1,792); k, v: 2 heads × 128 × 3584 = 917,504 (+ bias 256) each;
#              o 6,422,528; gate, up, down: 18944×3584/2 = 33,947,648 each; 2 norms 7,168
#            = 6,424,320 + 2 × 917,760 + 6,422,528 + 3 × 33,947,648 + 7,168 = 116,532,480
#   final norm 3,584; rotary cache 131,072 × 128 = 16,777,216
#   total = 2 × 272,498,688 + 28 × 116,532,480 + 3,584 + 16,777,216 = 3,824,687,616 elements × 2 B
WEIGHTS = 7_649_375_232


def test_024_runner_by_architecture() -> None:
    # config/vllm.py@v0.24.0 L68-77: Qwen2ForCausalLM is not in the V2 list; LlamaForCausalLM and Qwen3 are
    assert runner_for(load_model_spec("qwen2.5-7b"), "0.24.0") == VllmRunner.V1
    assert runner_for(load_model_spec("llama-3-8b"), "0.24.0") == VllmRunner.V2
    assert runner_for(load_model_spec("qwen2.5-7b"), "0.27.1") == VllmRunner.V2   # 0.27.1: every dense model
    # V1 + VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1 (envs.py L1894-1895): the estimate is in the budget
    assert vb.cuda_graph_in_budget(load_model_spec("qwen2.5-7b"), _cfg())
    assert not vb.cuda_graph_in_budget(load_model_spec("llama-3-8b"), _cfg())    # V2 returns 0 (L684-686)
    assert not vb.cuda_graph_in_budget(load_model_spec("qwen2.5-7b"), _cfg(enforce_eager=True))


def test_qwen25_7b_tp2_h100_budget_by_hand() -> None:
    spec = load_model_spec("qwen2.5-7b")
    cfg = _cfg()
    # request_memory (v1/worker/utils.py@v0.24.0 L410-412): ceil(85,045,477,376 × 0.5)
    requested = 42_522_738_688
    # dummy forward over 8192 tokens: 8192 × (3 × 3584 + 3 × 18944/2) × 2 B = 8192 × 39,168 × 2
    forward = 641_728_512
    # dummy sampler: 256 rows × 152,064 × 39 B + 8192 × 3584 × 2 B (hidden states)
    sampler = 256 * 152_064 * 39 + 8192 * 3584 * 2
    assert sampler == 1_576_927_232 > forward
    non_torch = 171_798_691                       # int(0.16 GiB)
    graphs = 28 * (2_845_415_833 // 80)           # 28 layers × int(2.65 GiB)/80 (TP > 1 record) = 995,895,516
    kv = requested - WEIGHTS - sampler - non_torch - graphs
    assert kv == 32_128_742_017
    assert vb.kv_cache_budget_bytes(spec, cfg, H100_TOTAL) == kv
    cap = vb.kv_capacity(spec, cfg, kv)
    # page = 2 × 16 tokens × 2 KV heads × 128 × 2 B = 16,384 B per layer; 28 layers share one block table
    assert cap.num_blocks == kv // 16_384 // 28 == 70_035
    assert cap.blocks_per_seq == 4096 // 16 == 256
    assert cap.num_tokens == int(70_035 / 256 * 4096) == 1_120_560      # int(concurrency × max_model_len)
    assert cap.seqs_at_max_len == 273


def test_qwen25_7b_tp2_h100_states_by_hand() -> None:
    spec = load_model_spec("qwen2.5-7b")
    cfg = _cfg()
    pool = 70_035 * 16_384 * 28                    # 32,128,696,320
    context = round((178.36 - 177.66) * GiB)       # record pr21489: 751,619,277
    nccl = 544 * MiB + 3 * 8 * MiB                 # TP-2 communicator + custom all-reduce: 595,591,168
    resident = 171_798_691 + context + nccl + 995_895_516
    assert vllm_state_gpu_bytes(spec, cfg, H100_TOTAL, EngineState.ASLEEP) == resident == 2_514_904_652
    assert vllm_state_gpu_bytes(spec, cfg, H100_TOTAL, EngineState.WEIGHTS_ONLY) == resident + WEIGHTS
    generating = resident + WEIGHTS + pool + 1_576_927_232
    assert vllm_state_gpu_bytes(spec, cfg, H100_TOTAL, EngineState.GENERATING) == generating
    # awake the engine holds its share (less the KV rounding) plus what lies outside it
    assert 0 <= 42_522_738_688 + context + nccl - generating < 16_384 * 28
    # no sleep mode: nothing is ever released
    awake = vllm_state_gpu_bytes(spec, _cfg(sleep_level=0), H100_TOTAL, EngineState.GENERATING)
    assert vllm_state_gpu_bytes(spec, _cfg(sleep_level=0), H100_TOTAL, EngineState.ASLEEP) == awake == generating
    terms = vllm_state_terms(spec, cfg, H100_TOTAL, EngineState.WEIGHTS_ONLY, path="r", phase=Phase.WEIGHT_SYNC)
    assert {t.phase for t in terms} == {Phase.WEIGHT_SYNC} and all(t.device == Device.GPU for t in terms)
    assert sorted(t.path for t in terms) == ["r.cuda_context", "r.cuda_graphs_in_budget", "r.nccl", "r.non_torch",
                                             "r.weights"]


def test_llama_on_024_keeps_graphs_outside() -> None:
    # V2 runner: graphs are not in the budget, so the engine's total exceeds its share by the graphs too
    spec = load_model_spec("llama-3-8b")
    cfg = _cfg()
    graphs = 32 * (2_845_415_833 // 80)
    names = {t.path for t in vllm_state_terms(spec, cfg, H100_TOTAL, EngineState.ASLEEP)}
    assert names == {"rollout.non_torch", "rollout.cuda_context", "rollout.nccl", "rollout.cuda_graphs"}
    assert vb.outside_budget_bytes(spec, cfg) == graphs + round(0.70 * GiB) + 544 * MiB + 24 * MiB


def test_startup_free_check_with_a_trainer_resident() -> None:
    spec = load_model_spec("qwen2.5-7b")
    # free at the snapshot = total − others − context − NCCL (0.24: NCCL before the snapshot, L318-342)
    others = 40 * GiB
    free = H100_TOTAL - others - 751_619_277 - 595_591_168
    assert free == 40_748_593_971 < 42_522_738_688      # 85,045,477,376 − 42,949,672,960 − 751,619,277 − 595,591,168
    check = vb.startup_check(spec, _cfg(), H100_TOTAL, other_process_bytes=others)
    # format_gib = round(b / GiB, 2): 40,748,593,971 → 37.95; 85,045,477,376 → 79.2; 42,522,738,688 → 39.6
    assert check.status == vb.StartupStatus.INSUFFICIENT_FREE_MEMORY
    assert check.message == ("Free memory on device cuda:0 (37.95/79.2 GiB) on startup is less than desired GPU "
                             "memory utilization (0.5, 39.6 GiB).")
    assert vb.startup_check(spec, _cfg(), H100_TOTAL, other_process_bytes=30 * GiB).status == vb.StartupStatus.OK


def test_sleep_host_terms() -> None:
    spec = load_model_spec("qwen2.5-7b")
    assert vllm_sleep_host_terms(spec, _cfg(sleep_level=0)) == []
    # level 2: only the rotary buffer goes to host: 131,072 × 128 × 2 B
    (buffers,) = vllm_sleep_host_terms(spec, _cfg(sleep_level=2))
    assert buffers.bytes == 131_072 * 128 * 2 == 32 * MiB and buffers.device == Device.CPU
    # level 1: the weights shard backed up in pinned host tensors (plus pinned rounding)
    weights, *rounding = vllm_sleep_host_terms(spec, _cfg(sleep_level=1), phase=Phase.ROLLOUT)
    assert weights.bytes == WEIGHTS and weights.phase == Phase.ROLLOUT
    assert "cumem.py@v0.24.0" in weights.source.ref
    assert all(t.device == Device.CPU for t in rounding)


def test_sleep_level_out_of_range() -> None:
    with pytest.raises(ConfigError):
        _cfg(sleep_level=3)


def test_ceil_request_differs_from_float_product() -> None:
    # 0.24 uses ceil (L410): total × 0.5 is exact here, so pick 0.3: 25,513,643,212.8 → 25,513,643,213
    assert vb.requested_bytes(_cfg(gpu_memory_utilization=0.3), H100_TOTAL) == math.ceil(H100_TOTAL * 0.3)
    assert vb.requested_bytes(_cfg(gpu_memory_utilization=0.3), H100_TOTAL) == 25_513_643_213
