"""Plans for frameworks whose only placement is the hybrid engine (``Space.hybrid_only``: every role and the
rollout engines on the same GPUs, as verl runs them): the GPU count, the engines' TP and memory share, and the
knobs — offload per role, checkpointing per role, chunked entropy, and the micro-batch size or token budget.

The search is the one ``rl.py`` runs for OpenRLHF's hybrid engine (``search.HybridSearch``: bisection over the
GPU count from the most memory-saving knobs, the largest TP dividing it, the smallest memory share whose KV
budget clears the floor), with two differences: a GPU count is on the ladder only when the framework accepts
it (its start-up checks, e.g. verl's batch divisibility, run on the candidate's own command), and the knobs
are found by kind for every role the run has, so the framework's per-role knobs need no list here.

Speed-ups follow verl's performance guide (``docs/perf/perf_tuning.rst`` of verl-project/verl v0.9.0,
"Tuning for dynamic batch size" and "Enable gradient checkpointing"): offload off when the GPUs have room,
then a larger token budget (at least twice prompt + response is its advice) or micro batch, with
checkpointing kept on to afford it, then checkpointing and chunked entropy off; last a larger rollout memory
share (verl's default is 0.5) and more engines (smaller TP) while headroom and KV share remain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memplan import frameworks
from memplan.errors import ConfigError
from memplan.hardware.gpu import Gpu
from memplan.jobs.knobs import Knob, KnobKey
from memplan.planner.knobs import base_sizes, gmu_options, tp_options
from memplan.planner.probe import Candidate, Evaluator, UnitObs, estimate_fits, gpus_fit, host_rank
from memplan.planner.rl import HYBRID_GMU_UPGRADES, _kv_share_ok
from memplan.planner.search import HybridSearch, limit_bytes, lockstep
from memplan.planner.settle import Found, Trace, better, check, speed_up
from memplan.planner.space import (
    HYBRID_ROLES as ROLES,
    Fit,
    FlagSet,
    Layout,
    Placement,
    Space,
    flag_set,
    run_for,
    with_flags,
)

#: Knobs turned on in the most memory-saving setting (and off again as speed-ups, in this order).
SAVING_SWITCHES = (Knob.OPTIMIZER_OFFLOAD, Knob.PARAM_OFFLOAD, Knob.CHECKPOINTING, Knob.ENTROPY_CHUNKING)
#: Token budgets tried, as multiples of the longest sequence (verl's guide: at least 2×; its default 16384
#: is 16× the default 512 + 512).
BUDGET_MULTIPLES = (2, 4, 8, 16)
#: Micro batches tried when the token budget is off (pinned).
MICRO_BATCHES = (2, 4, 8, 16)


def _keys(space: Space, knob: Knob) -> list[str]:
    """The framework's keys of ``knob`` for the run and each role it has, that the planner may choose."""
    keys = frameworks.get(space.run.framework).knob_keys()
    roles = set(space.roles)
    out = []
    for role in ROLES:
        kk = KnobKey(knob=knob, role=role)
        if kk in keys and (role is None or role.value in roles) and space.free(keys[kk]):
            out.append(keys[kk])
    return out


def dynamic(space: Space) -> bool:
    """Micro-batches by token budget: unless the user turned it off (or the framework has no budget)."""
    if not space.knows(Knob.DYNAMIC_BATCH):
        return False
    return bool(space.value(Knob.DYNAMIC_BATCH)) if not space.free(Knob.DYNAMIC_BATCH) else True


def longest(space: Space) -> int:
    """Prompt + response: the longest sequence a micro-batch must hold."""
    return int(space.value(Knob.PROMPT_LENGTH) or 0) + int(space.value(Knob.RESPONSE_LENGTH) or 0)


def saving_flags(space: Space) -> FlagSet:
    """Every switch on, one sequence per micro-batch (the token budget at the longest sequence, or micro 1)."""
    out: dict[str, Any] = {}
    for knob in SAVING_SWITCHES:
        out.update({k: True for k in _keys(space, knob)})
    if dynamic(space):
        out.update({k: True for k in _keys(space, Knob.DYNAMIC_BATCH)})
        out.update({k: longest(space) for k in _keys(space, Knob.TOKEN_BUDGET)})
    else:
        out.update({k: 1 for knob in (Knob.MICRO_BATCH, Knob.FORWARD_MICRO_BATCH) for k in _keys(space, knob)})
    return flag_set(out)


