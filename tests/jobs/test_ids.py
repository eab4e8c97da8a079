"""GPU and node id ranges (jobs/ids.py): what a reader expands them to, checked against a plain
GPU-by-GPU enumeration written out here (the estimator itself never enumerates GPUs)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from memplan.jobs.ids import expand, node_groups, ranges_text, run_blocks, whole_nodes
from memplan.jobs.job import RoleName, SlotRun


def test_whole_nodes_text() -> None:
    block = whole_nodes(512, 8)
    assert str(block) == "node[0-511]/gpu[0-7]" and block.count == 4096
    assert str(block.nodes) == "node[0-511]"
    assert str(whole_nodes(1, 1)) == "node0/gpu0"


def test_a_run_from_the_middle_of_a_node_is_three_blocks() -> None:
    # GPUs 4..27 on nodes of 8: the rest of node 0, nodes 1 and 2, the first four GPUs of node 3.
    assert ranges_text(run_blocks(4, 24, 8)) == "node0/gpu[4-7],node[1-2]/gpu[0-7],node3/gpu[0-3]"
    assert ranges_text(run_blocks(7, 2, 8)) == "node0/gpu7,node1/gpu0"


@settings(max_examples=200, deadline=None)
@given(first=st.integers(0, 300), count=st.integers(1, 300), node_gpus=st.integers(1, 16))
def test_blocks_expand_to_the_run(first: int, count: int, node_gpus: int) -> None:
    by_hand = [f"node{i // node_gpus}/gpu{i % node_gpus}" for i in range(first, first + count)]
    blocks = run_blocks(first, count, node_gpus)
    assert list(expand(ranges_text(blocks))) == by_hand
    assert sum(b.count for b in blocks) == count and len(blocks) <= 3


ROLES = [RoleName.ROLLOUT, RoleName.ACTOR, RoleName.REF, RoleName.CRITIC, RoleName.REWARD]


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5), node_gpus=st.integers(1, 16))
def test_node_groups_match_counting_gpu_by_gpu(sizes: list[int], node_gpus: int) -> None:
    runs, start = [], 0
    for role, size in zip(ROLES, sizes):
        runs.append(SlotRun(first=start, count=size, roles=(role,)))
        start += size
    per_node: dict[int, Counter] = {}
    for run in runs:
        for index in range(run.first, run.first + run.count):
            per_node.setdefault(index // node_gpus, Counter()).update(run.roles)
    groups = node_groups(runs, node_gpus)
    seen = []
    for ranks, nodes in groups:
        for node_id in expand(ranges_text(nodes)):
            node = int(node_id[len("node"):])
            assert Counter(dict(ranks)) == per_node[node]
            seen.append(node)
    assert sorted(seen) == sorted(per_node)
    assert len(groups) == len({tuple(sorted(c.items())) for c in per_node.values()})
