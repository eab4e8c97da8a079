"""What a trace measured, and its rendering into the ``estimate`` JSON shape (DESIGN.md).

Every byte count here was read from MemTracker or from the traced tensors themselves; nothing is
computed from a formula.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from memplan.tracing.config import TraceRequest
from memplan.tracing.rl_config import RlTraceRequest

#: Phases of one training iteration, in order (memory/breakdown.py ``Phase`` values).
PHASES = ("forward", "backward", "optimizer_step")

#: Every phase a trace can record, in order: an RL role's make-experience forward comes first.
ALL_PHASES = ("make_experience", *PHASES)

#: Packages whose versions change what a trace measures.
VERSIONED_PACKAGES = ("torch", "transformers", "peft", "deepspeed")


@dataclass(frozen=True, slots=True, kw_only=True)
class RankMeasurement:
    """What one rank (the fake engine: the one traced rank) measured."""

    rank: int
    """Rank id (0-based)."""
    iterations: dict[int, dict[str, dict[str, int]]]
    """iteration -> phase -> bytes by category at that phase's peak, plus ``total``."""
    model_states: dict[str, int]
    """Counts and bytes read from the tensors: params, trainable params, grads, masters, Adam moments."""
    modules: tuple[dict[str, Any], ...]
    """Per-module table of the last iteration (MemTracker's module snapshots)."""
    transient_iterations: dict[int, dict[str, dict[str, int]]] | None = None
    """iteration -> phase -> bytes by category at the instant activation + temp peaked in that phase."""

    def phases(self) -> tuple[str, ...]:
        """The phases this rank recorded, in :data:`ALL_PHASES` order (single-model methods: :data:`PHASES`)."""
        present = {phase for snaps in self.iterations.values() for phase in snaps}
        return tuple(p for p in ALL_PHASES if p in present)

    def phase_peak(self, phase: str) -> tuple[int, dict[str, int]]:
        """(iteration, snapshot) of the largest total of ``phase`` over the iterations."""
        best = max((snaps[phase]["total"], it) for it, snaps in self.iterations.items() if phase in snaps)
        return best[1], self.iterations[best[1]][phase]

    def peak(self) -> tuple[str, int, dict[str, int]]:
        """(phase, iteration, snapshot) of the largest total over every phase and iteration."""
        best = max((self.phase_peak(p)[1]["total"], p) for p in self.phases())
        iteration, snap = self.phase_peak(best[1])
        return best[1], iteration, snap


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceResult:
    """A finished trace."""

    request: "TraceRequest | RlTraceRequest"
    """What was traced."""
    ranks: tuple[RankMeasurement, ...]
    """One per rank."""
    models: dict[str, dict[str, Any]]
    """role -> {name, num_params, trainable_params} (counted from the built modules)."""
    notes: tuple[str, ...]
    """How the traced run differs from OpenRLHF on GPUs."""
    emulated: tuple[str, ...]
    """What was emulated rather than run."""
    wall_seconds: float
    """Wall time of the trace."""


def package_versions() -> dict[str, str]:
    """Versions of the packages a trace depends on, plus Python's."""
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _device(result: TraceResult, rank: RankMeasurement) -> dict[str, Any]:
    phase, _, snap = rank.peak()
    breakdown = [{"path": f"traced.{cat}", "category": cat, "phase": phase, "bytes": snap[cat]}
                 for cat in snap if cat != "total"]
    return {"id": f"node0/gpu{rank.rank}", "roles": list(result.models), "peak_bytes": snap["total"],
            "peak_phase": phase, "phases": {p: rank.phase_peak(p)[1]["total"] for p in rank.phases()},
            "capacity_bytes": None, "verdict": None, "breakdown": breakdown}


def to_estimate_json(result: TraceResult, version: str) -> dict[str, Any]:
    """The trace in ``estimate --json`` shape, with a ``trace`` section for what only traces have."""
    devices = [_device(result, r) for r in result.ranks]
    peaks = [d["peak_bytes"] for d in devices]
    return {
        "memplan_version": version,
        "models": result.models,
        "devices": devices,
        "hosts": [],
        "summary": {"num_gpus": len(devices), "num_nodes": 1, "max_gpu_peak_bytes": max(peaks),
                    "max_host_peak_bytes": 0, "total_gpu_peak_bytes": sum(peaks), "verdict": None,
                    "gpu_verdict": None, "host_verdict": None},
        "trace": {"engine": str(result.request.engine), "command": result.request.to_command(),
                  "versions": package_versions(), "notes": list(result.notes), "emulated": list(result.emulated),
                  "wall_seconds": round(result.wall_seconds, 1),
                  "ranks": [{"rank": r.rank, "iterations": {str(k): v for k, v in r.iterations.items()},
                             "model_states": r.model_states} for r in result.ranks]},
    }
