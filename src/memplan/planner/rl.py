"""RL plans (``train_ppo_ray``): unit searches per placement, the minimum, the recommended layout.

The recommended layout follows OpenRLHF's maintainers (reference/openrlhf.md §7, public-cases
rows 1-4 and 9): vLLM:actor:critic GPUs 1:1:1, reference and reward on at least half the actor's
GPUs; no colocation for a model whose weights do not fit one GPU, each trained model on whole
nodes then (the CPU Adam states of actor and critic on different nodes, OpenRLHF#198); smaller
models on the hybrid engine (colocate_all + sleep) on at least one node, the README's template
(8 GPUs, public-cases row 9).
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.hardware.gpu import Gpu
from memplan.jobs.knobs import Knob
from memplan.planner.knobs import gmu_options, placements, ring_options, saving_flags, size_ladder, tp_options
from memplan.planner.probe import Candidate, Evaluator, kv_cache_bytes
from memplan.planner.search import (
    HybridSearch,
    LadderSearch,
    RolloutSearch,
    UnitSearch,
    ceil_div,
    lockstep,
    next_size,
)
from memplan.planner.settle import Found, Trace, better, check, lighter_host, settle, speed_up
from memplan.planner.space import Fit, FlagSet, Layout, Placement, Space

#: vLLM memory shares tried to give a hybrid engine more KV cache once it fits (README template
#: 0.5; PR OpenRLHF#808: 0.8 for a colocated 7B).
HYBRID_GMU_UPGRADES = (0.5, 0.6, 0.7, 0.8)
#: Least fraction of a hybrid engine's memory share kept as KV cache when trading TP for more engines.
MIN_KV_SHARE = 0.5


def _engines(space: Space) -> int:
    return int(space.value(Knob.ENGINES) or 1) if not space.free(Knob.ENGINES) else 1


def _record(trace: Trace, searches: dict[str, UnitSearch]) -> None:
    for name, search in searches.items():
        if search.result() is None and search.worst is not None:
            trace.units[name] = search.worst


@dataclass(frozen=True, slots=True, kw_only=True)
class Separate:
    """The smallest group of each role on its own GPUs, and the vLLM engine's TP and memory share."""

    sizes: dict[str, int]
    """Role → GPUs."""
    rollout: tuple[int, float] | None
    """(TP, gpu_memory_utilization) of one engine; None without vLLM."""

    @property
    def widest(self) -> int:
        """The largest role group (a colocated layout needs at least this many GPUs)."""
        return max(self.sizes.values())

    def layout(self, space: Space, placement: Placement = Placement.SEPARATE, **sizes: int) -> Layout:
        """A layout with these sizes (``sizes`` overriding), one engine (or the pinned count)."""
        tp, gmu = self.rollout or (1, None)
        merged = {**self.sizes, **sizes}
        return Layout(placement=placement, sizes=tuple((r, merged[r]) for r in space.roles),
                      engines=_engines(space) if space.has_vllm else 0, tp=tp, gmu=gmu)


def separate_units(ev: Evaluator, space: Space, gpu: Gpu, flags: FlagSet, fit: Fit, trace: Trace) -> Separate | None:
    """Smallest size of each role alone (and the engine's TP and share); None when one never fits."""
    searches: dict[str, UnitSearch] = {r: LadderSearch(size_ladder(space, r, flags), gpu, fit) for r in space.roles}
    if space.has_vllm:
        searches["rollout"] = RolloutSearch(tp_options(space), gmu_options(space), gpu, fit,
                                            weights_bytes=2 * space.num_params)

    def build(configs: dict[str, object]) -> Layout:
        rollout = configs.get("rollout")
        probe = Separate(sizes={r: int(configs[r]) for r in space.roles},  # type: ignore[call-overload]
                         rollout=rollout)  # type: ignore[arg-type]
        return probe.layout(space)

    lockstep(ev, gpu, flags, searches, build)
    _record(trace, searches)
    results = {n: s.result() for n, s in searches.items()}
    if any(v is None for v in results.values()):
        return None
    return Separate(sizes={r: int(results[r]) for r in space.roles},  # type: ignore[call-overload]
                    rollout=results.get("rollout"))  # type: ignore[arg-type]


