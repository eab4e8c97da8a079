"""verl's own log-prob/loss code under fake tensors (``--framework verl --engine fake``) on a tiny config; skipped
when verl is not installed (see validation/verl_fake/README.md for the install)."""

from __future__ import annotations

import importlib.util

import pytest

from live_traces import REPO

pytestmark = pytest.mark.tracing


def test_tiny_verl_fake_trace_runs_and_holds_the_logits() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("tensordict")
    if importlib.util.find_spec("verl") is None:  # importing it needs ray, which the tracer stubs
        pytest.skip("verl is not installed")
    from memplan.tracing.fsdp_request import FsdpRole, FsdpTraceRequest
    from memplan.tracing.verl_fake import run_verl_fake

    request = FsdpTraceRequest(model=str(REPO / "tests/data/tiny/qwen2-tiny.json"), role=FsdpRole.ACTOR, world_size=1,
                               micro_batch_size=2, prompt_length=16, response_length=16, reshard_after_forward=True,
                               gradient_checkpointing=True, entropy=False)
    record = run_verl_fake(request, lambda message: None)
    steady = record["measured"]["ranks"][0]["transient_iterations"]["2"]
    logits = 2 * 32 * 640 * 2  # 64 packed tokens x vocabulary 640 x bf16
    assert steady["log_prob"]["activation"] + steady["log_prob"]["temp"] >= logits
    assert record["versions"]["verl"] == "0.9.1"
