"""Evaluating candidates: every number comes from ``memplan.api.estimate_run``, cached twice.

* whole estimates, per (candidate, GPU type);
* per-unit observations: the reserved peak of each unit (a set of roles sharing GPUs) at its
  configuration under a flag set. A separate (not colocated) unit's peak depends only on its own
  group and flags, so one estimate of a layout answers for every unit in it, and later searches
  (other placements, the headroom test, other GPU types) read the answer back instead of
  estimating again. Units without vLLM do not depend on the GPU type (only their verdict does).

The cache is a search aid only: every plan is confirmed by a whole estimate of its layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.api import estimate_run
from memplan.errors import ConfigError
from memplan.hardware.gpu import Gpu
from memplan.jobs.result import DeviceEstimate, Estimate, Verdict, verdict_for
from memplan.memory.breakdown import Category
from memplan.planner.knobs import MIN_KV_CACHE_BYTES
from memplan.planner.space import Fit, FlagSet, Layout, Space, run_for, unit_of

#: Whole estimates one plan request may make before the search stops and says so.
MAX_EVALUATIONS = 600


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """A layout and a flag set."""

    layout: Layout
    """GPUs per role, colocation, vLLM engines."""
    flags: FlagSet
    """Searched flag values."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitObs:
    """What one unit's GPUs hold at their peak in one estimate."""

    reserved_bytes: int | None
    """Reserved peak per GPU (None: OpenRLHF or the estimator rejected the candidate)."""
    kv_cache_bytes: int | None = None
    """vLLM KV-cache budget per GPU on units with an engine shard."""
    startup_error: bool = False
    """The rollout engine cannot start on these GPUs (``DeviceEstimate.startup_error``)."""

    def fits(self, gpu: Gpu, fit: Fit) -> bool:
        """Whether the unit fits ``gpu`` under ``fit``."""
        if self.reserved_bytes is None or self.startup_error:
            return False
        if self.kv_cache_bytes is not None and self.kv_cache_bytes < MIN_KV_CACHE_BYTES:
            return False
        verdict = verdict_for(self.reserved_bytes, gpu.capacity_bytes)
        return verdict == Verdict.FITS or (fit == Fit.ANY and verdict == Verdict.TIGHT)


REJECTED = UnitObs(reserved_bytes=None)
"""The observation of a unit in a candidate the estimator rejected."""


def kv_cache_bytes(device: DeviceEstimate) -> int | None:
    """The KV-cache budget on a device with a vLLM shard (largest over phases), else None."""
    if "rollout" not in device.roles:
        return None
    return max(sum(t.bytes for t in p.terms if t.category == Category.KV_CACHE) for p in device.phases)


def _obs(device: DeviceEstimate, kv: int | None) -> UnitObs:
    """A device's observation (an engine that cannot start fails whatever its peak)."""
    return UnitObs(reserved_bytes=device.reserved_bytes, kv_cache_bytes=kv,
                   startup_error=device.startup_error is not None and device.capacity_bytes is not None)


def gpu_key(gpu: Gpu) -> tuple[str, int, int]:
    """What distinguishes GPU types for caching."""
    return gpu.name, gpu.memory_bytes, gpu.capacity_bytes


def estimate_fits(est: Estimate, gpu: Gpu, fit: Fit) -> bool:
    """Every GPU (with the KV floor on vLLM GPUs) and every node with a known capacity fits, under every
    placement Ray may choose (``Estimate.placement_risk``), so a plan never depends on Ray's tie-breaks."""
    for device in est.devices:
        kv = kv_cache_bytes(device)
        if not _obs(device, kv).fits(gpu, fit):
            return False
    verdicts = [h.verdict for h in est.hosts]
    if est.placement_risk is not None:
        verdicts.append(est.placement_risk.verdict)
    allowed = {Verdict.FITS, None} if fit == Fit.HEADROOM else {Verdict.FITS, Verdict.TIGHT, None}
    return all(v in allowed for v in verdicts)


def gpus_fit(est: Estimate, gpu: Gpu, fit: Fit) -> bool:
    """Every GPU fits (hosts not considered)."""
    return all(_obs(d, kv_cache_bytes(d)).fits(gpu, fit)
               for d in est.devices)


def host_rank(est: Estimate) -> tuple[int, int]:
    """(largest node peak, total host peak): the minimum's tie-break."""
    return max((h.peak_bytes for h in est.hosts), default=0), sum(h.peak_bytes * h.count for h in est.hosts)


class BudgetExhausted(Exception):
    """The search made MAX_EVALUATIONS estimates."""


class Evaluator:
    """Estimates candidates through ``estimate_run`` and remembers per-unit peaks."""

    def __init__(self, space: Space, *, host_ram_bytes: int | None, max_evaluations: int = MAX_EVALUATIONS) -> None:
        self.space = space
        self.host_ram_bytes = host_ram_bytes
        self.max_evaluations = max_evaluations
        self.count = 0
        self.last_error: str | None = None
        self._estimates: dict[tuple[Candidate, tuple[str, int, int]], Estimate | None] = {}
        self._units: dict[tuple[object, ...], UnitObs] = {}

    def _unit_key(self, unit: str, config: object, flags: FlagSet, gpu: Gpu) -> tuple[object, ...]:
        """Units with vLLM depend on the GPU type; the vLLM-only unit does not depend on the flags."""
        gpu_part = gpu_key(gpu) if unit in ("rollout", "hybrid") else None
        return unit, config, () if unit == "rollout" else flags, gpu_part

    def unit(self, unit: str, config: object, flags: FlagSet, gpu: Gpu) -> UnitObs | None:
        """The cached observation of ``unit`` at ``config``, or None when never estimated."""
        return self._units.get(self._unit_key(unit, config, flags, gpu))

    def evaluate(self, candidate: Candidate, gpu: Gpu) -> Estimate | None:
        """The estimate of ``candidate`` on ``gpu`` (None when OpenRLHF or the estimator rejects it)."""
        key = (candidate, gpu_key(gpu))
        if key in self._estimates:
            return self._estimates[key]
        if self.count >= self.max_evaluations:
            raise BudgetExhausted
        self.count += 1
        try:
            run = run_for(self.space, candidate.layout, candidate.flags)
            est: Estimate | None = estimate_run(run, gpu=gpu, host_ram_bytes=self.host_ram_bytes)
        except ConfigError as exc:
            self.last_error = str(exc)
            est = None
        self._estimates[key] = est
        self._record(candidate, est, gpu)
        return est

    def _record(self, candidate: Candidate, est: Estimate | None, gpu: Gpu) -> None:
        units = candidate.layout.units()
        if est is None:
            for unit, config in units.items():
                self._units.setdefault(self._unit_key(unit, config, candidate.flags, gpu), REJECTED)
            return
        seen: dict[str, UnitObs] = {}
        for device in est.devices:
            unit = unit_of(device.roles)
            if unit not in units:
                continue
            obs = _obs(device, kv_cache_bytes(device))
            old = seen.get(unit)
            if old is None or (old.reserved_bytes or 0) < (obs.reserved_bytes or 0):
                seen[unit] = obs
        for unit, obs in seen.items():
            self._units[self._unit_key(unit, units[unit], candidate.flags, gpu)] = obs
