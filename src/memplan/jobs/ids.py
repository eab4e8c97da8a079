"""GPU and node ids in ranges, so that nothing grows with the number of identical GPUs or nodes.

A GPU is ``node{n}/gpu{g}``, a node ``node{n}``. Identical GPUs (and nodes) are reported once with
the ranges they cover, written as in Slurm's hostlist syntax: ``node[0-511]/gpu[0-7]`` is every GPU
0..7 of every node 0..511, ``node3/gpu[4-7]`` four GPUs of node 3, ``node[0-63]`` 64 nodes; several
blocks are joined with ``,``. A reader expands them to find each GPU's role set.

Ray packs role groups GPU after GPU across nodes (``frameworks/openrlhf/rl_job.pack_slots``), so a
group is a run of consecutive GPUs in node-major order; a run is at most three blocks (the rest of its
first node, whole nodes, the start of its last node).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

R = TypeVar("R", bound=Hashable)
#: ``((role, ranks on one node), ...)``, roles in the order they first appear on the node.
RanksPerNode = tuple[tuple[R, int], ...]


class Run(Protocol[R]):
    """Consecutive GPUs in node-major order with the same roles (``jobs.job.SlotRun``)."""

    @property
    def first(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def roles(self) -> tuple[R, ...]: ...


def _span(name: str, first: int, last: int) -> str:
    return f"{name}{first}" if first == last else f"{name}[{first}-{last}]"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRange:
    """Nodes ``first`` to ``last``, both included."""

    first: int
    """First node index."""
    last: int
    """Last node index (``>= first``)."""

    @property
    def count(self) -> int:
        """Nodes in the range."""
        return self.last - self.first + 1

    def __str__(self) -> str:
        return _span("node", self.first, self.last)


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuBlock:
    """GPUs ``first_gpu`` to ``last_gpu`` on every node ``first_node`` to ``last_node`` (both included)."""

    nodes: NodeRange
    """The nodes."""
    first_gpu: int
    """First GPU index on each node."""
    last_gpu: int
    """Last GPU index on each node (``>= first_gpu``)."""

    @property
    def count(self) -> int:
        """GPUs in the block."""
        return self.nodes.count * (self.last_gpu - self.first_gpu + 1)

    @property
    def first_id(self) -> str:
        """``node{n}/gpu{g}`` of the block's first GPU."""
        return f"node{self.nodes.first}/gpu{self.first_gpu}"

    def __str__(self) -> str:
        return f"{self.nodes}/{_span('gpu', self.first_gpu, self.last_gpu)}"


def whole_nodes(num_nodes: int, gpus_per_node: int) -> GpuBlock:
    """Every GPU of nodes ``0 .. num_nodes - 1``."""
    return GpuBlock(nodes=NodeRange(first=0, last=num_nodes - 1), first_gpu=0, last_gpu=gpus_per_node - 1)


def run_blocks(first: int, count: int, node_gpus: int) -> tuple[GpuBlock, ...]:
    """The GPUs ``first .. first + count - 1`` in node-major order (``index = node × node_gpus + gpu``)
    as at most three blocks: the rest of the first node, the whole nodes, the start of the last node."""
    blocks: list[GpuBlock] = []
    end = first + count
    while first < end:
        node, gpu = divmod(first, node_gpus)
        if gpu or end - first < node_gpus:  # a part of one node
            last_gpu = min(node_gpus, gpu + end - first) - 1
            blocks.append(GpuBlock(nodes=NodeRange(first=node, last=node), first_gpu=gpu, last_gpu=last_gpu))
            first += last_gpu - gpu + 1
        else:  # whole nodes
            last_node = end // node_gpus - 1
            blocks.append(GpuBlock(nodes=NodeRange(first=node, last=last_node), first_gpu=0, last_gpu=node_gpus - 1))
            first = (last_node + 1) * node_gpus
    return tuple(blocks)


def ranges_text(ranges: tuple[GpuBlock, ...] | tuple[NodeRange, ...]) -> str:
    """``node[0-1]/gpu[0-7],node2/gpu[0-3]``: the blocks or node ranges, comma-separated."""
    return ",".join(str(r) for r in ranges)


def merge_nodes(ranges: list[NodeRange]) -> tuple[NodeRange, ...]:
    """Node ranges sorted, adjacent ones joined (``node[0-3]`` and ``node[4-7]`` → ``node[0-7]``)."""
    merged: list[NodeRange] = []
    for r in sorted(ranges, key=lambda r: r.first):
        if merged and merged[-1].last + 1 >= r.first:
            merged[-1] = NodeRange(first=merged[-1].first, last=max(merged[-1].last, r.last))
        else:
            merged.append(r)
    return tuple(merged)


def node_groups(runs: Sequence[Run[R]], node_gpus: int) -> list[tuple[RanksPerNode[R], tuple[NodeRange, ...]]]:
    """Nodes with the same ranks per role, grouped: ``[(((role, ranks on the node), ...), node ranges)]``,
    ordered by first node; roles in the order they first appear on the node.

    Without visiting every node: a node strictly inside a run holds ``node_gpus`` ranks of each of its
    roles; only a run's first and last nodes can hold other runs' GPUs too, and those are counted GPU
    range by GPU range. ``runs`` are consecutive GPU ranges in node-major order (Ray's PACK placement).
    """
    stretches: list[tuple[RanksPerNode[R], NodeRange]] = []
    edges = sorted({n for run in runs for n in (run.first // node_gpus, (run.first + run.count - 1) // node_gpus)})
    for node in edges:
        ranks: dict[R, int] = {}
        low, high = node * node_gpus, (node + 1) * node_gpus
        for run in runs:
            overlap = min(high, run.first + run.count) - max(low, run.first)
            for role in run.roles if overlap > 0 else ():
                ranks[role] = ranks.get(role, 0) + overlap
        stretches.append((tuple(ranks.items()), NodeRange(first=node, last=node)))
    for run in runs:
        first, last = run.first // node_gpus + 1, (run.first + run.count - 1) // node_gpus - 1
        if first <= last:
            stretches.append((tuple((role, node_gpus) for role in run.roles), NodeRange(first=first, last=last)))
    groups: dict[RanksPerNode[R], list[NodeRange]] = {}
    for key, nodes in sorted(stretches, key=lambda s: s[1].first):
        groups.setdefault(key, []).append(nodes)
    return [(key, merge_nodes(nodes)) for key, nodes in groups.items()]


def expand(text: str) -> Iterator[str]:
    """Every id a ranges text stands for, in order (for readers and tests; the estimator never expands)."""
    for part in text.split(","):
        node_text, _, gpu_text = part.partition("/")
        for node in _indices(node_text, "node"):
            if not gpu_text:
                yield f"node{node}"
                continue
            for gpu in _indices(gpu_text, "gpu"):
                yield f"node{node}/gpu{gpu}"


def _indices(text: str, name: str) -> range:
    body = text[len(name):]
    if body.startswith("["):
        first, _, last = body[1:-1].partition("-")
        return range(int(first), int(last) + 1)
    return range(int(body), int(body) + 1)