def speedups(space: Space, flags: FlagSet) -> list[tuple[str, list[dict[str, Any]]]]:
    """Changes towards faster training, in the module's order; each knob's values from the least memory up."""
    f = dict(flags)
    out: list[tuple[str, list[dict[str, Any]]]] = []
    for knob in (Knob.OPTIMIZER_OFFLOAD, Knob.PARAM_OFFLOAD):
        out += [(k, [{k: False}]) for k in _keys(space, knob) if f.get(k)]
    if dynamic(space):
        for k in _keys(space, Knob.TOKEN_BUDGET):
            now = int(f.get(k) or 0)
            out.append((k, [{k: m * longest(space)} for m in BUDGET_MULTIPLES if m * longest(space) > now]))
    else:
        for knob in (Knob.MICRO_BATCH, Knob.FORWARD_MICRO_BATCH):
            for k in _keys(space, knob):
                out.append((k, [{k: m} for m in MICRO_BATCHES if m > int(f.get(k) or 1)]))
    for knob in (Knob.CHECKPOINTING, Knob.ENTROPY_CHUNKING):
        out += [(k, [{k: False}]) for k in _keys(space, knob) if f.get(k)]
    return [(k, options) for k, options in out if options]


def _layout(space: Space, n: int, tp: int, gmu: float | None) -> Layout:
    return Layout(placement=Placement.HYBRID, sizes=tuple((r, n) for r in space.roles), engines=n // tp, tp=tp,
                  gmu=gmu)


def accepted(space: Space, candidate: Candidate) -> bool:
    """Whether the framework accepts the candidate's run (its start-up checks pass)."""
    try:
        run_for(space, candidate.layout, candidate.flags)
    except ConfigError:
        return False
    return True


def _tp_for(space: Space) -> Callable[[int], int | None]:
    options = tp_options(space)
    return lambda n: max((t for t in options if n % t == 0), default=None)


def samples(space: Space) -> int:
    """Sequences per step: prompts × responses per prompt."""
    return int(space.value(Knob.GLOBAL_BATCH) or 1) * int(space.value(Knob.SAMPLES_PER_PROMPT) or 1)


def _ladder(space: Space, flags: FlagSet) -> tuple[int, ...]:
    """GPU counts the framework accepts with ``flags`` (1..a node, then whole nodes; at most ``max_gpus``) that
    split the step's sequences evenly: verl checks it without a token budget (w:verl/utils/config.py:121-127 of
    the 0.9.1 wheel) and its data split asks for equal chunks (w:verl/protocol.py:870-872, ``DataProto.chunk``)."""
    tp_for, gmu = _tp_for(space), gmu_options(space)[-1]
    return tuple(n for n in base_sizes(space) if samples(space) % n == 0 and (tp := tp_for(n)) is not None
                 and accepted(space, Candidate(layout=_layout(space, n, tp, gmu), flags=flags)))


class _EngineSearch(HybridSearch):
    """``HybridSearch`` at one TP, where an engine that cannot start (too little KV budget for one sequence)
    asks for a larger memory share, as a KV budget under the floor does."""

    def observe(self, config: object, obs: UnitObs) -> None:
        n, _tp, _gmu = config  # type: ignore[misc]
        peak_ok = obs.reserved_bytes is not None and obs.reserved_bytes <= limit_bytes(self.gpu, self.fit)
        if obs.startup_error and peak_ok and self.share[n] + 1 < len(self.gmus):
            self.share[n] += 1
            return
        super().observe(config, obs)


def _search(ev: Evaluator, space: Space, gpu: Gpu, fit: Fit, trace: Trace, *, at_least: int) -> Found | None:
    """The fewest GPUs (from ``at_least``) on which the most saving flags fit, with its TP and share.

    The peak is not monotone in TP (a larger TP shrinks the engine's weights but adds its group's buffers to
    every phase), so each TP is searched on its own, the largest first, each below the best count so far."""
    flags = saving_flags(space)
    ladder = _ladder(space, flags)
    best: tuple[int, int, float] | None = None
    for tp in sorted(tp_options(space), reverse=True):
        search = _EngineSearch(ladder, lambda n, t=tp: t if n % t == 0 else None, gmu_options(space), gpu, fit,
                               weights_bytes=2 * space.num_params, at_least=at_least,
                               below=best[0] if best else None)
        lockstep(ev, gpu, flags, {"hybrid": search}, lambda c: _layout(space, *c["hybrid"]))  # type: ignore[misc]
        found = search.result()
        if found is not None:
            best = found
        elif search.worst is not None and best is None:
            trace.units["hybrid"] = search.worst
    if best is None:
        return None
    found = best
    candidate = Candidate(layout=_layout(space, *found), flags=flags)
    est = ev.evaluate(candidate, gpu)
    if est is None:
        return None
    if estimate_fits(est, gpu, fit):
        return Found(candidate=candidate, estimate=est)
    if gpus_fit(est, gpu, fit):  # the host does not fit: fewer offloaded states may
        trace.host.append(Found(candidate=candidate, estimate=est))
        return _lighter_host(ev, space, gpu, Found(candidate=candidate, estimate=est), fit, require=True)
    return None


