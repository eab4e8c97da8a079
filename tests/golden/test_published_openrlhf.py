"""Published OpenRLHF outcomes (validation/published/openrlhf/*.toml): verdicts and peak phases."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from memplan.api import estimate_command

CASES = sorted((Path(__file__).resolve().parents[2] / "validation" / "published" / "openrlhf").glob("*.toml"))


def _expectations():
    for path in CASES:
        case = tomllib.loads(path.read_text())
        for expect in case["expect"]:
            yield pytest.param(case, expect, id=f"{case['id']}:{expect['variant']}")


@pytest.mark.parametrize(("case", "expect"), list(_expectations()))
def test_published_outcome(case: dict, expect: dict) -> None:
    command = case["command"] + "".join(f" {f}" for f in expect.get("extra_flags", []))
    est = estimate_command(command, gpu=case["gpu"])
    device = est.devices[0]
    if "verdict" in expect:
        assert str(est.verdict) == expect["verdict"], case["source"]
    if "verdict_in" in expect:
        assert str(est.verdict) in expect["verdict_in"], case["source"]
    if "peak_phase" in expect:
        assert str(device.peak.phase) == expect["peak_phase"], case["source"]
