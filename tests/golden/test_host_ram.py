"""Host RAM per node for RL runs against public reports (validation/published/openrlhf_host/*.toml)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from memplan.api import estimate_command

HOST = Path(__file__).resolve().parents[2] / "validation" / "published" / "openrlhf_host"


def _case(name: str) -> dict:
    return tomllib.loads((HOST / f"{name}.toml").read_text())


def _role_bytes_on_node(est, node: str, role: str, allocated_later: tuple[str, ...] = ()) -> int:
    """A role's host bytes at the node's peak, without buffers allocated after the measured moment."""
    host = next(h for h in est.hosts if h.id == node)
    return sum(t.bytes for t in host.peak.terms
               if t.path.startswith(f"{role}.") and not t.path.startswith(allocated_later))


def test_row13_70b_actor_needs_840gb_per_node() -> None:
    case = _case("row13-llama2-70b-actor-adam-offload")
    est = estimate_command(" ".join(case["command"].split()), gpu=case["gpu"], version=case["version"])
    node_of_actor = next(h for h in est.hosts if any(t.path.startswith("actor.optimizer") for t in h.peak.terms))
    assert node_of_actor.peak_bytes >= case["min_node_bytes"]
    shared = estimate_command(" ".join(case["shared_command"].split()), gpu=case["gpu"], version=case["version"])
    assert max(h.peak_bytes for h in shared.hosts) >= case["shared_min_node_bytes"]


def test_row15_13b_actor_within_tolerance() -> None:
    case = _case("row15-13b-actor-process-rss")
    est = estimate_command(" ".join(case["command"].split()), gpu=case["gpu"], version=case["version"])
    predicted = _role_bytes_on_node(est, "node0", case["role"], tuple(case.get("allocated_later", ())))
    assert abs(predicted - case["measured_bytes"]) <= case["tolerance"] * case["measured_bytes"], predicted