def _lighter_host(ev: Evaluator, space: Space, gpu: Gpu, found: Found, fit: Fit, *,
                  require: bool = False) -> Found | None:
    """At the same layout, each offload turned off while the GPUs still fit: less host RAM (the minimum's
    tie-break; with ``require``, the first that makes the nodes fit)."""
    best: Found | None = None if require else found
    current = found
    for knob in (Knob.OPTIMIZER_OFFLOAD, Knob.PARAM_OFFLOAD):
        for key in _keys(space, knob):
            if not dict(current.candidate.flags).get(key):
                continue
            flags = with_flags(current.candidate.flags, **{key: False})
            lighter = Candidate(layout=current.candidate.layout, flags=flags)
            est = ev.evaluate(lighter, gpu) if accepted(space, lighter) else None
            if est is None or not gpus_fit(est, gpu, fit):
                continue
            current = Found(candidate=lighter, estimate=est)
            if estimate_fits(est, gpu, fit) and (best is None or best.estimate is None
                                                 or host_rank(est) < host_rank(best.estimate)):
                best = current
    return best


def hybrid_minimum(ev: Evaluator, space: Space, gpu: Gpu, trace: Trace) -> Found | None:
    """Fewest GPUs, then least host RAM, whose every GPU and node fits."""
    found = _search(ev, space, gpu, Fit.ANY, trace, at_least=0)
    if found is None:
        return None
    if found.candidate.layout.num_gpus > space.max_gpus:
        trace.need_gpus.append(found.candidate.layout.num_gpus)
        return None
    return better(found, _lighter_host(ev, space, gpu, found, Fit.ANY))


def hybrid_recommended(ev: Evaluator, space: Space, gpu: Gpu, minimum: Found | None) -> Found | None:
    """At least a node (verl's examples run 8 GPUs per node) with 10% headroom, then the fastest settings."""
    node = min(space.gpus_per_node, space.max_gpus)
    at_least = max(node, minimum.candidate.layout.num_gpus if minimum else 0)
    found = _search(ev, space, gpu, Fit.HEADROOM, Trace(), at_least=at_least)
    if found is None or found.candidate.layout.num_gpus > space.max_gpus:
        return None
    found = _more_share(ev, space, gpu, found, upto=HYBRID_GMU_UPGRADES[0])
    found = speed_up(ev, space, gpu, found, Fit.HEADROOM, hybrid=True, knobs=speedups(space, found.candidate.flags),
                     is_valid=lambda c: accepted(space, c))
    found = _more_share(ev, space, gpu, found, upto=1.0)
    return _more_engines(ev, space, gpu, found)


def _more_share(ev: Evaluator, space: Space, gpu: Gpu, found: Found, *, upto: float) -> Found:
    """A larger rollout memory share (more KV cache) while 10% headroom remains."""
    layout = found.candidate.layout
    if not space.free(Knob.ENGINE_MEMORY_SHARE):
        return found
    for gmu in (g for g in HYBRID_GMU_UPGRADES if layout.gmu is not None and layout.gmu < g <= upto):
        bigger = _layout(space, layout.size(space.roles[0]), layout.tp, gmu)
        candidate = Candidate(layout=bigger, flags=found.candidate.flags)
        more = check(ev, gpu, candidate, Fit.HEADROOM) if accepted(space, candidate) else None
        if more is None:
            break
        found, layout = more, bigger
    return found


def _more_engines(ev: Evaluator, space: Space, gpu: Gpu, found: Found) -> Found:
    """Smaller TP (more engines) while 10% headroom remains and the KV cache keeps half the share."""
    layout = found.candidate.layout
    n = layout.size(space.roles[0])
    if not space.free(Knob.ENGINE_TP):
        return found
    for tp in sorted((t for t in tp_options(space) if t < layout.tp and n % t == 0), reverse=True):
        more = _layout(space, n, tp, layout.gmu)
        candidate = Candidate(layout=more, flags=found.candidate.flags)
        faster = check(ev, gpu, candidate, Fit.HEADROOM) if accepted(space, candidate) else None
        if faster is None or not _kv_share_ok(faster, more, gpu):
            break
        found, layout = faster, more
    return found
