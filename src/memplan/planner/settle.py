"""A candidate's outcome: it fits, its host RAM is repaired, or it says what did not fit.

Also the two walks that start from a fitting candidate: ``speed_up`` (faster flags while it still
fits) and ``lighter_host`` (the minimum's tie-break: flags that need less host RAM).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memplan.hardware.gpu import Gpu
from memplan.jobs.job import RoleName
from memplan.jobs.knobs import Knob, KnobKey
from memplan.jobs.result import Estimate
from memplan.planner.knobs import size_ladder, speedups
from memplan.planner.probe import Candidate, Evaluator, UnitObs, estimate_fits, gpus_fit, host_rank
from memplan.planner.space import Fit, FlagSet, Layout, Placement, Space, with_flags


@dataclass(frozen=True, slots=True, kw_only=True)
class Found:
    """A candidate that fits, with its estimate (None when the unit cache alone showed that it fits)."""

    candidate: Candidate
    """Layout and flags."""
    estimate: Estimate | None
    """The whole estimate."""

    @property
    def rank(self) -> tuple[int, int, int]:
        """(GPUs, largest node's host RAM, total host RAM): smaller is better."""
        return (self.candidate.layout.num_gpus, *(host_rank(self.estimate) if self.estimate else (0, 0)))


def check(ev: Evaluator, gpu: Gpu, candidate: Candidate, fit: Fit, *, need_estimate: bool = True) -> Found | None:
    """The candidate if every GPU and node passes ``fit``. No estimate is made when a unit of it is
    already known not to fit (unit peaks without vLLM are shared across GPU types), nor, with
    ``need_estimate=False`` and no host capacity to check, when every unit is known to fit."""
    known = [ev.unit(unit, config, candidate.flags, gpu) for unit, config in candidate.layout.units().items()]
    if any(obs is not None and not obs.fits(gpu, fit) for obs in known):
        return None
    if not need_estimate and ev.host_ram_bytes is None and all(obs is not None for obs in known):
        return Found(candidate=candidate, estimate=None)
    est = ev.evaluate(candidate, gpu)
    if est is None or not estimate_fits(est, gpu, fit):
        return None
    return Found(candidate=candidate, estimate=est)


def valid(space: Space, candidate: Candidate) -> bool:
    """Every group size is one its role may take under the candidate's flags."""
    layout, flags = candidate.layout, candidate.flags
    return all(n in size_ladder(space, role, flags) for role, n in layout.sizes)


def speed_up(ev: Evaluator, space: Space, gpu: Gpu, found: Found, fit: Fit, *, hybrid: bool,
             knobs: list[tuple[str, list[dict[str, Any]]]] | None = None,
             is_valid: Callable[[Candidate], bool] | None = None) -> Found:
    """Apply faster settings knob by knob while everything still passes ``fit``. A knob's values go
    from the least to the most memory, so its largest value is tried first and, when that fails, the
    largest that fits is bisected (monotone: a value that fails rules out every larger one).

    ``knobs``: the changes in order (default ``knobs.speedups``); ``is_valid``: whether a candidate may be
    tried (default: every group size on its role's ladder)."""
    best = found
    for _knob, options in speedups(space, best.candidate.flags, hybrid=hybrid) if knobs is None else knobs:
        lo, hi = -1, len(options)  # options[lo] fits (or is the current setting), options[hi] fails
        index, chosen = len(options) - 1, best
        while hi - lo > 1:
            flags = with_flags(best.candidate.flags, **options[index])
            candidate = Candidate(layout=best.candidate.layout, flags=flags)
            ok = valid(space, candidate) if is_valid is None else is_valid(candidate)
            faster = check(ev, gpu, candidate, fit, need_estimate=False) if ok else None
            if faster is None:
                hi = index
            else:
                lo, chosen = index, faster
            index = (lo + hi) // 2
        best = chosen
    return best


def grow(space: Space, layout: Layout, role: str, flags: FlagSet) -> Layout | None:
    """``layout`` with ``role``'s group (and roles sharing its GPUs) at the next size at least twice as large."""
    sizes = dict(layout.sizes)
    if role not in sizes:
        return None
    target = 2 * sizes[role]
    bigger = next((s for s in size_ladder(space, role, flags) if s >= target), None)
    if bigger is None:
        return None
    partners = {"actor": "ref", "ref": "actor", "critic": "reward", "reward": "critic"}
    shared = {role}
    if layout.placement == Placement.HYBRID:
        shared = set(sizes)
    elif role in partners and partners[role] in sizes and sizes[partners[role]] == sizes[role] and \
            layout.units().keys() & {f"{role}+{partners[role]}", f"{partners[role]}+{role}"}:
        shared.add(partners[role])
    new = tuple((r, bigger if r in shared else n) for r, n in layout.sizes)
    if layout.placement == Placement.HYBRID:
        return Layout(placement=layout.placement, sizes=new, engines=bigger // layout.tp, tp=layout.tp, gmu=layout.gmu)
    return Layout(placement=layout.placement, sizes=new, engines=layout.engines, tp=layout.tp, gmu=layout.gmu)


#: Attempts to make a layout fit its nodes' host RAM (each one estimate).
HOST_REPAIR_STEPS = 6
#: Host-lighter knob changes tried first (the CPU Adam state, offloaded parameters, sleeping copies).
HOST_LIGHTER: tuple[tuple[KnobKey, ...], ...] = (
    (KnobKey(knob=Knob.OPTIMIZER_OFFLOAD),),
    (KnobKey(knob=Knob.PARAM_OFFLOAD, role=RoleName.REF), KnobKey(knob=Knob.PARAM_OFFLOAD, role=RoleName.REWARD)),
    (KnobKey(knob=Knob.PARAM_OFFLOAD, role=RoleName.TEACHER),),
    (KnobKey(knob=Knob.TRAINER_SLEEP), KnobKey(knob=Knob.ENGINE_SLEEP)),
)


def host_repair(ev: Evaluator, space: Space, gpu: Gpu, candidate: Candidate, est: Estimate, fit: Fit) -> Found | None:
    """Make a layout whose GPUs fit but whose nodes do not fit: lighter host flags, else a larger
    group for the role holding the most host RAM on the worst node (it spreads over more nodes)."""
    for knobs in HOST_LIGHTER:
        change = {space.key(k): False for k in knobs}
        flags = dict(candidate.flags)
        if not all(k in flags and space.free(k) for k in change) or all(flags[k] == v for k, v in change.items()):
            continue
        lighter = Candidate(layout=candidate.layout, flags=with_flags(candidate.flags, **change))
        found = check(ev, gpu, lighter, fit)
        if found is not None:
            return found
    current, current_est = candidate, est
    for _ in range(HOST_REPAIR_STEPS):
        role = heaviest_host_role(current_est)
        layout = grow(space, current.layout, role, current.flags) if role else None
        if layout is None or layout.num_gpus > space.max_gpus:
            return None
        current = Candidate(layout=layout, flags=current.flags)
        next_est = ev.evaluate(current, gpu)
        if next_est is None or not gpus_fit(next_est, gpu, fit):
            return None
        if estimate_fits(next_est, gpu, fit):
            return Found(candidate=current, estimate=next_est)
        current_est = next_est
    return None


def heaviest_host_role(est: Estimate) -> str | None:
    """The role holding the most host RAM on the node with the least room, as placed or under the worst
    placement Ray may choose (the one that fails when only that placement does)."""
    risk = est.placement_risk.worst if est.placement_risk is not None else ()
    nodes = [h for h in (*est.hosts, *risk) if h.judged_bytes is not None]
    if not nodes:
        return None
    worst = max(nodes, key=lambda h: h.peak_bytes - (h.judged_bytes or 0))
    totals: dict[str, int] = {}
    for term in worst.peak.terms:
        role = term.path.split(".", 1)[0]
        totals[role] = totals.get(role, 0) + term.bytes
    candidates = {r: b for r, b in totals.items() if r in ("actor", "critic", "ref", "reward", "policy")}
    if not candidates:
        return None
    role = max(candidates, key=lambda r: candidates[r])
    return "train" if role == "policy" else role


@dataclass(slots=True, kw_only=True)
class Trace:
    """What did not fit, for the binding limit."""

    units: dict[str, tuple[object, UnitObs]] = field(default_factory=dict)
    """Unit → its largest configuration that failed, with the observation."""
    host: list[Found] = field(default_factory=list)
    """Layouts whose GPUs fit but whose nodes did not."""
    need_gpus: list[int] = field(default_factory=list)
    """GPU counts of layouts whose every unit fits but which exceed ``--max-gpus``."""


def better(a: Found | None, b: Found | None) -> Found | None:
    """The better of two outcomes: fewer GPUs, then less host RAM on the fullest node, then in total."""
    if a is None:
        return b
    if b is None:
        return a
    return b if b.rank < a.rank else a


def settle(ev: Evaluator, space: Space, gpu: Gpu, candidate: Candidate, fit: Fit, trace: Trace) -> Found | None:
    """The candidate if it fits; else, when only host RAM fails, a repaired layout."""
    est = ev.evaluate(candidate, gpu)
    if est is None:
        return None
    if estimate_fits(est, gpu, fit):
        return Found(candidate=candidate, estimate=est)
    if gpus_fit(est, gpu, fit):
        trace.host.append(Found(candidate=candidate, estimate=est))
        return host_repair(ev, space, gpu, candidate, est, fit)
    return None


def lighter_host(ev: Evaluator, space: Space, gpu: Gpu, best: Found, fit: Fit) -> Found:
    """At the same layout, flags that need less host RAM when the GPUs still fit (the tie-break)."""
    for knobs in HOST_LIGHTER:
        change = {space.key(k): False for k in knobs}
        flags = dict(best.candidate.flags)
        if not all(k in flags for k in change) or all(flags[k] == v for k, v in change.items()):
            continue
        lighter = Candidate(layout=best.candidate.layout, flags=with_flags(best.candidate.flags, **change))
        best = better(best, check(ev, gpu, lighter, fit)) or best
    return best


