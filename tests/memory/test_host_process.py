"""A GPU process's host size against published figures that did not calibrate it (the terms themselves are
read off validation/measured_host and validation/published/host_process, which a test cannot check them against)."""

from __future__ import annotations

from memplan.memory import host_process

KB = 1024


def test_gpu_process_within_published_bounds() -> None:
    """A trainer rank with CUDA up holds less than the older published figures and more than a CPU process.

    pytorch/pytorch#113326 (torch 2.2 + CUDA 11.8): 2,056,600 kB maximum RSS once CUDA was used; #106511:
    +1,203.5 MiB at the first CUDA call. The H200 measurement (torch 2.11 + CUDA 13.0, lazy loading) is
    below both, and above the CPU build's imports alone (measured-cpu-build: 383,856 kB with peft).
    """
    rank = sum(t.bytes for t in host_process.gpu_process(role="actor", under_ray=False))
    assert 383_856 * KB < rank < 2_056_600 * KB
    assert host_process.CUDA_CONTEXT_HOST_BYTES < 1203.5 * 2**20
