"""Estimate results: per-device and per-node peaks with the terms that explain them.

These are data; ``cli/render.py`` and ``jobs/report.py`` turn them into text and JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from memplan.jobs.ids import GpuBlock, NodeRange, ranges_text
from memplan.memory.breakdown import SAVE_PHASES, Phase, Term
from memplan.memory.host_limit import HostLimit


class Verdict(StrEnum):
    """Whether a peak fits a capacity."""

    FITS = "fits"
    """At least :data:`TIGHT_HEADROOM` of the capacity stays free."""
    TIGHT = "tight"
    """Fits, but with less than :data:`TIGHT_HEADROOM` to spare: a longer sample or allocator
    fragmentation beyond the model may tip it over."""
    OOM = "oom"
    """The predicted peak exceeds the capacity."""


#: Headroom below which a fitting run is called tight: 10% of capacity, the margin the planner's
#: recommended layout keeps (issue: "fits with at least 10% headroom on every GPU and node").
TIGHT_HEADROOM = 0.10


def verdict_for(peak_bytes: int, capacity_bytes: int | None, *, preallocated_bytes: int = 0) -> Verdict | None:
    """fits / tight / oom of ``peak_bytes`` against ``capacity_bytes`` (None when no capacity given).

    ``preallocated_bytes``: the part of the peak that an engine claims up front as a configured share of the
    GPU (vLLM's ``gpu_memory_utilization``: weights, KV cache, profiled activations) and never grows past. It
    is what the engine was told to take, so tightness is judged on the rest: tight when less than
    TIGHT_HEADROOM of the memory *not* preallocated stays free.

        tight  ⇔  capacity − peak < TIGHT_HEADROOM × (capacity − preallocated)
    """
    if capacity_bytes is None:
        return None
    if peak_bytes > capacity_bytes:
        return Verdict.OOM
    if capacity_bytes - peak_bytes < TIGHT_HEADROOM * (capacity_bytes - preallocated_bytes):
        return Verdict.TIGHT
    return Verdict.FITS


def worst(verdicts: list[Verdict | None]) -> Verdict | None:
    """The worst of several verdicts (oom > tight > fits); None when none was computed."""
    known = [v for v in verdicts if v is not None]
    for level in (Verdict.OOM, Verdict.TIGHT, Verdict.FITS):
        if level in known:
            return level
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseUsage:
    """What one device (or node) holds in one phase."""

    phase: Phase
    """The phase."""
    terms: tuple[Term, ...]
    """Terms resident at this phase's peak (persistent and the phase's worst transient set)."""
    transient_bytes: int | None = None
    """Activation + temp bytes of the worst moment of the busiest role's own computation in this phase,
    before DeepSpeed's gradient buffers are placed at their moments (memory/grad_timeline.py): what a
    trace's ACT + TEMP peak measures. The peak's ``terms`` can sit at a later moment with less of it.
    Not part of the JSON report; None where not computed."""

    @property
    def bytes(self) -> int:
        """Sum of the terms."""
        return sum(t.bytes for t in self.terms)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceEstimate:
    """One GPU (or ``count`` identical GPUs)."""

    blocks: tuple[GpuBlock, ...]
    """The GPUs this entry stands for, as blocks of nodes × GPUs (never one entry per GPU)."""
    roles: tuple[str, ...]
    """Roles placed on the GPU."""
    phases: tuple[PhaseUsage, ...]
    """Usage per phase, in iteration order."""
    capacity_bytes: int | None
    """Usable GPU memory, when a GPU was given."""
    reserved_bytes: int
    """Peak including the caching allocator's rounding and reserve (compare with capacity)."""
    preallocated_bytes: int = 0
    """Bytes of the reserved peak that a vLLM engine preallocates as its configured share of the GPU (its
    ``rollout.*`` terms at the peak phase; 0 without an engine): see ``verdict_for``."""
    startup_error: str | None = None
    """Why the vLLM engine on this GPU cannot start (vLLM's own message), else None."""

    @property
    def id(self) -> str:
        """``node0/gpu0``: the first of the GPUs."""
        return self.blocks[0].first_id

    @property
    def ids(self) -> str:
        """Every GPU this entry stands for, as ranges: ``node[0-511]/gpu[0-7]`` (see jobs/ids.py)."""
        return ranges_text(self.blocks)

    @property
    def count(self) -> int:
        """Identical GPUs this entry stands for."""
        return sum(b.count for b in self.blocks)

    @property
    def peak(self) -> PhaseUsage:
        """The phase with the most memory (first one on ties)."""
        return max(self.phases, key=lambda p: p.bytes)

    @property
    def peak_bytes(self) -> int:
        """Peak over phases (allocated-equivalent plus non-PyTorch overhead)."""
        return self.peak.bytes

    @property
    def verdict(self) -> Verdict | None:
        """Verdict of the reserved peak against capacity; oom when a vLLM engine here cannot start or cannot
        hold one ``max_model_len`` request in its KV cache."""
        if self.capacity_bytes is not None and self.startup_error is not None:
            return Verdict.OOM
        return verdict_for(self.reserved_bytes, self.capacity_bytes, preallocated_bytes=self.preallocated_bytes)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostEstimate:
    """Host RAM of one node (or ``count`` identical nodes)."""

    nodes: tuple[NodeRange, ...]
    """The nodes this entry stands for (never one entry per node)."""
    phases: tuple[PhaseUsage, ...]
    """Usage per phase (of each node)."""
    capacity_bytes: int | None
    """Host RAM of the node, when given."""
    limit: HostLimit | None = None
    """What the verdict is judged against (Ray's kill threshold for Ray runs); the physical RAM when None."""

    @property
    def judged_bytes(self) -> int | None:
        """The host RAM the node may use before a process is killed (None without a capacity)."""
        return self.limit.bytes if self.limit is not None else self.capacity_bytes

    @property
    def id(self) -> str:
        """``node0``: the first of the nodes."""
        return f"node{self.nodes[0].first}"

    @property
    def ids(self) -> str:
        """Every node this entry stands for, as ranges: ``node[0-511]``."""
        return ranges_text(self.nodes)

    @property
    def count(self) -> int:
        """Identical nodes this entry stands for."""
        return sum(r.count for r in self.nodes)

    @property
    def peak(self) -> PhaseUsage:
        """The phase with the most host memory."""
        return max(self.phases, key=lambda p: p.bytes)

    @property
    def peak_bytes(self) -> int:
        """Peak host RAM."""
        return self.peak.bytes

    @property
    def verdict(self) -> Verdict | None:
        """Verdict against ``judged_bytes`` (Ray's threshold or the node's RAM)."""
        return verdict_for(self.peak_bytes, self.judged_bytes)

    @property
    def training_verdict(self) -> Verdict | None:
        """Verdict of the phases before any save (loading and the training iteration)."""
        return verdict_for(max((p.bytes for p in self.phases if p.phase not in SAVE_PHASES), default=0),
                           self.judged_bytes)

    @property
    def failing_save(self) -> PhaseUsage | None:
        """The first save phase (in the timeline's order) whose verdict is worse than training's: the run holds
        while it trains and is killed when it saves. None when no save is worse."""
        if self.judged_bytes is None:
            return None
        before = self.training_verdict
        return next((p for p in self.phases if p.phase in SAVE_PHASES
                     and worst([verdict_for(p.bytes, self.judged_bytes), before]) != before), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementRisk:
    """Host RAM under the placements Ray may choose for the same command (issue 13: the estimate's own
    placement is one assumption; Ray's PACK policy may put the groups elsewhere)."""

    assumed: tuple[HostEstimate, ...]
    """The nodes of the estimated placement (``Estimate.hosts``: identical nodes grouped, Ray's head apart)."""
    assumed_roles: tuple[dict[str, int], ...]
    """Ranks per role on each node of ``assumed``."""
    worst: tuple[HostEstimate, ...]
    """The nodes of the Ray placement with the largest single-node host peak (identical nodes grouped;
    numbered in the order of the placement's node kinds, node 0 the head)."""
    worst_roles: tuple[dict[str, int], ...]
    """Ranks per role on each node of ``worst``."""
    num_placements: int
    """How many distinct placements Ray may choose."""

    @property
    def worst_node(self) -> int:
        """Index (in ``worst``) of the node entry with the largest host peak in the worst placement."""
        return max(range(len(self.worst)), key=lambda i: self.worst[i].peak_bytes)

    @property
    def verdict(self) -> Verdict | None:
        """The worst node verdict of the worst placement."""
        return worst([h.verdict for h in self.worst])


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInfo:
    """Parameter counts of one role's model."""

    name: str
    """Model name."""
    num_params: int
    """All parameters."""
    trainable_params: int
    """Parameters with gradients (0 for frozen models; the adapter for LoRA)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate:
    """The whole answer for one job."""

    models: dict[str, ModelInfo]
    """Role → model."""
    devices: tuple[DeviceEstimate, ...]
    """GPUs, identical ones grouped."""
    hosts: tuple[HostEstimate, ...]
    """Nodes, identical ones grouped."""
    command: str
    """The launch command the estimate is for."""
    notes: tuple[str, ...] = ()
    """Assumptions and warnings worth showing (ignored flags, version defaults)."""
    placement_risk: PlacementRisk | None = None
    """RL runs: host RAM under the worst placement Ray may choose (None for single-model runs)."""

    @property
    def num_gpus(self) -> int:
        """GPUs in the job."""
        return sum(d.count for d in self.devices)

    @property
    def num_nodes(self) -> int:
        """Nodes in the job."""
        return sum(h.count for h in self.hosts)

    @property
    def verdict(self) -> Verdict | None:
        """Worst verdict over GPUs and nodes."""
        return worst([d.verdict for d in self.devices] + [h.verdict for h in self.hosts])
