"""Search: the smallest configuration of each unit, lockstep probing, ranking, speed-ups, host repair.

Pruning rests on monotone bounds:

* a unit's per-GPU peak does not grow with its group size (ZeRO partitions over more ranks), so a
  size that does not fit rules out every smaller one, and the search per unit is a bisection;
* a setting that does not fit with more memory-saving flags will not fit with fewer, so the
  searches start from the most saving flag set, and a speed-up that does not fit ends its knob;
* colocated roles hold at least what each holds alone, so a colocated unit needs at least the
  largest of its members' sizes, and a placement that cannot beat the best GPU count is skipped.

Probes are whole estimates of a layout: one estimate answers for every unit in it at once
(``probe.Evaluator``), so units are searched in lockstep.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from memplan.hardware.gpu import Gpu
from memplan.jobs.result import TIGHT_HEADROOM
from memplan.planner.knobs import MIN_KV_CACHE_BYTES
from memplan.planner.probe import REJECTED, Candidate, Evaluator, UnitObs
from memplan.planner.space import Fit, FlagSet, Layout


def limit_bytes(gpu: Gpu, fit: Fit) -> int:
    """Largest reserved peak per GPU that passes ``fit``."""
    if fit == Fit.HEADROOM:
        return int(gpu.capacity_bytes * (1 - TIGHT_HEADROOM))
    return gpu.capacity_bytes


class UnitSearch:
    """Finds the smallest configuration of one unit that fits; asks for probes one at a time."""

    def __init__(self, gpu: Gpu, fit: Fit) -> None:
        self.gpu = gpu
        self.fit = fit
        self.worst: tuple[object, UnitObs] | None = None
        """The largest configuration seen failing, with its observation (for the binding limit)."""

    def pending(self) -> object | None:
        """The configuration to observe next; None when resolved."""
        raise NotImplementedError

    def observe(self, config: object, obs: UnitObs) -> None:
        """Take the observation of ``config``."""
        raise NotImplementedError

    def result(self) -> object | None:
        """The smallest fitting configuration; None when none fits."""
        raise NotImplementedError

    def filler(self) -> object:
        """A configuration to put in a probe when this unit needs none."""
        raise NotImplementedError

    def _fail(self, config: object, obs: UnitObs) -> None:
        self.worst = (config, obs)


class LadderSearch(UnitSearch):
    """Bisection over group sizes, steered by the ZeRO scaling of what was observed.

    A unit's peak at size s is about A + B/s (A: replicated memory, B: what ZeRO partitions). The
    next probe is the size where that curve, fitted through the two observations nearest the
    boundary (with one, A = 0: no smaller size can fit), meets the limit; every second probe is a
    plain bisection (or a doubling while nothing fits), so a peak of another shape costs at most
    about twice the bisection's probes. The bounds themselves come only from observations.
    """

    def __init__(self, ladder: tuple[int, ...], gpu: Gpu, fit: Fit, *, at_least: int = 0,
                 below: int | None = None) -> None:
        super().__init__(gpu, fit)
        self.ladder = tuple(s for s in ladder if below is None or s < below)
        self.lo = max((i for i, s in enumerate(self.ladder) if s < at_least), default=-1)
        self.hi = len(self.ladder)
        self.seen: dict[int, int] = {}
        """Index → reserved bytes of every measured observation."""
        self.guided = 0
        self.choice: int | None = None

    def _predicted(self) -> int | None:
        limit = limit_bytes(self.gpu, self.fit)
        points = [i for i in (self.lo, self.hi) if i in self.seen]
        if len(points) < 2:
            below = sorted((i for i in self.seen if i <= self.lo), reverse=True)[:2]
            points = below if len(below) == 2 else points
        if not points:
            return None
        if len(points) == 1:
            i = points[0]
            need = self.ladder[i] * self.seen[i] / limit
        else:
            (s1, r1), (s2, r2) = ((self.ladder[i], self.seen[i]) for i in points)
            slope = (r1 - r2) / (1 / s1 - 1 / s2)
            fixed = r1 - slope / s1
            if slope <= 0 or fixed >= limit:
                return len(self.ladder) - 1
            need = slope / (limit - fixed)
        return next((i for i, s in enumerate(self.ladder) if s >= need), len(self.ladder) - 1)

    def pending(self) -> int | None:
        if self.hi - self.lo <= 1:
            return None
        if self.choice is None:
            self.choice = self._choose()
        return self.ladder[self.choice]

    def _choose(self) -> int:
        guess = self._predicted() if self.guided < 2 else None
        if guess is not None:
            self.guided += 1
            return min(max(guess, self.lo + 1), self.hi - 1)
        self.guided = 0
        if self.hi == len(self.ladder):
            return min(2 * self.lo + 2, self.hi - 1)
        return (self.lo + self.hi) // 2

    def observe(self, config: object, obs: UnitObs) -> None:
        index = self.ladder.index(config)  # type: ignore[arg-type]
        self.choice = None
        if obs.reserved_bytes is not None:
            self.seen[index] = obs.reserved_bytes
        if obs.fits(self.gpu, self.fit):
            self.hi = min(self.hi, index)
            return
        self.lo = max(self.lo, index)
        self._fail(config, obs)

    def result(self) -> int | None:
        return self.ladder[self.hi] if self.hi < len(self.ladder) else None

    def filler(self) -> int:
        found = self.result()
        return found if found is not None else self.ladder[max(self.lo, 0)] if self.ladder else 1


class RolloutSearch(UnitSearch):
    """A separate vLLM engine: the largest memory share whose peak fits, then the smallest TP whose
    KV budget clears the floor (the KV budget grows with TP and with the share)."""

    def __init__(self, tps: tuple[int, ...], gmus: tuple[float, ...], gpu: Gpu, fit: Fit, *,
                 weights_bytes: int) -> None:
        super().__init__(gpu, fit)
        self.tps = tps
        self.gmus = tuple(sorted(gmus, reverse=True))
        self.g = 0
        guess = next((i for i, t in enumerate(tps) if weights_bytes / t + MIN_KV_CACHE_BYTES <=
                      self.gmus[0] * gpu.memory_bytes), len(tps) - 1)
        self.lo, self.hi, self.guess = -1, len(tps), guess

    def pending(self) -> tuple[int, float] | None:
        if self.g >= len(self.gmus) or self.hi - self.lo <= 1 or not self.tps:
            return None
        index = self.guess if self.lo < self.guess < self.hi else (self.lo + self.hi) // 2
        return self.tps[index], self.gmus[self.g]

    def observe(self, config: object, obs: UnitObs) -> None:
        tp, _ = config  # type: ignore[misc]
        index = self.tps.index(tp)
        self.guess = -1
        if obs.fits(self.gpu, self.fit):
            self.hi = index
            return
        self._fail(config, obs)
        kv_ok = obs.kv_cache_bytes is not None and obs.kv_cache_bytes >= MIN_KV_CACHE_BYTES
        limit = limit_bytes(self.gpu, self.fit)
        if kv_ok and obs.reserved_bytes is not None and obs.reserved_bytes > limit:
            # the peak is the share itself: a smaller share by at least the excess, the same TP lower bound
            target = self.gmus[self.g] - (obs.reserved_bytes - limit) / self.gpu.memory_bytes
            self.g = next((i for i, g in enumerate(self.gmus) if i > self.g and g <= target + 1e-9), len(self.gmus))
            self.hi = len(self.tps)
            self.guess = index
            return
        self.lo = index

    def result(self) -> tuple[int, float] | None:
        if self.g < len(self.gmus) and self.hi < len(self.tps):
            return self.tps[self.hi], self.gmus[self.g]
        return None

    def filler(self) -> tuple[int, float]:
        found = self.result()
        if found is not None:
            return found
        return self.tps[-1] if self.tps else 1, self.gmus[min(self.g, len(self.gmus) - 1)]


class HybridSearch(UnitSearch):
    """The hybrid engine (every model and the engines on the same GPUs) on N GPUs: the largest TP dividing N, the smallest memory share
    whose KV budget clears the floor; bisection over N."""

    def __init__(self, ladder: tuple[int, ...], tp_for: Callable[[int], int | None], gmus: tuple[float, ...],
                 gpu: Gpu, fit: Fit, *, weights_bytes: int, at_least: int = 0, below: int | None = None) -> None:
        super().__init__(gpu, fit)
        self.tp_for = tp_for
        self.gmus = tuple(sorted(gmus))
        self.weights_bytes = weights_bytes
        self.sizes = LadderSearch(tuple(n for n in ladder if tp_for(n)), gpu, fit, at_least=at_least, below=below)
        self.share: dict[int, int] = {}
        self.found: dict[int, tuple[int, int, float]] = {}

    def _first_share(self, n: int, tp: int) -> int:
        need = self.weights_bytes / tp + MIN_KV_CACHE_BYTES
        return next((i for i, g in enumerate(self.gmus) if g * self.gpu.memory_bytes >= need), len(self.gmus) - 1)

    def pending(self) -> tuple[int, int, float] | None:
        n = self.sizes.pending()
        if n is None:
            return None
        tp = self.tp_for(n) or 1
        share = self.share.setdefault(n, self._first_share(n, tp))
        return n, tp, self.gmus[share]

    def observe(self, config: object, obs: UnitObs) -> None:
        n, tp, gmu = config  # type: ignore[misc]
        low_kv = obs.kv_cache_bytes is not None and obs.kv_cache_bytes < MIN_KV_CACHE_BYTES
        peak_ok = obs.reserved_bytes is not None and obs.reserved_bytes <= limit_bytes(self.gpu, self.fit)
        if low_kv and peak_ok and self.share[n] + 1 < len(self.gmus):
            self.share[n] += 1  # more KV budget at the same N
            return
        if obs.fits(self.gpu, self.fit):
            self.found[n] = config  # type: ignore[assignment]
        else:
            self._fail(config, obs)
        self.sizes.observe(n, obs)

    def result(self) -> tuple[int, int, float] | None:
        n = self.sizes.result()
        return None if n is None else self.found.get(n)

    def filler(self) -> tuple[int, int, float]:
        return self.result() or (1, 1, self.gmus[-1])


def lockstep(ev: Evaluator, gpu: Gpu, flags: FlagSet, searches: dict[str, UnitSearch],
             build: Callable[[dict[str, object]], Layout]) -> None:
    """Resolve every search, probing one layout per round with each unit at the size it asks for."""
    while True:
        progress = True
        while progress:
            progress = False
            for name, search in searches.items():
                config = search.pending()
                obs = None if config is None else ev.unit(name, config, flags, gpu)
                if obs is not None:
                    search.observe(config, obs)
                    progress = True
        needs = {n: c for n, s in searches.items() if (c := s.pending()) is not None}
        if not needs:
            return
        configs = {n: needs.get(n, s.filler()) for n, s in searches.items()}
        ev.evaluate(Candidate(layout=build(configs), flags=flags), gpu)
        for name, config in needs.items():
            searches[name].observe(config, ev.unit(name, config, flags, gpu) or REJECTED)


def ceil_div(a: int, b: int) -> int:
    """⌈a / b⌉."""
    return -(-a // b)


def next_size(ladder: tuple[int, ...], at_least: float) -> int | None:
    """The smallest ladder size ≥ ``at_least``."""
    return next((s for s in ladder if s >= math.ceil(at_least)), None)
