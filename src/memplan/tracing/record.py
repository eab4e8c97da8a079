"""Reference records: one JSON file per traced case under ``validation/traced/`` or
``validation/deepspeed_cpu/``.

A record holds the case id, the full configuration, the engine, package versions, the measured bytes
(per rank, per iteration, per phase, by category; all ints), the peak, what was emulated, and
``command``: the ``memplan trace`` command that reproduces the measurement (run from the repository root).
RL role records (``memplan trace MODEL --method ppo|grpo|reinforce|rloo --role ...``) have the same
layout and live under ``validation/traced_rl/``.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from memplan.tracing.config import Engine
from memplan.tracing.result import TraceResult, package_versions

#: Version of the record layout.
RECORD_SCHEMA = 1

#: Directory (under ``validation/``) per engine.
ENGINE_DIRS = {Engine.FAKE: "traced", Engine.DEEPSPEED_CPU: "deepspeed_cpu"}

#: Directory (under ``validation/``) of the RL role records.
RL_DIR = "traced_rl"


def _rank_record(rank: Any) -> dict[str, Any]:
    phase, iteration, snap = rank.peak()
    return {"rank": rank.rank, "peak_bytes": snap["total"], "peak_phase": phase, "peak_iteration": iteration,
            "peak_by_category": {k: v for k, v in snap.items() if k != "total"},
            "phases": {p: rank.phase_peak(p)[1]["total"] for p in rank.phases()},
            "iterations": {str(it): phases for it, phases in sorted(rank.iterations.items())},
            "model_states": dict(rank.model_states),
            **({"transient_iterations": {str(it): phases for it, phases in sorted(rank.transient_iterations.items())}}
               if rank.transient_iterations else {})}


def build_record(case: str, result: TraceResult, description: str = "") -> dict[str, Any]:
    """The record of ``result`` under id ``case``."""
    ranks = [_rank_record(r) for r in result.ranks]
    top = max(ranks, key=lambda r: r["peak_bytes"])
    return {
        "schema": RECORD_SCHEMA,
        "case": case,
        "description": description,
        "engine": str(result.request.engine),
        "command": result.request.to_command(),
        "config": result.request.as_dict(),
        "models": result.models,
        "versions": package_versions(),
        "machine": {"platform": platform.platform(), "machine": platform.machine()},
        "measured": {"peak_bytes": top["peak_bytes"], "peak_phase": top["peak_phase"], "peak_rank": top["rank"],
                     "ranks": ranks},
        "emulated": list(result.emulated),
        "notes": list(result.notes),
        "wall_seconds": round(result.wall_seconds, 1),
    }


def record_path(root: Path, engine: Engine, case: str) -> Path:
    """Where the record of ``case`` lives under the ``validation`` directory ``root``."""
    return root / ENGINE_DIRS[engine] / f"{case}.json"


def request_record_path(root: Path, request: Any, case: str) -> Path:
    """Where the record of ``case`` traced from ``request`` lives: RL roles in :data:`RL_DIR`."""
    from memplan.tracing.rl_config import RlTraceRequest

    if isinstance(request, RlTraceRequest):
        return root / RL_DIR / f"{case}.json"
    return record_path(root, request.engine, case)


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as indented JSON (stable key order for diffs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def read_record(path: Path) -> dict[str, Any]:
    """Read a record back."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def measured_bytes(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The parts of a record that a re-run must reproduce exactly: per rank, iterations and model states."""
    return [{"iterations": r["iterations"], "model_states": {k: v for k, v in r["model_states"].items()}}
            for r in record["measured"]["ranks"]]
