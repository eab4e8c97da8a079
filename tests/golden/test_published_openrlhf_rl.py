"""Official OpenRLHF RL layouts (validation/published/openrlhf_rl/*.toml) fit the GPUs they ran on."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from memplan.api import estimate_command

CASES = sorted((Path(__file__).resolve().parents[2] / "validation" / "published" / "openrlhf_rl").glob("*.toml"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_official_layout_fits(path: Path) -> None:
    case = tomllib.loads(path.read_text())
    if case.get("known_miss"):
        pytest.xfail(case["known_miss"])
    est = estimate_command(" ".join(case["command"].split()), gpu=case["gpu"], version=case["version"])
    assert str(est.verdict) in case["expect_verdict_in"], (case["source"], [(d.roles, d.verdict) for d in est.devices])
    # every role of the command has GPUs, and the GPU count is the command's
    roles = {r for d in est.devices for r in d.roles}
    assert {"actor", "rollout"} <= roles
