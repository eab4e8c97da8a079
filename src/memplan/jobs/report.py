"""Estimate → the JSON object of DESIGN.md's contract (plain data; no text formatting)."""

from __future__ import annotations

from typing import Any

from memplan import __version__
from memplan.memory.host import by_kind
from memplan.jobs.result import DeviceEstimate, Estimate, HostEstimate, PhaseUsage, PlacementRisk
from memplan.memory.breakdown import Term


def _term_json(term: Term, peak_phase: str) -> dict[str, Any]:
    return {"path": term.path, "category": str(term.category), "device": str(term.device),
            "phase": str(term.phase) if term.phase is not None else peak_phase, "persistent": term.phase is None,
            "bytes": term.bytes, "source": str(term.source)}


def _phases_json(phases: tuple[PhaseUsage, ...]) -> dict[str, int]:
    return {str(p.phase): p.bytes for p in phases}


def _reserved_phases_json(phases: tuple[PhaseUsage, ...]) -> dict[str, int]:
    """Reserved bytes of every phase (``reserved_for``): what the verdict would compare in that phase."""
    from memplan.jobs.estimate import reserved_for

    return {str(p.phase): reserved_for(p) for p in phases}


def device_json(device: DeviceEstimate) -> dict[str, Any]:
    """One GPU entry (identical GPUs grouped with ``count`` and ``ids``, ranges such as
    ``node[0-511]/gpu[0-7]``: see jobs/ids.py). ``reserved_bytes`` is what the verdict compares with
    ``capacity_bytes`` (DESIGN.md); ``reserved_phases`` gives it per phase."""
    peak = device.peak
    return {"id": device.id, "count": device.count, "ids": device.ids, "roles": list(device.roles),
            "peak_bytes": peak.bytes, "reserved_bytes": device.reserved_bytes, "peak_phase": str(peak.phase),
            "phases": _phases_json(device.phases), "reserved_phases": _reserved_phases_json(device.phases),
            "capacity_bytes": device.capacity_bytes, "preallocated_bytes": device.preallocated_bytes,
            "startup_error": device.startup_error,
            "verdict": str(device.verdict) if device.verdict else None,
            "breakdown": [_term_json(t, str(peak.phase)) for t in peak.terms]}


def host_json(host: HostEstimate) -> dict[str, Any]:
    """One node's host RAM (identical nodes grouped with ``count`` and ``ids``, ranges such as ``node[0-511]``).
    ``judged_against_bytes`` is what the verdict compares ``peak_bytes`` with (DESIGN.md: each host carries
    what its verdict is judged against): Ray's kill threshold for Ray runs, else the node's RAM as given;
    ``judged_against`` says the same with its rule and source (``judged_against.bytes`` is the same number)."""
    peak = host.peak
    return {"id": host.id, "count": host.count, "ids": host.ids, "peak_bytes": peak.bytes,
            "peak_phase": str(peak.phase),
            "phases": _phases_json(host.phases), "capacity_bytes": host.capacity_bytes,
            "judged_against_bytes": host.judged_bytes,
            "judged_against": ({"bytes": host.limit.bytes, "rule": host.limit.rule, "source": str(host.limit.source)}
                               if host.limit is not None else None),
            "verdict": str(host.verdict) if host.verdict else None,
            "timeline": [{"phase": str(p.phase), "bytes": p.bytes,
                          "by_kind": {str(k): b for k, b in by_kind(p.terms).items()}} for p in host.phases],
            "breakdown": [_term_json(t, str(peak.phase)) for t in peak.terms]}


def estimate_json(est: Estimate) -> dict[str, Any]:
    """The whole estimate as DESIGN.md's JSON object."""
    from memplan.jobs.result import worst

    gpu_verdict = worst([d.verdict for d in est.devices])
    host_verdict = worst([h.verdict for h in est.hosts])
    return {
        "memplan_version": __version__,
        "command": est.command,
        "models": {role: {"name": m.name, "num_params": m.num_params, "trainable_params": m.trainable_params}
                   for role, m in est.models.items()},
        "devices": [device_json(d) for d in est.devices],
        "hosts": [host_json(h) for h in est.hosts],
        "summary": {
            "num_gpus": est.num_gpus,
            "num_nodes": est.num_nodes,
            "max_gpu_peak_bytes": max((d.peak_bytes for d in est.devices), default=0),
            "max_gpu_reserved_bytes": max((d.reserved_bytes for d in est.devices), default=0),
            "max_host_peak_bytes": max((h.peak_bytes for h in est.hosts), default=0),
            "total_gpu_peak_bytes": sum(d.peak_bytes * d.count for d in est.devices),
            "total_host_peak_bytes": sum(h.peak_bytes * h.count for h in est.hosts),
            "verdict": str(est.verdict) if est.verdict else None,
            "gpu_verdict": str(gpu_verdict) if gpu_verdict else None,
            "host_verdict": str(host_verdict) if host_verdict else None,
            "host_verdict_worst_placement": (str(est.placement_risk.verdict)
                                             if est.placement_risk and est.placement_risk.verdict else None),
        },
        "placement": placement_json(est.placement_risk) if est.placement_risk else None,
        "notes": list(est.notes),
    }


def placement_json(risk: PlacementRisk) -> dict[str, Any]:
    """The estimated placement, how many Ray may choose, and the worst of them, identical nodes grouped
    (``count``, ``ids`` as in ``hosts``)."""
    return {"assumed": [{"node": h.id, "count": h.count, "ids": h.ids, "roles": roles}
                        for h, roles in zip(risk.assumed, risk.assumed_roles)],
            "rule": "memplan fills nodes in group creation order; Ray PACK puts each group on the emptiest node",
            "ray_choices": risk.num_placements,
            "worst": {"verdict": str(risk.verdict) if risk.verdict else None,
                      "nodes": [{"node": h.id, "count": h.count, "ids": h.ids, "roles": roles,
                                 "peak_bytes": h.peak_bytes, "judged_against_bytes": h.judged_bytes,
                                 "verdict": str(h.verdict) if h.verdict else None}
                                for h, roles in zip(risk.worst, risk.worst_roles)]}}
