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
each tie is a placement Ray may choose. This module enumerates them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from memplan.jobs.job import RoleName, Slot

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

    def bundle_roles(self, index: int) -> tuple[RoleName, ...]:
        """The roles on bundle ``index``."""
        return tuple(r for r in self.roles if index < self.ranks[r])


_Node = tuple[int, tuple[tuple[RoleName, ...], ...]]   # (free GPUs, roles of each used GPU)


def ray_placements(groups: Sequence[Group], *, node_gpus: int, num_nodes: int) -> tuple[tuple[Slot, ...], ...]:
    """Every distinct placement Ray's PACK policy may produce for ``groups`` created in order on
    ``num_nodes`` identical nodes of ``node_gpus`` GPUs (nodes that differ only by index counted once).

    Assumes: nodes of equal CPU counts, so the score orders nodes by free GPUs; no other work on the cluster.
    Checked by: tests/frameworks/test_ray_placement.py
    """
    states: list[list[_Node]] = [[(node_gpus, ()) for _ in range(num_nodes)]]
    for group in groups:
        next_states: dict[tuple, list[_Node]] = {}
        for state in states:
            for placed in _place(group, state):
                next_states.setdefault(_canonical(placed), placed)
        states = list(next_states.values())[:MAX_PLACEMENTS]
    return tuple(_slots(state) for state in states)


def _place(group: Group, state: list[_Node]) -> list[list[_Node]]:
    """Each way one group may be packed: the emptiest node first (any of the tied ones), filled, then on."""
    results: list[list[_Node]] = []

    def fill(nodes: list[_Node], next_bundle: int, used: frozenset[int]) -> None:
        if next_bundle == group.bundles:
            results.append(nodes)
            return
        candidates = [i for i, (free, _) in enumerate(nodes) if free > 0 and i not in used]
        if not candidates:
            return  # the group would wait for resources: not a placement
        best = max(nodes[i][0] for i in candidates)
        seen: set[_Node] = set()
        for i in candidates:
            if nodes[i][0] != best or nodes[i] in seen:
                continue
            seen.add(nodes[i])
            take = min(best, group.bundles - next_bundle)
            content = nodes[i][1] + tuple(group.bundle_roles(b) for b in range(next_bundle, next_bundle + take))
            updated = list(nodes)
            updated[i] = (best - take, content)
            fill(updated, next_bundle + take, used | {i})

    fill(list(state), 0, frozenset())
    return results


def _canonical(state: list[_Node]) -> tuple:
    return tuple(sorted((free, tuple(sorted(content))) for free, content in state))


def _slots(state: list[_Node]) -> tuple[Slot, ...]:
    return tuple(Slot(node=n, gpu=g, roles=roles) for n, (_, content) in enumerate(state)
                 for g, roles in enumerate(content))