def pair_layouts(ev: Evaluator, space: Space, gpu: Gpu, flags: FlagSet, sep: Separate) -> list[Layout]:
    """Layouts with actor+ref and/or critic+reward colocated that use fewer GPUs than separate ones.

    A colocated pair needs at least the larger of its two groups (monotone) and is only worth it
    below their sum, so each pair is searched in [max, sum).
    """
    pairs = {"actor+ref": ("actor", "ref"), "critic+reward": ("critic", "reward")}
    searches: dict[str, UnitSearch] = {}
    for name, (a, b) in pairs.items():
        if a in sep.sizes and b in sep.sizes:
            ladder = tuple(n for n in size_ladder(space, a, flags) if n in size_ladder(space, b, flags))
            size_a, size_b = sep.sizes[a], sep.sizes[b]
            searches[name] = LadderSearch(ladder, gpu, Fit.ANY, at_least=max(size_a, size_b), below=size_a + size_b)
    if not searches:
        return []

    def sizes_of(configs: dict[str, object]) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for name, (a, b) in pairs.items():
            if name in configs:
                sizes[a] = sizes[b] = int(configs[name])  # type: ignore[call-overload]
        return sizes

    both = Placement.PAIRS if len(searches) == 2 else (
        Placement.ACTOR_REF if "actor+ref" in searches else Placement.CRITIC_REWARD)
    lockstep(ev, gpu, flags, searches, lambda c: sep.layout(space, both, **sizes_of(c)))
    found = {n: s.result() for n, s in searches.items()}
    out = []
    for placement, names in ((Placement.ACTOR_REF, ("actor+ref",)), (Placement.CRITIC_REWARD, ("critic+reward",)),
                             (Placement.PAIRS, ("actor+ref", "critic+reward"))):
        if all(found.get(n) is not None for n in names):
            out.append(sep.layout(space, placement, **sizes_of({n: found[n] for n in names})))
    return out


def _hybrid_tp(space: Space):  # type: ignore[no-untyped-def]
    options = tp_options(space)
    pinned_engines = None if space.free(Knob.ENGINES) else int(space.value(Knob.ENGINES) or 1)

    def tp_for(n: int) -> int | None:
        if pinned_engines is not None:
            tp = n // pinned_engines
            return tp if n % pinned_engines == 0 and tp in options else None
        return max((t for t in options if n % t == 0), default=None)

    return tp_for


def hybrid_layout(ev: Evaluator, space: Space, gpu: Gpu, fit: Fit, ring: int, trace: Trace, *, at_least: int,
                  below: int | None) -> tuple[Layout, FlagSet] | None:
    """The smallest hybrid-engine layout (every model and the engines on the same GPUs)."""
    if not space.has_vllm or Placement.HYBRID not in placements(space):
        return None
    flags = saving_flags(space, hybrid=True, ring=ring)
    ladder = tuple(n for n in size_ladder(space, "actor", flags)
                   if all(n in size_ladder(space, r, flags) for r in space.roles))
    search = HybridSearch(ladder, _hybrid_tp(space), gmu_options(space), gpu, fit,
                          weights_bytes=2 * space.num_params, at_least=at_least, below=below)

    def build(configs: dict[str, object]) -> Layout:
        n, tp, gmu = configs["hybrid"]  # type: ignore[misc]
        return Layout(placement=Placement.HYBRID, sizes=tuple((r, n) for r in space.roles), engines=n // tp, tp=tp,
                      gmu=gmu)

    lockstep(ev, gpu, flags, {"hybrid": search}, build)
    _record(trace, {"hybrid": search})
    found = search.result()
    return None if found is None else (build({"hybrid": found}), flags)


