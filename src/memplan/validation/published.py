"""Published outcomes (``validation/published/<source>/*.toml``): verdicts and peak phases.

Each TOML cites its source and gives the launch command, the GPU and what happened: a verdict that must
come out (``[[expect]] verdict``), a set of acceptable verdicts (``verdict_in``, or ``expect_verdict_in`` at
the top level), and the phase that ran out of memory (``peak_phase``). ``extra_flags`` makes a variant of
the command. A file's ``known_miss`` (top level or per expectation) is the reason a row may miss, as the
golden tests read it (tests/golden/). Files without a command (``published/overhead/*``) are calibration sources of memplan's
overhead constants, not cases: comparing the constants with them would be circular, so they are skipped.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from dataclasses import replace
from typing import Any

from memplan.api import estimate_command
from memplan.errors import ConfigError
from memplan.validation.rows import Kind, Row, Unit, categorical_row

#: Published cases, relative to the validation directory.
PUBLISHED_DIR = Path("published")


def _expectations(case: dict[str, Any]) -> list[dict[str, Any]]:
    if "expect" in case:
        return list(case["expect"])
    if "expect_verdict_in" in case:
        return [{"variant": "as published", "verdict_in": case["expect_verdict_in"]}]
    return []


def _rows_for(case: dict[str, Any], expect: dict[str, Any], source: str) -> list[Row]:
    """The verdict / peak-phase rows of one expectation, with the file's ``known_miss`` reason if any."""
    command = " ".join(case["command"].split() + list(expect.get("extra_flags", [])))
    name = case["id"] if expect["variant"] in ("as published", "as reported") else f"{case['id']} ({expect['variant']})"
    try:
        est = estimate_command(command, gpu=case.get("gpu"), version=case.get("version"))
    except ConfigError as refusal:
        # memplan refuses the command (a backend it does not model, a model it cannot resolve offline): the row
        # misses with the refusal as its prediction, so only a file's known_miss lets it pass.
        est, verdict = None, f"refused: {' '.join(str(refusal).split())}"
    else:
        verdict = str(est.verdict)
    rows = []
    accepted = [expect["verdict"]] if "verdict" in expect else expect.get("verdict_in")
    if accepted:
        rows.append(categorical_row(kind=Kind.PUBLISHED, case=name, metric="verdict", unit=Unit.VERDICT,
                                    predicted=verdict, accepted=list(accepted), source=source))
    if "peak_phase" in expect and est is not None:
        device = max(est.devices, key=lambda d: d.reserved_bytes)
        rows.append(categorical_row(kind=Kind.PUBLISHED, case=name, metric="peak_phase", unit=Unit.PHASE,
                                    predicted=str(device.peak.phase), accepted=[expect["peak_phase"]],
                                    source=source))
    reason = expect.get("known_miss", case.get("known_miss"))
    if not reason:
        return rows
    return [replace(r, known_miss=" ".join(str(reason).split()), known_miss_file=source) for r in rows]


def published_rows(validation_dir: Path) -> list[Row]:
    """Verdict and peak-phase rows of every published case with a command."""
    rows = []
    for path in sorted((validation_dir / PUBLISHED_DIR).glob("**/*.toml")):
        case = tomllib.loads(path.read_text(encoding="utf-8"))
        if "command" not in case:
            continue
        for expect in _expectations(case):
            rows += _rows_for(case, expect, str(path.relative_to(validation_dir)))
    return rows
