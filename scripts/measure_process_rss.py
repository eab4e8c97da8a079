"""Measure the resident memory (VmRSS) of the processes an OpenRLHF run starts, on this machine.

What it measures (each in a fresh interpreter, so one import does not count another's pages):

* ``python``: the bare interpreter;
* ``torch``, ``torch+deepspeed+transformers``, ``...+peft``: the trainer rank's import set (CPU build:
  no CUDA libraries are mapped, so the CUDA side comes from published records, see
  validation/published/host_process/);
* ``ray``: ``import ray`` (only if the interpreter given with ``--ray-python`` has it);
* with ``--ray-daemons``: ``ray start --head`` and the RSS of each daemon it starts (gcs_server, raylet,
  dashboard, agents, log monitor), then ``ray stop``.

Usage (figures recorded in validation/published/host_process/measured-cpu-build.toml):

    python scripts/measure_process_rss.py [--ray-python /tmp/rayvenv/bin/python] [--ray-daemons]

Prints one JSON object: {"name": kB VmRSS, ...} plus the versions imported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

_PROBE = """
import importlib, json, sys
versions = {}
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    versions[name] = getattr(module, "__version__", "?")
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
print(json.dumps({"rss_kb": rss, "versions": versions}))
"""

IMPORT_SETS = {
    "python": (),
    "torch": ("torch",),
    "torch+deepspeed+transformers": ("torch", "deepspeed", "transformers"),
    "torch+deepspeed+transformers+peft": ("torch", "deepspeed", "transformers", "peft"),
}
#: Processes ``ray start --head`` leaves running, matched on their command line in this order:
#: (pattern, daemon, where it runs). "every node" daemons also run on worker nodes (``ray start --address``).
RAY_DAEMONS = (
    ("gcs_server", "gcs_server", "head"),
    ("raylet/raylet", "raylet", "every node"),
    ("ray::DashboardAgent", "dashboard_agent", "every node"),
    ("ray::RuntimeEnvAgent", "runtime_env_agent", "every node"),
    ("log_monitor.py", "log_monitor", "every node"),
    ("autoscaler/_private/monitor.py", "autoscaler_monitor", "head"),
    ("ray.util.client.server", "client_server", "head"),
    ("dashboard/dashboard.py", "dashboard", "head"),
    ("ray-dashboard-", "dashboard_modules", "head"),
    ("multiprocessing.resource_tracker", "dashboard_modules", "head"),
)


def import_rss(python: str, modules: tuple[str, ...]) -> dict:
    """VmRSS of a fresh ``python`` after importing ``modules``."""
    out = subprocess.run([python, "-c", _PROBE, *modules], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) of one process in kB; Pss shares each shared page among the processes mapping it."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    pss = next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    return rss, pss


def ray_daemons_rss(ray_bin: str, settle_seconds: float) -> dict[str, dict]:
    """``ray start --head``; per daemon, where it runs and its summed RSS and PSS (kB) after
    ``settle_seconds``; then ``ray stop`` (which stops the daemons this call started)."""
    subprocess.run([ray_bin, "start", "--head", "--num-cpus", "1"], check=True, capture_output=True)
    try:
        time.sleep(settle_seconds)
        found: dict[str, dict] = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                match = next(((d, w) for pattern, d, w in RAY_DAEMONS if pattern in cmd), None)
                if match:
                    rss, pss = _memory_kb(int(proc.name))
                    entry = found.setdefault(match[0], {"runs_on": match[1], "processes": 0, "rss_kb": 0, "pss_kb": 0})
                    entry["processes"] += 1
                    entry["rss_kb"] += rss
                    entry["pss_kb"] += pss
            except (FileNotFoundError, ProcessLookupError, StopIteration, PermissionError):
                continue
        return found
    finally:
        subprocess.run([ray_bin, "stop"], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ray-python", help="an interpreter that has ray installed")
    parser.add_argument("--ray-daemons", action="store_true", help="also start a head node and measure its daemons")
    parser.add_argument("--settle-seconds", type=float, default=20.0)
    args = parser.parse_args()
    report: dict = {"rss_kb": {}, "versions": {}}
    for name, modules in IMPORT_SETS.items():
        result = import_rss(sys.executable, modules)
        report["rss_kb"][name] = result["rss_kb"]
        report["versions"].update(result["versions"])
    if args.ray_python:
        result = import_rss(args.ray_python, ("ray",))
        report["rss_kb"]["ray"] = result["rss_kb"]
        report["versions"].update(result["versions"])
        if args.ray_daemons:
            ray_bin = str(Path(args.ray_python).with_name("ray"))
            report["rss_kb"]["ray_daemons"] = ray_daemons_rss(ray_bin, args.settle_seconds)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
