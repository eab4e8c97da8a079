"""SGLang 0.5.12 engine memory: its pool rule applied by hand to Qwen2.5-7B at TP 2 on an H100 80GB.

Qwen2.5-7B (HF config): 28 layers, 4 KV heads, head_dim 128, max_position 131072. H100: cudaMemGetInfo total
85,045,477,376 B, nvidia-smi 81,559 MiB (hardware/data/gpus.toml).
"""

from __future__ import annotations

import pytest

from memplan.errors import ConfigError
from memplan.memory.breakdown import Device, Phase
from memplan.memory.sglang import (
    SglangConfig, SglangStartupStatus, default_chunked_prefill_size, default_cuda_graph_max_bs,
    kv_budget_bytes, kv_capacity, kv_cell_bytes, piecewise_capture_tokens, pre_load_free_bytes, sglang_config,
    sglang_host_terms, sglang_state_terms, startup_check, weight_bytes,
)
from memplan.memory.vllm_sleep import EngineState
from memplan.model import load_model_spec
from memplan.units import GiB, MiB

H100_TOTAL = 85_045_477_376
H100_MIB = 81_559
CONTEXT = 751_619_277                 # record pr21489: (178.36 − 177.66) GiB
NCCL_TP2 = 544 * MiB + 24 * MiB       # record nccl-issue964 + custom all-reduce (3 × 8 MiB)


def _cfg(**kw) -> SglangConfig:
    base = dict(tensor_parallel_size=2, mem_fraction_static=0.5, context_len=4096, gpu_memory_mib=H100_MIB,
                max_running_requests=256)
    base.update(kw)
    return sglang_config(**base)


def test_defaults_h100() -> None:
    # server_args.py L1456-1465: 60 GiB ≤ 81,559 MiB < 90 GiB → chunked 8192, graphs up to bs 256 (tp < 4) / 512
    assert default_chunked_prefill_size(H100_MIB) == 8192
    assert default_cuda_graph_max_bs(H100_MIB, 2) == 256 and default_cuda_graph_max_bs(H100_MIB, 4) == 512
    assert default_chunked_prefill_size(40_960) == 4096                  # A100-40GB: 40,960 MiB < 60 GiB
    assert default_chunked_prefill_size(143_771) == 8192                 # H200: < 160 GiB
    assert default_cuda_graph_max_bs(183_359, 1) == 512                  # B200
    # piecewise sizes up to 8192: 8 (4..32/4) + 14 (48..256/16) + 8 (288..512/32) + 8 (576..1024/64)
    #                             + 12 (1280..4096/256) + 8 (4608..8192/512) = 58
    assert len(piecewise_capture_tokens(8192)) == 58
    assert piecewise_capture_tokens(8192)[-1] == 8192


