"""PyTorch's caching host allocator rounding, and DeepSpeed's pinned allocations it applies to."""

from __future__ import annotations

from memplan.dtypes import DType
from memplan.memory import host
from memplan.memory.host_alloc import pinned_block_bytes
from memplan.memory.zero import ParamLayout, train_zero_config

GiB = 2**30


def test_sglang_20_4_gib_request_pins_32_gib() -> None:
    # An SGLang PR measured a 20.4 GiB host KV pool pinning 32 GiB; pytorch/pytorch issue 95823 an
    # 8.1 GiB fp16 tensor (4,347,592,704 elements) using 16 GiB of host RAM.
    assert pinned_block_bytes(int(20.4 * GiB)) == 32 * GiB
    assert pinned_block_bytes(4_347_592_704 * 2) == 16 * GiB
    assert pinned_block_bytes(32 * GiB) == 32 * GiB  # a power of two is not rounded further
    assert pinned_block_bytes(0) == 0


def test_rounding_is_per_allocation_not_on_the_total() -> None:
    # Three 600M-element tensors, one group, dp 1, sub_group_size 1e9: DeepSpeed closes a sub-group when
    # it reaches 1e9 elements (stage3.py _create_fp16_sub_groups), so two fp32 gradient buffers of
    # 1.2e9 and 0.6e9 elements: 4.8e9 B -> 8 GiB and 2.4e9 B -> 4 GiB (by hand).
    layout = ParamLayout(trainable_groups=((600_000_000,) * 3,), frozen_tensors=(), largest_layer_params=600_000_000)
    zero = train_zero_config(zero_stage=3, dp_degree=1, ranks_per_node=1, adam_offload=True)
    allocations = dict((path, sizes) for path, sizes, _ in host.pinned_allocations(layout, zero, role="actor"))
    assert allocations["actor.offload.fp32_grads"] == (4_800_000_000, 2_400_000_000)
    terms = {t.path: t.bytes for t in host.pinned_overheads(layout, zero, role="actor")}
    assert terms["actor.offload.fp32_grads.pinned_rounding"] == (8 * GiB - 4_800_000_000) + (4 * GiB - 2_400_000_000)
    # rounded on the 7.2e9 B total instead, it would be 8 GiB - 7.2e9 B: per allocation is 4 GiB more
    assert terms["actor.offload.fp32_grads.pinned_rounding"] - (8 * GiB - 7_200_000_000) == 4 * GiB
    # The bf16 gradient partition (one flat buffer, 1.8e9 x 2 B = 3.6e9 B -> 4 GiB) ...
    assert terms["actor.grads.pinned_rounding"] == 4 * GiB - 3_600_000_000
    # ... is pinned by copying a filled pageable tensor: both exist for a moment (the largest pair).
    assert terms["actor.offload.pin_memory_copy"] == 4_800_000_000 + 8 * GiB


def test_no_pinning_no_rounding() -> None:
    layout = ParamLayout(trainable_groups=((600_000_000,),), frozen_tensors=(), largest_layer_params=600_000_000)
    zero = train_zero_config(zero_stage=3, dp_degree=1, ranks_per_node=1, adam_offload=False)
    assert host.pinned_overheads(layout, zero, role="actor") == []


def test_zero2_offload_pins_each_group() -> None:
    # Two groups of 3e9 and 1e6 elements, dp 2 (flat buffers padded to 2*dp): partitions 1.5e9 and 5e5.
    layout = ParamLayout(trainable_groups=((3_000_000_000,), (1_000_000,)), frozen_tensors=(),
                         largest_layer_params=3_000_000_000)
    zero = train_zero_config(zero_stage=2, dp_degree=2, ranks_per_node=2, adam_offload=True,
                             param_dtype=DType.BF16)
    allocations = dict((path, sizes) for path, sizes, _ in host.pinned_allocations(layout, zero, role="actor"))
    assert allocations["actor.optimizer.master_params"] == (6_000_000_000, 2_000_000)
    assert allocations["actor.offload.param_staging"] == (3_000_000_000, 1_000_000)
    assert allocations["actor.offload.grad_staging"] == (6_000_000_000,)


def test_seed_70b_actor_gradient_partition_pins_64_gib() -> None:
    # Issue 13's seed: each of the 4 actor ranks pins its bf16 ZeRO-3 gradient partition of
    # 34,488,324,096 B (17,244,162,048 elements), just above 2^35 = 34,359,738,368: the allocator pins 2^36.
    from tests.memory.test_host_limit import SEED
    from memplan.api import estimate_command

    est = estimate_command(" ".join(SEED.split()), gpu="a800-80g", version="0.11", host_ram=1_600_000_000_000)
    terms = {t.path: t.bytes for t in est.hosts[0].peak.terms}
    assert terms["actor.grads (×4 ranks)"] == 4 * 34_488_324_096
    assert terms["actor.grads.pinned_rounding (×4 ranks)"] == 4 * (64 * GiB - 34_488_324_096)


def test_offloaded_frozen_partitions_pin_one_block_per_tensor() -> None:
    # --ref_offload at ZeRO-3: each parameter's partition is pinned on its own (partition_parameters.py
    # :1836-1843); a 1.5e9-element bf16 tensor (3e9 B) pins 4 GiB, a 100-element one stays on the GPU
    # (persistence threshold 1e5).
    from memplan.memory.model_states import frozen_model_states
    from memplan.memory.zero import eval_zero_config

    layout = ParamLayout(trainable_groups=(), frozen_tensors=(1_500_000_000, 100), largest_layer_params=1_500_000_000)
    zero = eval_zero_config(zero_stage=3, dp_degree=1, ranks_per_node=1, offload=True)
    terms = {t.path: t.bytes for t in frozen_model_states(layout, zero, role="ref")}
    assert terms["ref.params.partition"] == 3_000_000_000
    assert terms["ref.params.partition.pinned_rounding"] == 4 * GiB - 3_000_000_000
    assert "ref.offload.pin_memory_copy" not in terms  # pinned from an untouched torch.empty


def test_vllm_sleeping_weights_rounded_per_tensor() -> None:
    # Llama-2-70B, TP 2, bf16: per layer qkv_proj (8192 + 2*1024)/2 x 8192 x 2 B = 80 MiB -> 128 MiB,
    # o_proj 8192 x 4096 x 2 B = 64 MiB (a power of two), gate_up_proj 2 x 14336 x 8192 x 2 B = 448 MiB
    # -> 512 MiB, down_proj 8192 x 14336 x 2 B = 224 MiB -> 256 MiB: 48 + 64 + 32 = 144 MiB per layer, x 80.
    # embed_tokens and lm_head 16000 x 8192 x 2 B = 250 MiB -> 256 MiB each; rotary cache 4096 x 128 x 2 B = 1 MiB
    # and the 161 norms (16 KiB each) share 2 MiB small segments: 2 segments, 4 MiB pinned for 3.52 MiB.
    from memplan.api import load_model_spec
    from memplan.memory.vllm import VllmConfig
    from memplan.memory.vllm_budget import engine_host_terms

    spec = load_model_spec("llama-2-70b")
    cfg = VllmConfig(tensor_parallel_size=2, gpu_memory_utilization=0.9, max_model_len=2048, max_num_seqs=256,
                     max_num_batched_tokens=8192, sleep_level=1)
    terms = {t.path: t.bytes for t in engine_host_terms(spec, cfg)}
    MiB = 2**20
    small = 1 * MiB + 161 * 16 * 1024
    expected = 80 * 144 * MiB + 2 * 6 * MiB + (4 * MiB - small)
    assert terms["rollout.sleeping_weights.pinned_rounding"] == expected
