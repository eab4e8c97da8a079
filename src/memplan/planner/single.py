"""Single-model plans (``train_sft``, ``train_rm``, ``train_dpo``, ...): one GPU group, its size and flags."""

from __future__ import annotations

from memplan.hardware.gpu import Gpu
from memplan.jobs.knobs import Knob
from memplan.planner.knobs import ring_options, saving_flags, size_ladder
from memplan.planner.probe import Candidate, Evaluator
from memplan.planner.search import LadderSearch, lockstep
from memplan.planner.settle import Found, Trace, better, lighter_host, settle, speed_up
from memplan.planner.space import TRAIN, Fit, FlagSet, Layout, Placement, Space


def _layout(n: int) -> Layout:
    return Layout(placement=Placement.SINGLE, sizes=((TRAIN, n),))


def smallest_group(ev: Evaluator, space: Space, gpu: Gpu, flags: FlagSet, fit: Fit, trace: Trace) -> int | None:
    """The fewest GPUs on which the group fits under ``flags``."""
    search = LadderSearch(size_ladder(space, TRAIN, flags), gpu, fit)
    lockstep(ev, gpu, flags, {TRAIN: search}, lambda c: _layout(int(c[TRAIN])))  # type: ignore[call-overload]
    if search.result() is None and search.worst is not None:
        trace.units[TRAIN] = search.worst
    return search.result()


def single_minimum(ev: Evaluator, space: Space, gpu: Gpu, trace: Trace) -> Found | None:
    """Fewest GPUs (then least host RAM) for the group."""
    best: Found | None = None
    for ring in ring_options(space):
        flags = saving_flags(space, ring=ring)
        n = smallest_group(ev, space, gpu, flags, Fit.ANY, trace)
        if n is None or (best is not None and n > best.rank[0]):
            continue
        best = better(best, settle(ev, space, gpu, Candidate(layout=_layout(n), flags=flags), Fit.ANY, trace))
    return lighter_host(ev, space, gpu, best, Fit.ANY) if best else None


def single_recommended(ev: Evaluator, space: Space, gpu: Gpu, minimum: Found | None) -> Found | None:
    """The fewest GPUs with 10% headroom, then the fastest flags that keep it."""
    trace = Trace()
    ring = int(dict(minimum.candidate.flags).get(space.key(Knob.SEQUENCE_PARALLEL), 1)) if minimum else 1
    flags = saving_flags(space, ring=ring)
    n = smallest_group(ev, space, gpu, flags, Fit.HEADROOM, trace)
    if n is None:
        return None
    found = settle(ev, space, gpu, Candidate(layout=_layout(n), flags=flags), Fit.HEADROOM, trace)
    return None if found is None else speed_up(ev, space, gpu, found, Fit.HEADROOM, hybrid=False)
