"""Traced RL references (validation/traced_rl/): the rows ``memplan validate`` builds from them.

The gate itself (every row within 5 % or a listed known miss) is tests/validation/test_validate.py's
``test_every_case_within_tolerance[traced]``, which includes these rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memplan.cli.main import main
from memplan.validation import Kind, compare
from memplan.validation.policy import load_policy
from memplan.validation.rl_traces import TRACED_RL_DIR, estimate_flags, predict_rl, rl_traced_rows, role_device

REPO = Path(__file__).resolve().parents[2]
VALIDATION = REPO / "validation"
RECORDS = sorted((VALIDATION / TRACED_RL_DIR).glob("*.json"))

#: Metrics per role: every role's make-experience forward; the trained roles' training step too.
METRICS = {
    "actor": {"make_experience_transient", "training_transient", "optimizer_step_transient", "peak_phase"},
    "critic": {"make_experience_transient", "training_transient", "peak_phase"},
    "ref": {"make_experience_transient"},
    "reward": {"make_experience_transient"},
}


def _record(name: str) -> dict:  # type: ignore[type-arg]
    data: dict = json.loads((VALIDATION / TRACED_RL_DIR / f"{name}.json").read_text())  # type: ignore[type-arg]
    return data


@pytest.fixture(scope="module")
def rows() -> list:  # type: ignore[type-arg]
    return rl_traced_rows(VALIDATION, load_policy(VALIDATION))


def test_reference_set_covers_every_role_and_both_settings() -> None:
    configs = [json.loads(p.read_text())["config"] for p in RECORDS]
    full = [c for c in configs if c["model"] == "llama-3-8b"]
    assert {c["role"] for c in full} == {"actor", "critic", "ref", "reward"}
    assert {c["method"] for c in full if c["role"] == "actor"} == {"grpo", "ppo"}
    assert any(c["role"] == "actor" and c["method"] == "ppo" and c["use_kl_loss"] for c in full)
    assert {(c["prompt_max_len"] + c["generate_max_len"], c["micro_train_batch_size"]) for c in full} == \
        {(2048, 1), (4096, 2)}
    assert {c["gradient_checkpointing"] for c in full if c["role"] in ("actor", "critic")} == {True, False}


def test_every_record_gives_its_roles_metrics(rows: list) -> None:  # type: ignore[type-arg]
    for path in RECORDS:
        record = json.loads(path.read_text())
        got = {r.metric for r in rows if r.case == record["case"]}
        assert got == METRICS[record["config"]["role"]], record["case"]
    assert all(r.kind is Kind.TRACED and r.source.startswith("traced_rl/") for r in rows)


def test_references_are_the_traced_activation_plus_temp_peaks(rows: list) -> None:  # type: ignore[type-arg]
    record = _record("rl-llama-3-8b-ppo-critic-s2048-b1")
    steady = record["measured"]["ranks"][0]["transient_iterations"]["2"]
    row = next(r for r in rows if r.case == record["case"] and r.metric == "training_transient")
    assert row.reference == max(steady[p]["activation"] + steady[p]["temp"]
                                for p in ("forward", "backward", "optimizer_step"))
    row = next(r for r in rows if r.case == record["case"] and r.metric == "make_experience_transient")
    assert row.reference == steady["make_experience"]["activation"] + steady["make_experience"]["temp"]


def test_each_role_is_predicted_on_its_own_single_gpu() -> None:
    record = _record("rl-llama-3-8b-ppo-ref-s2048-b2")
    flags = estimate_flags(record["config"])
    for role in ("actor", "critic", "ref", "reward"):
        at = flags.index(f"--{role}_num_gpus_per_node")
        assert flags[at + 1] == "1"
    est = predict_rl(record)
    assert sorted(tuple(d.roles) for d in est.devices) == [("actor",), ("critic",), ("ref",), ("reward",)]
    assert role_device(est, "ref").roles == ("ref",)


def test_reference_make_experience_prediction_is_the_logits_cast(rows: list) -> None:  # type: ignore[type-arg]
    # Reference forward of 2 sequences x 2048 tokens, Llama-3-8B (vocab 128256): memplan's no-grad peak is
    # the LM head's bf16 logits next to their fp32 copy, 2 + 4 bytes per element.
    row = next(r for r in rows
               if r.case == "rl-llama-3-8b-ppo-ref-s2048-b2" and r.metric == "make_experience_transient")
    assert row.predicted == 2 * 2048 * 128256 * (2 + 4) == 3_152_019_456
    assert row.reference >= 3_152_019_456  # the trace holds the same two tensors (plus ids and masks)


def test_validate_prints_the_rl_rows(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--dir", str(VALIDATION), "--kind", "traced"]) == 0
    out = capsys.readouterr().out
    assert "rl-llama-3-8b-ppo-actor-kl-s4096-b2-ckpt" in out and "make_experience_transient" in out


def test_rl_rows_are_part_of_the_traced_comparison() -> None:
    result = compare(VALIDATION, [Kind.TRACED])
    cases = {r.case for r in result.rows}
    assert {json.loads(p.read_text())["case"] for p in RECORDS} <= cases