def test_qwen25_7b_tp2_h100_by_hand() -> None:
    spec = load_model_spec("qwen2.5-7b")
    cfg = _cfg()
    # free before loading: 85,045,477,376 − 751,619,277 − 595,591,168
    pre = pre_load_free_bytes(cfg, H100_TOTAL)
    assert pre == 83_698_266_931
    # weights: vLLM's TP-2 shard of 7,649,375,232 B with the 131,072 × 128 rotary cache in fp32, not bf16
    assert weight_bytes(spec, cfg) == 7_649_375_232 - 131_072 * 128 * 2 + 131_072 * 128 * 4 == 7_682_929_664
    # kv = (pre − W) − pre × (1 − 0.5) = 41,849,133,465.5 − 7,682,929,664 (GiB floats, int)
    budget = kv_budget_bytes(spec, cfg, pre)
    assert abs(budget - 34_166_203_801) <= 1
    # cell = 2 KV heads (4 / tp 2) × (128 + 128) × 28 layers × 2 B
    assert kv_cell_bytes(spec, cfg) == 2 * 256 * 28 * 2 == 28_672
    cap = kv_capacity(spec, cfg, budget)
    assert cap.max_total_num_tokens == 34_166_203_801 // 28_672 == 1_191_622
    assert cap.pool_bytes == (1_191_622 + 1) * 28_672                   # one padded page
    # requests: min(256, clamp(int(1,191,622 / 4096 × 512) = 148,952, 2048, 4096))
    assert cap.max_running_requests == 256
    assert cap.max_request_tokens == 4095
    # the GPU by state
    parts = {t.path: t.bytes for t in sglang_state_terms(spec, cfg, H100_TOTAL, EngineState.GENERATING)}
    # activations: vLLM-style peak: sampler 256 × 152,064 × 39 + 8192 × 3584 × 2 > forward 8192 × 39,168 × 2
    assert parts["rollout.activations"] == 256 * 152_064 * 39 + 8192 * 3584 * 2
    assert parts["rollout.cuda_graphs"] == 256 * 2 * MiB and parts["rollout.piecewise_graphs"] == 58 * 8 * MiB
    fixed = 256 * 2 * MiB + 58 * 8 * MiB + 512 * MiB + CONTEXT + NCCL_TP2
    asleep = sglang_state_terms(spec, cfg, H100_TOTAL, EngineState.ASLEEP, phase=Phase.TRAINING)
    assert sum(t.bytes for t in asleep) == fixed + 131_072 * 128 * 4      # buffers cloned on the GPU
    assert {t.phase for t in asleep} == {Phase.TRAINING} and all(t.device == Device.GPU for t in asleep)
    weights_only = sglang_state_terms(spec, cfg, H100_TOTAL, EngineState.WEIGHTS_ONLY)
    assert sum(t.bytes for t in weights_only) == fixed + 7_682_929_664
    # awake: weights + pool ≈ f × pre (SGLang's definition of the fraction)
    assert abs(parts["rollout.weights"] + parts["rollout.kv_cache"] - 0.5 * pre) < 2 * 28_672


def test_trainer_resident_shrinks_the_pool_instead_of_failing() -> None:
    spec = load_model_spec("qwen2.5-7b")
    # 30 GiB held by a trainer: pre = 85,045,477,376 − 32,212,254,720 − 751,619,277 − 595,591,168
    check = startup_check(spec, _cfg(), H100_TOTAL, other_process_bytes=30 * GiB)
    assert check.status == SglangStartupStatus.OK
    assert check.pre_free_bytes == 51_486_012_211
    # kv = 25,743,006,105.5 − 7,682,929,664 = 18,060,076,441 → // 28,672
    assert check.capacity.max_total_num_tokens == 629_885


def test_startup_not_enough_memory() -> None:
    spec = load_model_spec("qwen2.5-7b")
    # 70 GiB held: pre = 8,536,339,251; 0.5 × pre = 4.27e9 < weights 7.68e9 → no token
    check = startup_check(spec, _cfg(), H100_TOTAL, other_process_bytes=70 * GiB)
    assert check.status == SglangStartupStatus.NOT_ENOUGH_MEMORY
    assert check.message == ("Not enough memory. Please try to increase --mem-fraction-static. "
                             "Current value: mem_fraction_static=0.5")


def test_eager_keeps_piecewise_graphs() -> None:
    spec = load_model_spec("qwen2.5-7b")
    names = {t.path for t in sglang_state_terms(spec, _cfg(disable_cuda_graph=True), H100_TOTAL, EngineState.ASLEEP)}
    assert "rollout.cuda_graphs" not in names and "rollout.piecewise_graphs" in names


def test_host_terms() -> None:
    spec = load_model_spec("qwen2.5-7b")
    assert sglang_host_terms(spec, _cfg()) == []
    (backup,) = sglang_host_terms(spec, _cfg(), weights_cpu_backup=True)
    assert backup.device == Device.CPU and backup.bytes == 7_682_929_664


def test_bad_fraction() -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(mem_fraction_static=1.0)
    assert err.value.location == "sglang.mem_fraction_static"
