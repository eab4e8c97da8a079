"""Model states and DeepSpeed buffers against hand-computed values (memory/model_states.py, zero.py, host.py)."""

from __future__ import annotations

import pytest

from memplan.dtypes import DType
from memplan.errors import ConfigError
from memplan.memory.sharding import ZeroStage
from memplan.memory import host
from memplan.memory.breakdown import Device, Phase, Term
from memplan.memory.model_states import frozen_model_states, nf4_base_weights, trained_model_states
from memplan.memory.zero import (
    ParamLayout, ZeroConfig, eval_zero_config, layout_from_counts, layout_from_tree, train_zero_config,
)
from memplan.model import load_model_spec, param_tree

GB = 10**9
# Llama-2-7B (LlamaForCausalLM): P = 6,738,415,616; embed/lm_head 32000 × 4096 = 131,072,000 each;
# per layer q,k,v,o 4096² = 16,777,216 each and gate,up,down 4096 × 11008 = 45,088,768 each;
# 65 RMSNorm weights of 4096 (2 per layer + final) = 266,240 → OpenRLHF's no-decay group.
P7 = 6_738_415_616
NORMS7 = 65 * 4096
DECAY7 = P7 - NORMS7  # 6,738,149,376


@pytest.fixture(scope="module")
def llama7b() -> ParamLayout:
    return layout_from_tree(param_tree(load_model_spec("llama-2-7b")))


def by_path(terms: list[Term], phase: Phase | None = None) -> dict[str, int]:
    return {t.path: t.bytes for t in terms if t.phase == phase}


def persistent_model_states(terms: list[Term]) -> int:
    """The paper's model states: weights, gradients, master weights and moments (no DeepSpeed buffers)."""
    return sum(t.bytes for t in terms if t.phase is None and t.device == Device.GPU
               and not t.path.startswith("actor.deepspeed."))