def _hybrid_only(ev: Evaluator, space: Space, gpu: Gpu, fit: Fit, trace: Trace, ring: int) -> Found | None:
    """With ``--keep colocate_all_models=true``: the smallest hybrid engine."""
    hybrid = hybrid_layout(ev, space, gpu, fit, ring, trace, at_least=0, below=None)
    if hybrid is None or hybrid[0].num_gpus > space.max_gpus:
        return None
    return settle(ev, space, gpu, Candidate(layout=hybrid[0], flags=hybrid[1]), fit, trace)


def rl_minimum(ev: Evaluator, space: Space, gpu: Gpu, trace: Trace) -> Found | None:
    """Fewest GPUs, then least host RAM, whose every GPU and node fits."""
    best: Found | None = None
    order = {p: i for i, p in enumerate(placements(space))}
    for ring in ring_options(space):
        if tuple(order) == (Placement.HYBRID,):
            best = better(best, _hybrid_only(ev, space, gpu, Fit.ANY, trace, ring))
            continue
        flags = saving_flags(space, ring=ring)
        sep = separate_units(ev, space, gpu, flags, Fit.ANY, trace)
        if sep is None:
            continue
        layouts = [(lay, flags) for lay in (sep.layout(space), *pair_layouts(ev, space, gpu, flags, sep))]
        bound = min(lay.num_gpus for lay, _ in layouts)
        hybrid = hybrid_layout(ev, space, gpu, Fit.ANY, ring, trace, at_least=sep.widest,
                               below=min(bound, best.rank[0]) if best else bound)
        layouts += [hybrid] if hybrid else []
        ranked = sorted((c for c in layouts if c[0].placement in order),
                        key=lambda c: (c[0].num_gpus, order[c[0].placement]))
        for layout, fl in ranked:
            if layout.num_gpus > space.max_gpus:
                trace.need_gpus.append(layout.num_gpus)
                continue
            if best is not None and layout.num_gpus > best.rank[0]:
                break
            best = better(best, settle(ev, space, gpu, Candidate(layout=layout, flags=fl), Fit.ANY, trace))
    return lighter_host(ev, space, gpu, best, Fit.ANY) if best else None


