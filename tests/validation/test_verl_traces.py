"""The verl reference kinds (fsdp-cpu, verl-fake) in ``memplan validate``: their rows read the stored records'
bytes, every row has memplan's prediction, and each is within tolerance or a listed known miss."""

from __future__ import annotations

import json
from pathlib import Path

from memplan.validation import Kind, Status, compare
from memplan.validation.verl_traces import reference_metrics

REPO = Path(__file__).resolve().parents[2]


def test_every_verl_reference_row_is_predicted_and_gated() -> None:
    result = compare(REPO / "validation", ["fsdp-cpu", "verl-fake"])
    fsdp = [r for r in result.rows if r.kind is Kind.FSDP_CPU]
    fake = [r for r in result.rows if r.kind is Kind.VERL_FAKE]
    assert len({r.case for r in fsdp}) >= 10 and len({r.case for r in fake}) >= 4
    assert not [r for r in result.rows if r.status is Status.NO_PREDICTION]
    assert {r.metric for r in fsdp} >= {"rank_peak", "log_prob_rank_peak", "backward_rank_peak"}
    assert result.passed, [(r.case, r.metric, r.status) for r in result.rows if r.gate_fails]


def test_reference_is_the_busiest_ranks_steady_phase_total() -> None:
    record = json.loads((REPO / "validation/fsdp_cpu/qwen2-tiny-fsdp2-actor-w2.json").read_text(encoding="utf-8"))
    metrics = reference_metrics(Kind.FSDP_CPU, record)
    assert set(metrics) == {"log_prob_rank_peak", "forward_rank_peak", "backward_rank_peak",
                            "optimizer_step_rank_peak", "rank_peak"}
    steady = record["measured"]["ranks"][0]["iterations"]["2"]
    assert metrics["backward_rank_peak"] == steady["backward"]["total"]
    assert metrics["rank_peak"] == max(v["total"] for v in steady.values())


def test_the_report_shows_the_verl_kinds_as_their_own() -> None:
    from memplan.cli.validate import report_text

    text = report_text(compare(REPO / "validation", ["fsdp-cpu", "verl-fake"]))
    assert "fsdp-cpu:" in text and "verl-fake:" in text and "no prediction yet" not in text


def _steady_transients(name: str) -> dict[str, int]:
    record = json.loads((REPO / "validation/verl_fake" / f"{name}.json").read_text(encoding="utf-8"))
    return reference_metrics(Kind.VERL_FAKE, record)


def test_verl_fake_log_prob_forward_holds_the_bf16_logits() -> None:
    metrics = _steady_transients("qwen2.5-0.5b-verl-actor-s2048-b1")
    # One packed row of 1024 + 1024 tokens, Qwen2.5 vocabulary 151,936, bf16 logits (FSDP2's compute dtype):
    # 2048 * 151,936 * 2 B = 622,329,856 B; the rest of the no-grad forward is a few hidden-size tensors.
    logits = 2048 * 151_936 * 2
    assert logits == 622_329_856
    assert logits <= metrics["log_prob_transient"] <= 1.05 * logits
    # With grad, logprobs_from_logits_v2 (bf16 path) keeps each row's log_softmax for backward: a second copy.
    assert 2 * logits <= metrics["forward_transient"] <= 2.2 * logits


def test_verl_fake_entropy_adds_vocab_sized_tensors() -> None:
    plain = _steady_transients("qwen2.5-0.5b-verl-actor-s2048-b1")
    entropy = _steady_transients("qwen2.5-0.5b-verl-actor-entropy-s2048-b1")
    logits = 2048 * 151_936 * 2
    # entropy_from_logits: softmax (kept by autograd) and softmax * logits, bf16, two logits-sized tensors more.
    assert entropy["log_prob_transient"] - plain["log_prob_transient"] >= 2 * logits - logits // 100


def test_verl_engine_log_prob_pass_keeps_the_entropy_the_trainer_asks_for() -> None:
    engine = _steady_transients("qwen2.5-0.5b-verl-engine-actor-s2048-b1")
    logits = 2048 * 151_936 * 2
    # ray_trainer._compute_old_log_prob sets calculate_entropy=True: with no grad, the bf16 logits plus
    # entropy_from_logits' softmax and softmax * logits, each logits-sized, are alive together.
    assert 3 * logits <= engine["log_prob_transient"] <= 3.05 * logits
    # The update without entropy (entropy_coeff 0, calculate_entropy False): logits plus the log_softmax rows
    # logprobs_from_logits_v2 keeps for backward, as in the function-level trace.
    assert 2 * logits <= engine["forward_transient"] <= 2.2 * logits
