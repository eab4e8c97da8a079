"""Where Ray may put OpenRLHF's placement groups: every node assignment its PACK policy can choose.

OpenRLHF (v0.8.5, v0.9.5, v0.11.0 alike) creates one placement group per model group, in this order:
the colocated actor(+ref) group, the vLLM engines' shared group, actor, reference, the colocated
critic(+reward) group, critic, reward; each of ``{"GPU": 1, "CPU": 1}`` bundles with ``strategy="PACK"``
(openrlhf/cli/train_ppo_ray.py, trainer/ray/launcher.py ``RayActorGroup._initiate_actors``,
trainer/ray/vllm_engine.py ``create_vllm_engines`` at each tag).

Ray places a PACK group with ``BundlePackSchedulingPolicy::Schedule``: the first unplaced bundle goes to
the node with the best ``LeastResourceScorer`` score, Σ_resources (available − requested) / available,
i.e. the node with the most free GPUs (and CPUs), ties broken by hash-map order (arbitrary); every further
bundle that fits is packed onto that node; the rest go to the next best node
(ray-project/ray src/ray/raylet/scheduling/policy/bundle_scheduling_policy.cc, scorer.cc).

So a later group goes to the emptiest node, not next to the group before it, and ties may go either way:
each tie is a placement Ray may choose. This module enumerates them all, over node *kinds* (free GPUs and
ranks per role) with a count each: nodes that differ only by index are one kind, and a run of whole nodes
with the same roles is placed in one step, so a 512-node group costs what a 2-node one does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from memplan.jobs.job import NodePlacement as Placement, NodeRoleRanks as NodeRanks, RoleName

#: At most this many distinct placements are enumerated (ties on large clusters are symmetric).
MAX_PLACEMENTS = 64

@dataclass(frozen=True, slots=True, kw_only=True)
class Group:
    """One placement group: its bundles (one GPU each) and the roles with a rank on bundle ``i``."""

    bundles: int
    """Bundles (GPUs)."""
    roles: tuple[RoleName, ...]
    """Roles sharing the bundles."""
    ranks: dict[RoleName, int]
    """Ranks of each role (the first ``ranks[r]`` bundles hold role ``r``)."""

    def ranks_in(self, first: int, end: int) -> NodeRanks:
        """Ranks of each role on bundles ``first .. end - 1``."""
        return tuple((r, n) for r in self.roles if (n := min(end, self.ranks[r]) - first) > 0)

    def next_cut(self, bundle: int) -> int:
        """The first bundle after ``bundle`` where the set of roles changes (or the group ends)."""
        return min([c for c in (self.ranks[r] for r in self.roles) if c > bundle] + [self.bundles])


_Kind = tuple[int, NodeRanks]          # (free GPUs, ranks per role on the node)
_State = tuple[tuple[_Kind, int], ...]  # sorted kinds with their node counts


def ray_placements(groups: Sequence[Group], *, node_gpus: int, num_nodes: int) -> tuple[Placement, ...]:
    """Every distinct placement Ray's PACK policy may produce for ``groups`` created in order on
    ``num_nodes`` identical nodes of ``node_gpus`` GPUs (nodes that differ only by index counted once).

    Assumes: nodes of equal CPU counts, so the score orders nodes by free GPUs; no other work on the cluster.
    Checked by: tests/frameworks/test_ray_placement.py
    """
    states: list[_State] = [(((node_gpus, ()), num_nodes),)]
    for group in groups:
        next_states: dict[_State, None] = {}
        for state in states:
            for placed in _place(group, dict(state), node_gpus):
                next_states.setdefault(placed)
                if len(next_states) >= MAX_PLACEMENTS:
                    break
        states = list(next_states)
    return tuple(tuple((ranks, count) for (_, ranks), count in state if ranks) for state in states)


def _add(state: dict[_Kind, int], kind: _Kind, count: int) -> None:
    state[kind] = state.get(kind, 0) + count
    if not state[kind]:
        del state[kind]


def _merge(old: NodeRanks, new: NodeRanks) -> NodeRanks:
    ranks = dict(old)
    for role, n in new:
        ranks[role] = ranks.get(role, 0) + n
    return tuple(sorted(ranks.items(), key=lambda rn: _ROLE_ORDER[rn[0]]))


#: Roles on a node are listed in RoleName's order, so that the same ranks are the same kind.
_ROLE_ORDER = {role: i for i, role in enumerate(RoleName)}


def _place(group: Group, state: dict[_Kind, int], node_gpus: int) -> list[_State]:
    """Each way one group may be packed: the emptiest node first (any of the tied kinds), filled, then on."""
    results: list[_State] = []

    def fill(nodes: dict[_Kind, int], bundle: int) -> None:
        if len(results) >= MAX_PLACEMENTS:
            return
        if bundle == group.bundles:
            results.append(tuple(sorted(nodes.items())))
            return
        best = max((free for free, _ in nodes if free > 0), default=0)
        if not best:
            return  # the group would wait for resources: not a placement
        for kind in [k for k in nodes if k[0] == best]:
            free, ranks = kind
            take = min(free, group.bundles - bundle)
            count = 1
            if free == node_gpus and take == node_gpus:  # whole empty nodes with the same roles: one step
                count = min(nodes[kind], (group.next_cut(bundle) - bundle) // node_gpus) or 1
            updated = dict(nodes)
            _add(updated, kind, -count)
            _add(updated, (free - take, _merge(ranks, group.ranks_in(bundle, bundle + take))), count)
            fill(updated, bundle + take * count)

    fill(state, 0)
    return results