@pytest.mark.parametrize(("stage", "expected_bytes", "printed_gb"), [
    (0, (2 + 2 + 12) * 7_500_000_000, 120.0),                                   # 16 Ψ
    (1, (2 + 2) * 7_500_000_000 + 12 * 7_500_000_000 // 64, 31.4),             # 30e9 + 1.40625e9
    (2, 2 * 7_500_000_000 + (2 + 12) * 7_500_000_000 // 64, 16.6),              # 15e9 + 1.640625e9
    (3, (2 + 2 + 12) * 7_500_000_000 // 64, 1.9),                               # 1.875e9
])
def test_zero_paper_figure_1(stage: int, expected_bytes: int, printed_gb: float) -> None:
    """Rajbhandari et al., arXiv:1910.02054 Fig. 1: Ψ = 7.5e9, N_d = 64, K = 12 (decimal GB)."""
    layout = layout_from_counts(num_params=7_500_000_000, trainable_params=7_500_000_000)
    zero = train_zero_config(zero_stage=stage, dp_degree=64, ranks_per_node=8)
    total = persistent_model_states(trained_model_states(layout, zero, role="actor"))
    assert total == expected_bytes
    assert round(total / GB, 1) == printed_gb


def test_llama2_7b_zero2_by_hand(llama7b: ParamLayout) -> None:
    zero = train_zero_config(zero_stage=2, dp_degree=8, ranks_per_node=8)
    terms = trained_model_states(llama7b, zero, role="actor")
    # Flat groups are padded to 2·N = 16: 6,738,149,376 / 16 and 266,240 / 16 are whole → no padding.
    ps_decay, ps_norms = DECAY7 // 8, NORMS7 // 8          # 842,268,672 and 33,280
    ps = ps_decay + ps_norms                                # 842,301,952 = P / 8
    # Worst rank for grads_in_partition is rank 1: [842,268,672, 1,684,537,344) of the decay flat.
    # It starts inside layer 3's gate_proj, which begins at 131,072,000 + 3 × 202,375,168 + 67,108,864
    # = 805,306,368 (36,962,304 elements before the boundary), and ends inside layer 7's up_proj,
    # 1,659,895,808 .. 1,704,984,576 (20,447,232 beyond). Its no-decay slice [33,280, 66,560) touches
    # norm tensors 8..16: 9 × 4096 = 36,864.
    grads_in_partition = ps_decay + 36_962_304 + 20_447_232 + 9 * 4096  # 899,715,072
    assert by_path(terms) == {
        "actor.params": 2 * P7,                             # 13,476,831,232
        "actor.grads.partition": 2 * grads_in_partition,    # 1,799,430,144
        "actor.optimizer.master_params": 4 * ps,            # 3,369,207,808
        "actor.optimizer.exp_avg": 4 * ps,
        "actor.optimizer.exp_avg_sq": 4 * ps,
    }
    assert by_path(terms, Phase.BACKWARD) == {
        "actor.deepspeed.reduce_bucket": 2 * 500_000_000,  # one bf16 bucket (overlap_comm off)
        "actor.deepspeed.reduce_flat_copy": 2 * 500_000_000,
    }
    assert by_path(terms, Phase.OPTIMIZER_STEP) == {
        "actor.optimizer.fp32_grads": 4 * ps_decay,         # 3,369,074,688
        "actor.optimizer.grad_flat_copy": 2 * ps_decay,     # 1,684,537,344
    }


def test_llama2_7b_zero3_by_hand(llama7b: ParamLayout) -> None:
    zero = train_zero_config(zero_stage=3, dp_degree=8, ranks_per_node=8)
    terms = trained_model_states(llama7b, zero, role="actor")
    p3 = P7 // 8                     # every tensor size divides by 8: Σ ceil(t/8) = 842,301,952
    persistent = NORMS7              # 65 norm weights of 4096 <= 1e5 stay whole
    assert by_path(terms) == {
        "actor.params.persistent": 2 * (persistent + persistent // 8),   # (266,240 + 33,280) × 2 = 599,040
        "actor.params.partition": 2 * (p3 - persistent // 8),            # 1,684,537,344
        "actor.grads": 2 * p3,                                           # bf16 (grad_accum = model dtype)
        "actor.optimizer.master_params": 4 * p3,
        "actor.optimizer.exp_avg": 4 * p3,
        "actor.optimizer.exp_avg_sq": 4 * p3,
        "actor.deepspeed.reduce_bucket": 2 * 500_000_000,               # kept from init at stage 3
    }
    # Gathered: 5e8 retained (max_reuse_distance / 2) + 131,072,000 (embedding) + 5e7 prefetch.
    gathered = 2 * (500_000_000 + 131_072_000 + 50_000_000)             # 1,362,144,000
    assert by_path(terms, Phase.FORWARD) == {"actor.deepspeed.gathered_params": gathered}
    assert by_path(terms, Phase.BACKWARD) == {
        "actor.deepspeed.gathered_params": gathered,
        "actor.deepspeed.reduce_flat_copy": 2 * 500_000_000,
        "actor.deepspeed.module_grads": 2 * 131_072_000,
    }
    # One sub-group per param group (842,268,672 <= sub_group_size 1e9).
    assert by_path(terms, Phase.OPTIMIZER_STEP) == {
        "actor.optimizer.fp32_grads": 4 * (DECAY7 // 8),
        "actor.optimizer.grad_flat_copy": 2 * (DECAY7 // 8),
    }


def test_resolver_openrlhf_defaults() -> None:
    z2 = train_zero_config(zero_stage=2, dp_degree=8, ranks_per_node=8)
    assert (z2.overlap_comm, z2.contiguous_gradients, z2.reduce_bucket_size, z2.grad_accum_dtype) == (
        False, True, 500_000_000, DType.BF16)
    assert train_zero_config(zero_stage=3, dp_degree=8, ranks_per_node=8).overlap_comm is True
    ref = eval_zero_config(zero_stage=2, dp_degree=8, ranks_per_node=8, offload=True)
    assert (ref.stage, ref.offload_param) == (ZeroStage.ZERO_0, False)  # --ref_offload inert below stage 3
    ref3 = eval_zero_config(zero_stage=3, dp_degree=8, ranks_per_node=8, offload=True)
    assert (ref3.stage, ref3.offload_param) == (ZeroStage.ZERO_3, True)
    with pytest.raises(ConfigError, match="zero.offload_optimizer"):
        train_zero_config(zero_stage=0, dp_degree=8, ranks_per_node=8, adam_offload=True)
    with pytest.raises(ConfigError, match="zero.grad_accum_dtype"):
        train_zero_config(zero_stage=0, dp_degree=8, ranks_per_node=8, grad_accum_dtype=DType.FP32)
    with pytest.raises(ConfigError, match="zero.zpg"):
        train_zero_config(zero_stage=3, dp_degree=12, ranks_per_node=8, zpg=8)
    with pytest.raises(ConfigError, match="zero.stage"):
        train_zero_config(zero_stage=4, dp_degree=8, ranks_per_node=8)


def test_grad_accum_dtype_fp32() -> None:
    layout = layout_from_counts(num_params=8_000_000, trainable_params=8_000_000)
    fp32 = DType.FP32
    z3 = train_zero_config(zero_stage=3, dp_degree=4, ranks_per_node=4, grad_accum_dtype=fp32)
    t3 = trained_model_states(layout, z3, role="actor")
    assert by_path(t3)["actor.grads"] == 4 * 2_000_000            # fp32 partition: 18 B/param with master+Adam
    # The flattened sub-group is already fp32: one 4-byte copy, no second cast.
    assert by_path(t3, Phase.OPTIMIZER_STEP) == {"actor.optimizer.fp32_grads": 4 * 2_000_000}
    z2 = train_zero_config(zero_stage=2, dp_degree=4, ranks_per_node=4, grad_accum_dtype=fp32)
    t2 = trained_model_states(layout, z2, role="actor")
    assert by_path(t2)["actor.grads.partition"] == 4 * 2_000_000  # compact fp32 partition, no step copies
    assert by_path(t2, Phase.OPTIMIZER_STEP) == {}
    tree_layout = layout_from_tree(param_tree(load_model_spec("llama-2-7b")))
    cast = by_path(trained_model_states(tree_layout, z2, role="actor"), Phase.BACKWARD)["actor.deepspeed.grad_upcast"]
    assert cast == 4 * 131_072_000                                  # one embedding slice cast to fp32
    z1 = train_zero_config(zero_stage=1, dp_degree=4, ranks_per_node=4, grad_accum_dtype=fp32)
    assert z1.uses_bf16_optimizer
    t1 = trained_model_states(layout, z1, role="actor")
    assert by_path(t1) == {"actor.params": 2 * 8_000_000, "actor.grads": 2 * 8_000_000,
                           "actor.grads.fp32_accum": 4 * 8_000_000, "actor.optimizer.master_params": 4 * 2_000_000,
                           "actor.optimizer.exp_avg": 4 * 2_000_000, "actor.optimizer.exp_avg_sq": 4 * 2_000_000}
    assert by_path(t1, Phase.BACKWARD) == {} and by_path(t1, Phase.OPTIMIZER_STEP) == {}


def test_reduce_bucket_is_fixed_cost() -> None:
    lora = layout_from_counts(num_params=7_000_000_000, trainable_params=20_000_000)
    z2 = train_zero_config(zero_stage=2, dp_degree=8, ranks_per_node=8)
    backward = by_path(trained_model_states(lora, z2, role="actor"), Phase.BACKWARD)
    assert backward["actor.deepspeed.reduce_bucket"] == 2 * 500_000_000  # 1 GB for 20M trainable params
    assert backward["actor.deepspeed.reduce_flat_copy"] == 2 * 20_000_000  # the copy is bounded by T
    overlap = train_zero_config(zero_stage=2, dp_degree=8, ranks_per_node=8, overlap_comm=True)
    assert by_path(trained_model_states(lora, overlap, role="actor"), Phase.BACKWARD)[
        "actor.deepspeed.reduce_bucket"] == 2 * 2 * 500_000_000          # double buffer with overlap_comm


def test_zero3_gathered_params_limits() -> None:
    small = layout_from_counts(num_params=400_000_000, trainable_params=400_000_000, largest_layer_params=50_000_000)
    z3 = train_zero_config(zero_stage=3, dp_degree=8, ranks_per_node=8)
    gathered = by_path(trained_model_states(small, z3, role="actor"), Phase.FORWARD)["actor.deepspeed.gathered_params"]
    assert gathered == 2 * 400_000_000  # smaller than max_reuse_distance / 2: the whole model stays gathered
    ref = eval_zero_config(zero_stage=3, dp_degree=8, ranks_per_node=8)
    frozen = by_path(frozen_model_states(small, ref, role="ref"), Phase.FORWARD)
    assert frozen["ref.deepspeed.gathered_params"] == 2 * (50_000_000 + 50_000_000)  # one module + prefetch
    tight = ZeroConfig(stage=ZeroStage.ZERO_3, dp_degree=8, ranks_per_node=8, param_dtype=DType.BF16,
                       grad_accum_dtype=DType.BF16, max_live_parameters=100_000_000, max_reuse_distance=200_000_000)
    big = layout_from_counts(num_params=7_000_000_000, trainable_params=7_000_000_000, largest_layer_params=10**8)
    backward = by_path(trained_model_states(big, tight, role="actor"), Phase.BACKWARD)
    gathered = backward["actor.deepspeed.gathered_params"]
    assert gathered == 2 * (100_000_000 + 100_000_000 + 0)  # retained 1e8, module 1e8, no room to prefetch


def test_zpg_adds_secondary_copy() -> None:
    layout = layout_from_counts(num_params=16_000_000, trainable_params=16_000_000)
    z = train_zero_config(zero_stage=3, dp_degree=16, ranks_per_node=8, zpg=8)
    assert by_path(trained_model_states(layout, z, role="actor"))["actor.deepspeed.hpz_secondary_params"] == (
        2 * 16_000_000 // 8)  # bf16 copy partitioned over 8 ranks of the node
    assert "actor.deepspeed.hpz_secondary_params" not in by_path(
        trained_model_states(layout, train_zero_config(zero_stage=2, dp_degree=16, ranks_per_node=8, zpg=8),
                             role="actor"))


def test_adam_offload_zero2_host_and_gpu(llama7b: ParamLayout) -> None:
    zero = train_zero_config(zero_stage=2, dp_degree=8, ranks_per_node=8, adam_offload=True,
                             gradient_accumulation_steps=4)
    terms = trained_model_states(llama7b, zero, role="actor")
    ps = P7 // 8
    largest = 131_072_000            # embed_tokens / lm_head
    # the allocator's rounding of these pinned buffers: tests/memory/test_host_alloc.py
    terms = [t for t in terms if not t.path.endswith(".pinned_rounding")]
    assert by_path(terms) == {
        "actor.params": 2 * P7,
        "actor.deepspeed.offload_grad_staging": 2 * largest,
        "actor.optimizer.master_params": 4 * ps,        # host, pinned
        "actor.optimizer.exp_avg": 4 * ps,              # host, pageable
        "actor.optimizer.exp_avg_sq": 4 * ps,
        "actor.offload.fp32_grads": 4 * ps,             # pinned
        "actor.offload.param_staging": 2 * ps,          # pinned bf16
        "actor.offload.grad_staging": 2 * largest,      # pinned bf16
        "actor.offload.accumulated_grads": 2 * 899_715_072,  # whole tensors of the worst rank (see above)
    }
    gpu = {t.path for t in terms if t.device == Device.GPU and t.phase is None}
    assert gpu == {"actor.params", "actor.deepspeed.offload_grad_staging"}
    assert by_path(terms, Phase.OPTIMIZER_STEP) == {}
    assert by_path(terms, Phase.BACKWARD)["actor.deepspeed.offload_grad_upcast"] == 4 * largest
    # Host per rank: 4 + 4 + 4 + 4 + 2 = 18 B per partition element (+ accumulation); × 8 ranks per node.
    per_rank = sum(t.bytes for t in host.host_terms(terms))
    assert sum(t.bytes for t in host.per_node(terms, zero)) == 8 * per_rank


def test_frozen_reference_models(llama7b: ParamLayout) -> None:
    replica = frozen_model_states(llama7b, eval_zero_config(zero_stage=2, dp_degree=8, ranks_per_node=8), role="ref")
    assert by_path(replica) == {"ref.params": 2 * P7}   # full bf16 copy on every GPU
    offloaded = frozen_model_states(llama7b, eval_zero_config(zero_stage=3, dp_degree=8, ranks_per_node=8,
                                                              offload=True), role="ref")
    on_cpu = {t.path: t.bytes for t in offloaded if t.device == Device.CPU}
    assert on_cpu.pop("ref.params.partition.pinned_rounding") > 0  # one pinned block per tensor (test_host_alloc)
    assert on_cpu == {"ref.params.partition": 2 * (P7 // 8 - NORMS7 // 8)}
    assert by_path(offloaded, Phase.FORWARD) == {"ref.deepspeed.gathered_params": 2 * (131_072_000 + 50_000_000)}


def test_nf4_base_weights_by_hand() -> None:
    terms = {t.path: t.bytes for t in nf4_base_weights(param_tree(load_model_spec("llama-2-7b")), role="actor")}
    linear = 32 * (4 * 16_777_216 + 3 * 45_088_768)      # 6,476,005,376 quantised elements
    # Per 4096² tensor: 262,144 blocks of 64 → 262,144 B uint8 absmax + ceil(262,144/256) × 4 = 4,096 B
    # + 17 × 4 = 68 B (offset + 16-entry code); per 4096 × 11008 tensor: 704,512 + 2,752 × 4 + 68.
    constants = 32 * (4 * (262_144 + 4_096 + 68) + 3 * (704_512 + 11_008 + 68))
    assert terms == {
        "actor.params.nf4_packed": linear // 2,          # 3,238,002,688
        "actor.params.nf4_constants": constants,         # 102,783,872
        "actor.params.bf16": 2 * 2 * 131_072_000,        # embed_tokens + lm_head
        "actor.params.fp32_norms": 4 * NORMS7,
    }


def test_host_model_loading(llama7b: ParamLayout) -> None:
    z2 = train_zero_config(zero_stage=2, dp_degree=8, ranks_per_node=8)
    [load2] = host.model_loading(llama7b, z2, role="actor")
    assert (load2.bytes, load2.phase, load2.device) == (2 * P7, Phase.LOAD, Device.CPU)  # bf16 copy per rank
    z3 = train_zero_config(zero_stage=3, dp_degree=8, ranks_per_node=8)
    assert host.model_loading(llama7b, z3, role="actor")[0].bytes == 2 * 131_072_000  # one module at a time


def test_zero3_adam_offload_keeps_bf16_grad_partition_pinned() -> None:
    layout = layout_from_counts(num_params=8_000_000, trainable_params=8_000_000)
    zero = train_zero_config(zero_stage=3, dp_degree=4, ranks_per_node=4, adam_offload=True)
    cpu = {t.path: t.bytes for t in trained_model_states(layout, zero, role="actor")
           if t.device == Device.CPU and t.phase is None and not t.path.endswith(".pinned_rounding")}
    p3 = 2_000_000
    assert cpu == {"actor.grads": 2 * p3, "actor.optimizer.master_params": 4 * p3,
                   "actor.optimizer.exp_avg": 4 * p3, "actor.optimizer.exp_avg_sq": 4 * p3,
                   "actor.offload.fp32_grads": 4 * p3}   # 18 B per partition element on the host
