"""The verl reference kinds (fsdp-cpu, verl-fake) in ``memplan validate``: their rows exist, read the stored
records' bytes, and report "no prediction yet" without failing the gate until memplan predicts FSDP."""

from __future__ import annotations

import json
from pathlib import Path

from memplan.validation import Kind, Status, compare
from memplan.validation.verl_traces import reference_metrics

REPO = Path(__file__).resolve().parents[2]


def test_fsdp_cpu_rows_are_reported_not_gated() -> None:
    result = compare(REPO / "validation", ["fsdp-cpu", "verl-fake"])
    rows = [r for r in result.rows if r.kind is Kind.FSDP_CPU]
    assert len({r.case for r in rows}) >= 7
    assert all(r.status is Status.NO_PREDICTION and not r.gate_fails for r in rows)
    assert result.passed
    summary = next(s for s in result.summaries if s.kind is Kind.FSDP_CPU)
    assert summary.num_no_prediction == len(rows)


def test_reference_is_the_busiest_ranks_steady_phase_total() -> None:
    record = json.loads((REPO / "validation/fsdp_cpu/qwen2-tiny-fsdp2-actor-w2.json").read_text(encoding="utf-8"))
    metrics = reference_metrics(Kind.FSDP_CPU, record)
    assert set(metrics) == {"log_prob_rank_peak", "forward_rank_peak", "backward_rank_peak",
                            "optimizer_step_rank_peak"}
    steady = record["measured"]["ranks"][0]["iterations"]["2"]
    assert metrics["backward_rank_peak"] == steady["backward"]["total"]


def test_no_prediction_is_visible_in_the_report(capsys: object) -> None:
    from memplan.cli.validate import report_text

    text = report_text(compare(REPO / "validation", ["fsdp-cpu"]))
    assert "no prediction yet" in text
