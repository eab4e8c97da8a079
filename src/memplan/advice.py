"""What to change when a run does not fit: changes, re-estimated, and the smallest set that fits.

Each candidate is a change the run's framework proposes (an option a user can change, or a GPU count,
``Framework.changes``); its effect is the drop of the
largest per-GPU reserved peak, computed by a full re-estimate (not a rule of thumb). When the run
does not fit, single changes are tried first, then pairs, triples and quadruples of the most effective ones,
until a set makes every GPU and node fit; each set lists the per-GPU effect of each of its changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import combinations

from memplan import frameworks
from memplan.api import estimate_run
from memplan.errors import ConfigError
from memplan.frameworks.base import Change, ResolvedRun
from memplan.hardware.gpu import Gpu
from memplan.jobs.result import Estimate, Verdict

#: Change-set sizes tried after single changes, each with how many of the most effective single
#: changes it combines (pairs of the best 6, triples and quadruples of the best 5: at most 30 estimates).
SET_POOLS = ((2, 6), (3, 5), (4, 5))
@dataclass(frozen=True, slots=True, kw_only=True)
class Suggestion:
    """One change (or a set of changes) and its effect."""

    change: str
    """The change(s) as typed on the command line (sets joined with `` + ``)."""
    estimate: Estimate
    """The estimate with the change applied."""
    saving_bytes: int
    """Drop of the largest per-GPU reserved peak (negative when the change costs GPU memory)."""
    effects: tuple[tuple[str, int], ...] = field(default=())
    """Each change of the set with the drop of the largest per-GPU reserved peak it gives alone."""
    added_gpus: int = 0
    """GPUs the set adds."""

    @property
    def max_reserved_bytes(self) -> int:
        """Largest per-GPU reserved peak after the change."""
        return max(d.reserved_bytes for d in self.estimate.devices)

    @property
    def fits(self) -> bool:
        """Every GPU and node fits after the change (verdict fits or tight)."""
        return self.estimate.verdict in (Verdict.FITS, Verdict.TIGHT)


def _max_reserved(est: Estimate) -> int:
    return max(d.reserved_bytes for d in est.devices)


def deficit_bytes(est: Estimate) -> int:
    """How far a run is from fitting: bytes over capacity per GPU, summed over the kinds of GPU (role
    sets) and the nodes (a group on more GPUs does not count as further from fitting)."""
    gpus = sum(max(d.reserved_bytes - d.capacity_bytes, 0) for d in est.devices if d.capacity_bytes)
    hosts = sum(max(h.peak_bytes - h.judged_bytes, 0) * h.count for h in est.hosts if h.judged_bytes)
    return gpus + hosts


def changes(run: ResolvedRun, base: Estimate | None = None) -> list[Change]:
    """Single changes worth trying, as the run's framework proposes them (``Framework.changes``)."""
    return list(frameworks.get(run.framework).changes(run, base))


def candidates(run: ResolvedRun) -> Iterator[tuple[str, ResolvedRun]]:
    """Single changes worth trying, each as (text as typed, modified run)."""
    for change in changes(run):
        yield change.text, change.apply(run)


def _combine(parts: tuple[Change, ...]) -> Change | None:
    """The changes applied together; None when two of them set the same thing."""
    keys = [k for c in parts for k, _ in c.updates]
    if len(keys) != len(set(keys)) or sum(c.group is not None for c in parts) > 1:
        return None
    return Change(text=" + ".join(c.text for c in parts), updates=tuple(u for c in parts for u in c.updates),
                  group=next((c.group for c in parts if c.group is not None), None),
                  added_gpus=sum(c.added_gpus for c in parts))


def _estimate(run: ResolvedRun, gpu: Gpu | None, host_ram_bytes: int | None) -> Estimate | None:
    try:
        return estimate_run(run, gpu=gpu, host_ram_bytes=host_ram_bytes)
    except ConfigError:
        return None  # a combination the framework or its engines reject is no suggestion


def change_sets(run: ResolvedRun, base: Estimate, singles: list[tuple[Change, Suggestion]], *, gpu: Gpu | None,
                host_ram_bytes: int | None) -> list[Suggestion]:
    """The smallest sets of changes that make the run fit: pairs, then triples, then quadruples of the single
    changes that bring the run closest to fitting (least memory over capacity, summed over GPUs and nodes)."""
    before, over = _max_reserved(base), deficit_bytes(base)
    ranked = [c for c, s in sorted(singles, key=lambda cs: deficit_bytes(cs[1].estimate))
              if deficit_bytes(s.estimate) < over]
    effect = {c.text: s.saving_bytes for c, s in singles}
    for size, pool in SET_POOLS:
        found = []
        for parts in combinations(ranked[:pool], size):
            change = _combine(parts)
            est = None if change is None else _estimate(change.apply(run), gpu, host_ram_bytes)
            if change is None or est is None:
                continue
            suggestion = Suggestion(change=change.text, estimate=est, saving_bytes=before - _max_reserved(est),
                                    effects=tuple((p.text, effect[p.text]) for p in parts),
                                    added_gpus=change.added_gpus)
            if suggestion.fits:
                found.append(suggestion)
        if found:
            return sorted(found, key=lambda s: (s.added_gpus, -s.saving_bytes))
    return []


def suggest(run: ResolvedRun, base: Estimate, *, gpu: Gpu | None, host_ram_bytes: int | None,
            limit: int = 3) -> list[Suggestion]:
    """The ``limit`` most useful changes: when the run does not fit, the smallest change sets that make it
    fit come first (single changes, then pairs, triples, quadruples; fewest GPUs added first), then the
    changes that lower the per-GPU peak the most. A change whose result is still out of memory (on a GPU
    or a node) is never suggested; when none fits, the list is empty."""
    before = _max_reserved(base)
    singles: list[tuple[Change, Suggestion]] = []
    for change in changes(run, base):
        est = _estimate(change.apply(run), gpu, host_ram_bytes)
        if est is None:
            continue
        saving = before - _max_reserved(est)
        singles.append((change, Suggestion(change=change.text, estimate=est, saving_bytes=saving,
                                           effects=((change.text, saving),), added_gpus=change.added_gpus)))
    useful = [s for _, s in singles if s.saving_bytes > 0 and s.estimate.verdict != Verdict.OOM]
    useful.sort(key=lambda s: -s.saving_bytes)
    if gpu is None or base.verdict != Verdict.OOM:
        return useful[:limit]
    fitting = sorted((s for _, s in singles if s.fits), key=lambda s: (s.added_gpus, -s.saving_bytes))
    if not fitting:
        fitting = change_sets(run, base, singles, gpu=gpu, host_ram_bytes=host_ram_bytes)
    rest = [s for s in useful if s not in fitting and s.estimate.verdict != Verdict.OOM]  # no change that still OOMs
    return (fitting + rest)[:limit]
