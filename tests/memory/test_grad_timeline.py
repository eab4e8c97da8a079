"""DeepSpeed's gradient buffers over one backward (memory/grad_timeline.py).

Expected bytes are computed by hand from DeepSpeed 0.19.8's source (the allocation each docstring cites)
and checked against real DeepSpeed on its CPU accelerator (validation/deepspeed_cpu records, per-op
timelines of scripts/probe_grad_timeline.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memplan.api import estimate
from memplan.memory import grad_timeline as gt
from memplan.memory.breakdown import Phase
from memplan.memory.zero import layout_from_tree, train_zero_config
from memplan.model.loader import load_model_spec as load_model
from memplan.model.params import param_tree

ROOT = Path(__file__).resolve().parents[2]
LLAMA_SMALL = str(ROOT / "tests" / "data" / "tiny" / "llama-small.json")
#: llama-small (tests/data/tiny/llama-small.json): transformers counts 45,617,664 parameters
#: (validation/deepspeed_cpu/llama-small-*.json, ``model_states.policy_num_params``).
LLAMA_SMALL_PARAMS = 45_617_664
BUCKET_BYTES = 500_000_000 * 2  # reduce_bucket_size 5e8 (config.py:113) in bf16


def _layout(spec=None):  # type: ignore[no-untyped-def]
    spec = spec or load_model(LLAMA_SMALL)
    return layout_from_tree(param_tree(spec))


def _bytes(terms) -> int:  # type: ignore[no-untyped-def]
    return sum(t.bytes for t in terms)


def test_grad_order_covers_every_trainable_parameter() -> None:
    spec = load_model(LLAMA_SMALL)
    order = gt.grad_order(param_tree(spec), spec.num_hidden_layers)
    assert order.total == LLAMA_SMALL_PARAMS
    assert order.head == 32_000 * 512  # untied lm_head: V x h, hooked first
    assert order.embedding == 32_000 * 512
    assert len(set(order.layers)) == 1  # identical decoder layers


def test_tied_head_is_hooked_with_the_embedding() -> None:
    spec = load_model(str(ROOT / "tests" / "data" / "tiny" / "qwen2-small.json"))  # tie_word_embeddings
    order = gt.grad_order(param_tree(spec), spec.num_hidden_layers)
    assert order.head == 0
    assert order.embedding == 32_768 * 448
    assert order.total == param_tree(spec).num_params


def test_zero2_small_model_ends_with_bucket_and_its_flat_copy() -> None:
    """T < reduce_bucket_size: no flush during backward; the epilogue flattens all T gradients (2 B each)
    next to the 1 GB bucket, and the partition is allocated only after the flat copy is freed."""
    zero = train_zero_config(zero_stage=2, dp_degree=2, ranks_per_node=2)
    end = gt.at_end(_layout(), zero, role="policy")
    assert _bytes(end) == BUCKET_BYTES + 2 * LLAMA_SMALL_PARAMS
    assert not any(t.path.endswith("grads.partition") for t in end)


def test_zero2_buffers_follow_the_hooks() -> None:
    zero = train_zero_config(zero_stage=2, dp_degree=2, ranks_per_node=2)
    layout = _layout()
    assert gt.during(layout, zero, role="policy", hooked=0, hooked_before=0) == []  # before the first hook
    first = gt.during(layout, zero, role="policy", hooked=16_384_000, hooked_before=0)
    assert _bytes(first) == BUCKET_BYTES


def test_zero2_large_model_flushes_and_keeps_the_partition() -> None:
    """7B at dp 8: once 5e8 gradients have been hooked the bucket has flushed once (flat copy of 5e8 bf16)
    and grads_in_partition (whole tensors overlapping the rank's 1/8) exists from then on."""
    spec = load_model("llama-2-7b")
    layout = _layout(spec)
    zero = train_zero_config(zero_stage=2, dp_degree=8, ranks_per_node=8)
    terms = gt.during(layout, zero, role="a", hooked=500_000_001, hooked_before=400_000_000)
    paths = {t.path for t in terms}
    assert paths == {"a.deepspeed.reduce_bucket", "a.deepspeed.reduce_flat_copy", "a.grads.partition"}
    flat = next(t for t in terms if t.path.endswith("reduce_flat_copy"))
    assert flat.bytes == 1_000_000_000
    partition = next(t for t in terms if t.path.endswith("grads.partition"))
    assert 2 * 6_738_415_616 // 8 <= partition.bytes < 2 * 6_738_415_616 // 8 + 2 * 32_000 * 4096 * 2


def test_zero1_end_holds_all_gradients_and_the_bucket() -> None:
    zero = train_zero_config(zero_stage=1, dp_degree=2, ranks_per_node=2)
    assert _bytes(gt.at_end(_layout(), zero, role="p")) == 2 * LLAMA_SMALL_PARAMS + BUCKET_BYTES


def test_zero0_has_no_bucket() -> None:
    zero = train_zero_config(zero_stage=0, dp_degree=1, ranks_per_node=1)
    assert _bytes(gt.during(_layout(), zero, role="p", hooked=1000, hooked_before=0)) == 2 * 1000


def _forward_grads(train_batch_size: int) -> list:  # type: ignore[type-arg]
    est = estimate(LLAMA_SMALL, method="sft", gpus=2, flags=[
        "--zero_stage", "2", "--max_len", "256", "--micro_train_batch_size", "2",
        "--train_batch_size", str(train_batch_size)])
    forward = next(u for u in est.devices[0].phases if u.phase == Phase.FORWARD)
    return [t for t in forward.terms if t.category.value == "grad"]


def test_forward_holds_no_gradients_with_one_micro_batch() -> None:
    """zero_grad(set_to_none=True) after each step: the next forward starts without gradients
    (validation/deepspeed_cpu/llama-small-zero2-w2.json: grad 0 in forward, 1 GB bucket in backward).
    train_batch_size 4 = micro 2 × 2 GPUs: one micro-batch per step."""
    assert _forward_grads(4) == []


def test_accumulating_gradients_stay_through_the_next_forward() -> None:
    """train_batch_size 8 = two micro-batches per step: ZeRO-2's grads_in_partition (allocated in the first
    backward) is still there when the second micro-batch runs forward."""
    assert "policy.grads.partition" in {t.path for t in _forward_grads(8)}


@pytest.mark.parametrize("case", ["llama-small-zero2-w2", "llama-small-zero3-w2", "llama-small-zero0-w1"])
def test_backward_peak_matches_real_deepspeed(case: str) -> None:
    """Real DeepSpeed 0.19.8 per-rank backward peak (MemTracker, CPU accelerator), within 0.1 %."""
    from memplan.validation.traces import predict_trace, predicted_rank_bytes

    record = json.loads((ROOT / "validation" / "deepspeed_cpu" / f"{case}.json").read_text())
    measured = record["measured"]["ranks"][0]["iterations"]["2"]["backward"]["total"]
    predicted = predicted_rank_bytes(predict_trace(record), "backward", include_host=True)
    assert abs(predicted - measured) <= 0.001 * measured
