"""``plan()``: the minimum and the recommended layout of a run, each with its launch command.

Each plan's estimate is made from its own launch command, read back the way ``memplan check``
reads it (``resolve_command`` then ``estimate_run``, at the plan's OpenRLHF version), so ``check`` on the
command (with ``--openrlhf-version`` when the plan was made for an older release) gives the same estimate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from memplan.api import estimate_run, resolve_capacity, resolve_command
from memplan.errors import ConfigError
from memplan.hardware.gpu import Gpu
from memplan.jobs.result import Estimate
from memplan.planner.hybrid import hybrid_minimum, hybrid_recommended
from memplan.planner.probe import BudgetExhausted, Evaluator, estimate_fits, gpu_key
from memplan.planner.rl import rl_minimum, rl_recommended
from memplan.planner.search import limit_bytes
from memplan.planner.settle import Found, Trace
from memplan.planner.single import single_minimum, single_recommended
from memplan.planner.space import Fit, FlagSet, Layout, Space, build_space, command_text


class LimitKind(StrEnum):
    """What stops every layout from fitting."""

    GPU_MEMORY = "gpu_memory"
    """A unit's per-GPU peak exceeds the GPU's memory at the most GPUs allowed."""
    HOST_RAM = "host_ram"
    """A node's host RAM is exceeded."""
    GPU_COUNT = "gpu_count"
    """Every unit fits on its own, but the layout needs more GPUs than allowed."""
    REJECTED = "rejected"
    """OpenRLHF's own constraints reject every candidate."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BindingLimit:
    """The limit that binds when nothing fits, and by how much."""

    kind: LimitKind
    """GPU memory, host RAM or GPU count."""
    where: str
    """The unit (``actor``, ``actor+ref``, ``hybrid``, ``train``...), the node (``node0``), or ``cluster``."""
    num_gpus: int
    """GPUs of the unit or layout it was measured on (the count needed for GPU_COUNT)."""
    need: int
    """Bytes per GPU or per node (GPUs for GPU_COUNT)."""
    limit: int
    """Capacity in bytes (``--max-gpus`` for GPU_COUNT)."""

    @property
    def shortfall(self) -> int:
        """``need - limit``."""
        return self.need - self.limit


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """One layout with its flags, launch command and estimate."""

    layout: Layout
    """GPUs per role, colocation, vLLM engines."""
    flags: FlagSet
    """Searched flag values."""
    command: str
    """The framework's launch command (``memplan check`` reads it back to ``estimate``)."""
    estimate: Estimate
    """The estimate of ``command``."""
    placement: str = ""
    """The layout's placement as plans name it (``Space.placement_name``)."""

    @property
    def num_gpus(self) -> int:
        """GPUs of the plan."""
        return self.estimate.num_gpus

    @property
    def max_host_bytes(self) -> int:
        """Host RAM of the fullest node."""
        return max((h.peak_bytes for h in self.estimate.hosts), default=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanResult:
    """The answer for one GPU type."""

    model: str
    """Model asked for."""
    method: str
    """Method asked for."""
    gpu: Gpu
    """GPU type."""
    host_ram_bytes: int | None
    """Host RAM per node, when given."""
    max_gpus: int
    """Most GPUs allowed."""
    minimum: Plan | None
    """Fewest GPUs (then least host RAM) that fits; None when nothing fits."""
    recommended: Plan | None
    """At least 10% headroom everywhere, balanced, fastest flags; None when none is found."""
    candidates_evaluated: int
    """Whole estimates made for this GPU type."""
    binding_limit: BindingLimit | None
    """What binds when there is no minimum."""
    notes: tuple[str, ...]
    """Assumptions and search remarks."""
    seconds: float
    """Wall time of the search."""


def _plan_of(space: Space, found: Found, gpu: Gpu, host_ram_bytes: int | None) -> Plan:
    layout, flags = found.candidate.layout, found.candidate.flags
    command = command_text(space, layout, flags)
    est = estimate_run(resolve_command(command, version=space.run.version, whole_run=False,
                                       framework=space.run.framework), gpu=gpu, host_ram_bytes=host_ram_bytes)
    return Plan(layout=layout, flags=flags, command=command, estimate=est,
                placement=space.placement_name(layout.placement))


def _binding(space: Space, gpu: Gpu, trace: Trace, last_error: str | None) -> BindingLimit | None:
    if space.max_gpus < 1:
        return BindingLimit(kind=LimitKind.GPU_COUNT, where="cluster", num_gpus=1, need=1, limit=space.max_gpus)
    if trace.host:
        worst = min(trace.host, key=lambda f: f.rank)
        node = max((h for h in worst.estimate.hosts if h.judged_bytes is not None),
                   key=lambda h: h.peak_bytes - (h.judged_bytes or 0))
        return BindingLimit(kind=LimitKind.HOST_RAM, where=node.id, num_gpus=worst.candidate.layout.num_gpus,
                            need=node.peak_bytes, limit=node.judged_bytes or 0)
    if trace.need_gpus:
        return BindingLimit(kind=LimitKind.GPU_COUNT, where="cluster", num_gpus=min(trace.need_gpus),
                            need=min(trace.need_gpus), limit=space.max_gpus)
    measured = {u: (c, o) for u, (c, o) in trace.units.items() if o.reserved_bytes is not None}
    if measured:
        unit = max(measured, key=lambda u: measured[u][1].reserved_bytes or 0)
        config, obs = measured[unit]
        gpus = config if isinstance(config, int) else config[0]  # type: ignore[index]
        return BindingLimit(kind=LimitKind.GPU_MEMORY, where=unit, num_gpus=int(gpus),
                            need=obs.reserved_bytes or 0, limit=limit_bytes(gpu, Fit.ANY))
    if trace.units or last_error:
        return BindingLimit(kind=LimitKind.REJECTED, where=last_error or "candidates", num_gpus=0, need=0, limit=0)
    return None


def _plan_one(space: Space, ev: Evaluator, gpu: Gpu, host_ram_bytes: int | None, recommend: bool,
              method: str) -> PlanResult:
    start, before = time.perf_counter(), ev.count
    trace, notes = Trace(), list(space.notes)
    minimum = recommended = None
    try:
        if space.max_gpus >= 1:
            search_min, search_rec = (hybrid_minimum, hybrid_recommended) if space.hybrid_only else \
                (rl_minimum, rl_recommended) if space.rl else (single_minimum, single_recommended)
            minimum = search_min(ev, space, gpu, trace)
            recommended = search_rec(ev, space, gpu, minimum) if minimum and recommend else None
    except BudgetExhausted:
        notes.append(f"search stopped after {ev.max_evaluations} estimates")
    min_plan = _plan_of(space, minimum, gpu, host_ram_bytes) if minimum else None
    rec_plan = _plan_of(space, recommended, gpu, host_ram_bytes) if recommended else None
    for plan_, fit in ((min_plan, Fit.ANY), (rec_plan, Fit.HEADROOM)):
        if plan_ is not None and not estimate_fits(plan_.estimate, gpu, fit):  # the command read back differs
            notes.append(f"the {'minimum' if fit == Fit.ANY else 'recommended'} layout's command does not "
                         "estimate as its search did; check it with memplan check")
    if min_plan and not rec_plan and recommend:
        notes.append("no layout with 10% headroom on every GPU and node within the limits")
    binding = None if min_plan else _binding(space, gpu, trace, ev.last_error)
    return PlanResult(model=str(space.run.values.get("pretrain", space.model)), method=method, gpu=gpu,
                      host_ram_bytes=host_ram_bytes, max_gpus=space.max_gpus, minimum=min_plan,
                      recommended=rec_plan, candidates_evaluated=ev.count - before, binding_limit=binding,
                      notes=tuple(notes), seconds=time.perf_counter() - start)


def plan_gpus(model: str, method: str, *, gpus: Sequence[str | Gpu], host_ram: str | int | None = None,
              gpus_per_node: int = 8, max_gpus: int | None = None, flags: Sequence[str] = (),
              keep: Sequence[str] = (), allow_lora: bool = False, version: str | None = None,
              recommend: bool = True, framework: str = "openrlhf") -> tuple[PlanResult, ...]:
    """Plan ``model`` + ``method`` on each GPU type (one search space; per-unit results are shared).

    ``flags``: the framework's options of the run (OpenRLHF flags, verl ``key=value``), kept as given;
    ``keep``: ``FLAG=VALUE`` pins; ``framework``: the framework that runs it (``frameworks.get``); ``host_ram``:
    per node; ``max_gpus``: the most GPUs a plan may use; ``recommend=False`` skips the recommended
    layout (the minimum only).
    """
    space = build_space(model, method, flags=flags, keep=keep, gpus_per_node=gpus_per_node, max_gpus=max_gpus,
                        allow_lora=allow_lora, version=version, framework=framework)
    resolved: list[Gpu] = []
    host_bytes: int | None = None
    if not gpus:
        raise ConfigError("--gpu", "give at least one GPU type")
    for gpu in gpus:
        spec, host_bytes = resolve_capacity(gpu, host_ram) if isinstance(gpu, str) else \
            (gpu, resolve_capacity(None, host_ram)[1])
        if spec is not None and gpu_key(spec) not in {gpu_key(g) for g in resolved}:
            resolved.append(spec)
    ev = Evaluator(space, host_ram_bytes=host_bytes)
    return tuple(_plan_one(space, ev, gpu, host_bytes, recommend, str(method)) for gpu in resolved)


def plan(model: str, method: str, *, gpu: str | Gpu, **options: Any) -> PlanResult:
    """Plan ``model`` trained with ``method`` on ``gpu``; ``options`` as for :func:`plan_gpus`."""
    return plan_gpus(model, method, gpus=[gpu], **options)[0]
