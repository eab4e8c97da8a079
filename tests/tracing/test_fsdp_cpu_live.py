"""Real FSDP2 on the CPU (``memplan trace --framework verl --engine fsdp-cpu``): the stored tiny record re-runs to
the same bytes, and the per-rank states equal the parameter count times the bytes verl stores them in."""

from __future__ import annotations

import json

import pytest

from live_traces import REPO, trace_json

pytestmark = pytest.mark.tracing

TINY_RECORD = REPO / "validation/fsdp_cpu/qwen2-tiny-fsdp2-actor-w2.json"


@pytest.fixture(scope="module")
def stored_and_live() -> tuple[dict, dict]:  # type: ignore[type-arg]
    record = json.loads(TINY_RECORD.read_text(encoding="utf-8"))
    return record, trace_json(record["command"])


def test_tiny_record_reproduces_exactly(stored_and_live: tuple[dict, dict]) -> None:  # type: ignore[type-arg]
    record, live = stored_and_live
    assert live["command"] == record["command"]
    # The phase peaks and model states reproduce byte for byte. ``transient_iterations`` do not: a clean CI
    # clone measured rank 1's first optimizer step at 692,288 B where the record has 528,712 B (the optimizer's
    # lazily created state is caught in the transient window or not, depending on when the tracker samples),
    # so they are compared as recorded data elsewhere, not reproduced here.
    keep = ("iterations", "model_states")
    assert [{k: r[k] for k in keep} for r in live["measured"]["ranks"]] == \
        [{k: r[k] for k in keep} for r in record["measured"]["ranks"]]


def test_sharded_fp32_params_and_adam_moments(stored_and_live: tuple[dict, dict]) -> None:  # type: ignore[type-arg]
    _, live = stored_and_live
    # qwen2-tiny: embed 640*64 (tied) + 2 layers * (q 64*64+64, k 64*32+32, v 64*32+32, o 64*64, gate/up/down
    # 3*64*160, 2 norms 2*64) + final norm 64 = 40,960 + 2 * 43,264 + 64 = 127,552 parameters.
    assert 640 * 64 + 2 * (64 * 64 + 64 + 2 * (64 * 32 + 32) + 64 * 64 + 3 * 64 * 160 + 2 * 64) + 64 == 127_552
    for rank in live["measured"]["ranks"]:
        states = rank["model_states"]
        assert states["num_params"] == 127_552
        assert states["sharded_param_bytes_local"] == 127_552 * 4 // 2  # fp32 stored, world 2, even split
        assert states["adam_moment_bytes_local"] == 2 * 127_552 * 4 // 2
        steady = rank["iterations"]["2"]
        assert steady["optimizer_step"]["sharded_param"] == 255_104  # FSDPMemTracker agrees with the tensors
        assert steady["optimizer_step"]["sharded_grad"] == 255_104  # fp32 gradients (reduce_dtype fp32)


def test_world_size_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    from memplan.cli.main import main

    status = main(["trace", "tests/data/tiny/qwen2-tiny.json", "--framework", "verl", "--engine", "fsdp-cpu",
                   "--gpus", "5", "--quiet"])
    assert status == 2
    assert "--gpus" in capsys.readouterr().err
