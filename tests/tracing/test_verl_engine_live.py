"""verl's own ``FSDPEngineWithLMHead`` step under fake tensors (``--framework verl --engine fake-engine``) on a tiny
config; skipped when verl is not installed (see validation/verl_fake/README.md for the install)."""

from __future__ import annotations

import importlib.util

import pytest

from live_traces import REPO

pytestmark = pytest.mark.tracing


def test_tiny_verl_engine_trace_runs_the_engine_and_keeps_the_entropy() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("tensordict")
    pytest.importorskip("datasets")  # verl.workers.utils.losses imports it (through verl.utils.dataset)
    if importlib.util.find_spec("verl") is None:  # importing it needs ray, which the tracer stubs
        pytest.skip("verl is not installed")
    from memplan.tracing.fsdp_request import FsdpRole, FsdpTraceRequest
    from memplan.tracing.verl_engine import run_verl_engine

    request = FsdpTraceRequest(model=str(REPO / "tests/data/tiny/qwen2-tiny.json"), role=FsdpRole.ACTOR, world_size=1,
                               micro_batch_size=2, prompt_length=16, response_length=16, reshard_after_forward=True,
                               gradient_checkpointing=True, entropy=False)
    record = run_verl_engine(request, lambda message: None)
    steady = record["measured"]["ranks"][0]["transient_iterations"]["2"]
    assert set(steady) >= {"log_prob", "forward", "backward"}
    logits = 2 * 32 * 640 * 2  # 64 packed tokens x vocabulary 640 x bf16
    # verl's trainer asks compute_log_prob for the entropy: entropy_from_logits keeps a softmax as large as the
    # logits next to them (verl/utils/torch_functional.py entropy_from_logits: pd = softmax(logits)).
    assert steady["log_prob"]["activation"] + steady["log_prob"]["temp"] >= 2 * logits
    assert record["engine"] == "fake-engine" and record["config"]["log_prob_entropy"] is True
    assert record["versions"]["verl"] == "0.9.1"
