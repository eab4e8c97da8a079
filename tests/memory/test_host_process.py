"""Process sizes against the records they come from (validation/published/host_process/)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from memplan.memory import host_process

RECORDS = Path(__file__).resolve().parents[2] / "validation" / "published" / "host_process"
KB = 1024


def _record(name: str) -> dict:
    return tomllib.loads((RECORDS / f"{name}.toml").read_text())


PROBE = Path(__file__).resolve().parents[2] / "validation" / "measured_host" / "host-probe-20261204T155455Z.json"


def test_process_terms_match_the_records() -> None:
    """The constants are read off their records (consistency, not validation: the records calibrate them)."""
    measured = _record("measured-cpu-build")
    imports, daemons = measured["import_rss_kb"], measured["ray_daemons_pss_kb"]
    rss = {s["step"]: s["rss"] for s in json.loads(PROBE.read_text())["rss"]}
    trainer = {t.path: t.bytes for t in host_process.gpu_process(role="actor", under_ray=False)}
    cuda_steps = rss["cublas (first bf16 matmul)"] - rss["import torch"]
    peft = (imports["torch_deepspeed_transformers_peft"] - imports["torch_deepspeed_transformers"]) * KB
    assert trainer == {"actor.runtime.imports": rss["import deepspeed"] - cuda_steps + peft,
                       "actor.runtime.cuda_context": cuda_steps}
    ray_rank = {t.path: t.bytes for t in host_process.gpu_process(role="actor", under_ray=True)}
    assert ray_rank["actor.runtime.imports"] - trainer["actor.runtime.imports"] == (
        imports["ray"] - imports["python"]) * KB
    every_node = ("raylet", "dashboard_agent", "runtime_env_agent", "log_monitor")
    head_only = ("gcs_server", "dashboard", "dashboard_modules", "autoscaler_monitor", "client_server")
    worker = {t.path: t.bytes for t in host_process.ray_node(head=False)}
    assert worker == {"ray.daemons": sum(daemons[d] for d in every_node) * KB}
    head = {t.path: t.bytes for t in host_process.ray_node(head=True)}
    assert head["ray.head_daemons"] == sum(daemons[d] for d in head_only) * KB
    assert "ray.driver" in head


def test_gpu_process_within_published_bounds() -> None:
    """A trainer rank with CUDA up holds less than the older published figures and more than a CPU process.

    pytorch/pytorch#113326 (torch 2.2 + CUDA 11.8): 2,056,600 kB maximum RSS once CUDA was used; #106511:
    +1,203.5 MiB at the first CUDA call. The H200 measurement (torch 2.11 + CUDA 13.0, lazy loading) is
    below both, and above the CPU build's imports alone (measured-cpu-build: 383,856 kB with peft).
    """
    rank = sum(t.bytes for t in host_process.gpu_process(role="actor", under_ray=False))
    assert 383_856 * KB < rank < 2_056_600 * KB
    assert host_process.CUDA_CONTEXT_HOST_BYTES < 1203.5 * 2**20