def balanced_layout(space: Space, gpu: Gpu, sep: Separate, flags: FlagSet) -> Layout:
    """Separate groups in the maintainers' ratios (vLLM:actor:critic 1:1:1; ref, reward ≥ half)."""
    trained = max(sep.sizes[r] for r in ("actor", "critic") if r in sep.sizes)
    if 2 * space.num_params > gpu.capacity_bytes:  # weights larger than one GPU: whole nodes
        trained = max(trained, min(space.gpus_per_node, space.max_gpus))
    actor = next_size(size_ladder(space, "actor", flags), trained) or sep.sizes["actor"]
    sizes = {"actor": actor, **({"critic": actor} if "critic" in sep.sizes else {})}
    for role, partner in (("ref", "actor"), ("reward", "critic")):
        if role in sep.sizes:
            half = max(sep.sizes[role], sizes.get(partner, actor) // 2)
            sizes[role] = next_size(size_ladder(space, role, flags), half) or sep.sizes[role]
    layout = sep.layout(space, **sizes)
    if space.has_vllm and space.free(Knob.ENGINES):
        layout = Layout(placement=layout.placement, sizes=layout.sizes, engines=max(1, ceil_div(actor, layout.tp)),
                        tp=layout.tp, gmu=layout.gmu)
    return layout


def _kv_share_ok(found: Found, layout: Layout, gpu: Gpu) -> bool:
    """At least MIN_KV_SHARE of the engines' memory share is KV cache (room for concurrent sequences)."""
    kv = [kv_cache_bytes(d) or 0 for d in (found.estimate.devices if found.estimate else ()) if "rollout" in d.roles]
    return bool(kv) and min(kv) >= MIN_KV_SHARE * (layout.gmu or 0) * gpu.memory_bytes


def _upgrade_hybrid(ev: Evaluator, space: Space, gpu: Gpu, found: Found, *, upto: float = 1.0,
                    engines: bool = True) -> Found:
    """A larger vLLM memory share (up to ``upto``), then more engines (smaller TP) while 10% headroom
    remains and at least MIN_KV_SHARE of the share stays KV cache."""
    layout = found.candidate.layout
    n = layout.size("actor")
    shares = [g for g in HYBRID_GMU_UPGRADES if layout.gmu is not None and layout.gmu < g <= upto] \
        if space.free(Knob.ENGINE_MEMORY_SHARE) else []
    for gmu in shares:
        bigger = Layout(placement=layout.placement, sizes=layout.sizes, engines=layout.engines, tp=layout.tp, gmu=gmu)
        better = check(ev, gpu, Candidate(layout=bigger, flags=found.candidate.flags), Fit.HEADROOM)
        if better is None:
            break
        found, layout = better, bigger
    smaller = [t for t in sorted(tp_options(space), reverse=True) if t < layout.tp and n % t == 0] \
        if engines and space.free(Knob.ENGINE_TP) and space.free(Knob.ENGINES) else []
    for tp in smaller:
        more = Layout(placement=layout.placement, sizes=layout.sizes, engines=n // tp, tp=tp, gmu=layout.gmu)
        better = check(ev, gpu, Candidate(layout=more, flags=found.candidate.flags), Fit.HEADROOM)
        if better is None or not _kv_share_ok(better, more, gpu):
            break
        found, layout = better, more
    return found


def _hybrid_recommended(ev: Evaluator, space: Space, gpu: Gpu, at_least: int, ring: int, trace: Trace) -> Found | None:
    """The hybrid engine with headroom on at least one node (the README's 8-GPU template)."""
    hybrid = hybrid_layout(ev, space, gpu, Fit.HEADROOM, ring, trace, at_least=at_least, below=None)
    node = min(space.gpus_per_node, space.max_gpus)
    if hybrid is not None and hybrid[0].num_gpus < node:
        hybrid = hybrid_layout(ev, space, gpu, Fit.HEADROOM, ring, trace, at_least=node, below=None) or hybrid
    if hybrid is None or hybrid[0].num_gpus > space.max_gpus:
        return None
    return settle(ev, space, gpu, Candidate(layout=hybrid[0], flags=hybrid[1]), Fit.HEADROOM, trace)


def rl_recommended(ev: Evaluator, space: Space, gpu: Gpu, minimum: Found | None) -> Found | None:
    """The balanced layout with at least 10% headroom everywhere, with the fastest flags that keep it."""
    trace = Trace()
    ring = int(dict(minimum.candidate.flags).get(space.key(Knob.SEQUENCE_PARALLEL), 1)) if minimum else 1
    flags = saving_flags(space, ring=ring)
    if placements(space) == (Placement.HYBRID,):
        found = _hybrid_recommended(ev, space, gpu, 0, ring, trace)
        return _faster(ev, space, gpu, found) if found else None
    sep = separate_units(ev, space, gpu, flags, Fit.HEADROOM, trace)
    if sep is None:
        return None
    found: Found | None = None
    if 2 * space.num_params <= gpu.capacity_bytes:
        found = _hybrid_recommended(ev, space, gpu, sep.widest, ring, trace)
    if found is None and Placement.SEPARATE in placements(space):
        for layout in (balanced_layout(space, gpu, sep, flags), sep.layout(space)):
            if layout.num_gpus <= space.max_gpus:
                found = settle(ev, space, gpu, Candidate(layout=layout, flags=flags), Fit.HEADROOM, trace)
            if found is not None:
                break
    return _faster(ev, space, gpu, found) if found else None


def _faster(ev: Evaluator, space: Space, gpu: Gpu, found: Found) -> Found:
    """The fastest settings that keep 10% headroom."""
    hybrid_run = found.candidate.layout.placement == Placement.HYBRID
    if hybrid_run:  # the README template's vLLM share first, then the training flags, then the rest
        found = _upgrade_hybrid(ev, space, gpu, found, upto=HYBRID_GMU_UPGRADES[0], engines=False)
    found = speed_up(ev, space, gpu, found, Fit.HEADROOM, hybrid=hybrid_run)
    return _upgrade_hybrid(ev, space, gpu, found) if hybrid_run else found
