"""What a node's host RAM is judged against: the kernel's OOM killer, or Ray's memory monitor.

``--host-ram`` is the node's physical RAM. A single-model run (``deepspeed``/``torchrun``) dies when the
kernel runs out of memory, so its verdict is against the whole size. Under Ray (every
``train_ppo_ray`` run) the raylet kills a worker earlier, as soon as the node's used memory passes
``memory_usage_threshold`` of its total:

    used  = MemTotal − MemAvailable        (/proc/meminfo; reclaimable page cache is not "used")
            or, when a cgroup memory limit below MemTotal applies, the cgroup's usage − inactive_file
    kill  when used > int(total × memory_usage_threshold)   every memory_monitor_refresh_ms
    memory_usage_threshold = 0.95, memory_monitor_refresh_ms = 250, min_memory_free_bytes = −1 (off)

Source: ray-project/ray src/ray/common/ray_config_def.h (``RAY_CONFIG(float, memory_usage_threshold,
0.95)``, ``memory_monitor_refresh_ms, 250``, ``min_memory_free_bytes, -1``) and
src/ray/common/memory_monitor.cc (``GetLinuxMemoryBytes``: used = MemTotal − MemAvailable;
``GetCGroupMemoryBytes``; ``GetMemoryThreshold``: ``total × usage_threshold``; ``IsUsageAboveThreshold``:
``used > threshold``), read at commit 01e0cc8d; the same default is what Ray 2.55.0 (OpenRLHF v0.11.0's
``ray[default]==2.55.0``; v0.9.5 pins 2.48.0, v0.8.5 2.43.0) logs on start-up on this project's machine:
"MemoryMonitor initialized with usage threshold at 24012392448 bytes (95.000000% of system memory),
total system memory bytes: 25276203008, monitor interval: 250ms" (threshold_memory_monitor.cc:52;
validation/published/host_process/measured-cpu-build.toml).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from memplan.sources import Source, code

#: Ray's default ``memory_usage_threshold`` (``RAY_memory_usage_threshold``), a fraction of total memory.
RAY_MEMORY_USAGE_THRESHOLD = 0.95
RAY_SOURCE = code("ray-project/ray:src/ray/common/memory_monitor.cc@01e0cc8d",
                  "GetMemoryThreshold total × memory_usage_threshold (0.95, ray_config_def.h); "
                  "used = MemTotal − MemAvailable; Ray 2.55.0 logs 95% at start-up")
KERNEL_SOURCE = code("torvalds/linux:mm/oom_kill.c", "the kernel OOM killer acts when RAM is exhausted")


@dataclass(frozen=True, slots=True, kw_only=True)
class HostLimit:
    """The host RAM a node may use before a process is killed, and why."""

    bytes: int
    """The limit in bytes."""
    rule: str
    """How it follows from the node's RAM, in words (shown with the verdict)."""
    source: Source
    """Where the rule is read."""


def physical_limit(capacity_bytes: int) -> HostLimit:
    """The node's whole RAM: what the kernel's OOM killer judges a non-Ray run against."""
    return HostLimit(bytes=capacity_bytes, rule="physical RAM (kernel OOM killer)", source=KERNEL_SOURCE)


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def ray_threshold_bytes(total_bytes: int, threshold: float = RAY_MEMORY_USAGE_THRESHOLD) -> int:
    """``(int64_t)(total_memory_bytes * usage_threshold)`` with ``usage_threshold`` a C++ ``float``: the
    product is taken in single precision (the int64 converts to float), then truncated.

    Source: RAY_SOURCE (``GetMemoryThreshold``). Checked by: tests/memory/test_host_limit.py (Ray's own
    log: 25,276,203,008 B total → 24,012,392,448 B, not the 24,012,392,857 of exact arithmetic).
    """
    return int(_float32(_float32(float(total_bytes)) * _float32(threshold)))


def ray_limit(capacity_bytes: int, threshold: float = RAY_MEMORY_USAGE_THRESHOLD) -> HostLimit:
    """Ray's kill threshold on a node of ``capacity_bytes`` (``ray_threshold_bytes``).

    Source: RAY_SOURCE. Assumes: MemTotal equals ``--host-ram`` (the kernel's own reservation is not
    subtracted) and no cgroup limit below it.
    Checked by: tests/memory/test_host_limit.py::test_ray_kills_at_95_percent
    """
    return HostLimit(bytes=ray_threshold_bytes(capacity_bytes, threshold),
                     rule=f"Ray memory_usage_threshold {threshold:g} of {capacity_bytes / 1e9:.6g} GB",
                     source=RAY_SOURCE)
