"""Start-up time of the CLI: median wall time of ``memplan --help`` and ``memplan models`` over
repeated runs (issue: both under 0.3 s). Prints the figures; it is a benchmark, not a test.

    python benchmarks/startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = (["--help"], ["models"], ["gpus"])


def time_command(args: list[str], runs: int) -> list[float]:
    """Wall times of ``python -m memplan ARGS`` over ``runs`` runs (after one warm-up run)."""
    cmd = [sys.executable, "-m", "memplan", *args]
    subprocess.run(cmd, capture_output=True, check=False)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    print(f"{'command':<22} {'median s':>9} {'min s':>7} {'max s':>7}")
    for command in COMMANDS:
        times = time_command(command, args.runs)
        label = "memplan " + " ".join(command)
        print(f"{label:<22} {statistics.median(times):>9.3f} {min(times):>7.3f} {max(times):>7.3f}")


if __name__ == "__main__":
    main()
