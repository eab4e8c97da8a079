"""Speed of ``memplan plan`` (issue 6: 70B PPO across four GPU types < 2 s, one type < 1 s; issue 14: verl
Qwen2.5-7B GRPO on h100-80g < 1 s).

Each run is a fresh ``plan()`` / ``plan_gpus()`` call (new search space and caches); the process's
model-spec caches are warm after the first (cold) run, which is reported separately. Prints median
seconds, candidates evaluated and candidates per second; a benchmark, not a test.

    python benchmarks/plan_speed.py [--runs 7] [--check]

``--check`` exits 1 when a median misses its target.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from memplan.planner import plan_gpus

MODEL, METHOD = "llama-2-70b", "ppo"
FLAGS = ["--reward_pretrain", "llama-2-70b"]
#: (label, GPU types, target median seconds, model, method, framework)
CASES = (
    ("70B PPO, a800-80g", ["a800-80g"], 1.0, MODEL, METHOD, "openrlhf"),
    ("70B PPO, 4 GPU types", ["a100-80g", "h100-80g", "h20-96g", "rtx4090-24g"], 2.0, MODEL, METHOD, "openrlhf"),
    ("verl 7B GRPO, h100-80g", ["h100-80g"], 1.0, "qwen2.5-7b", "grpo", "verl"),
)


def timed(gpus: list[str], model: str = MODEL, method: str = METHOD, framework: str = "openrlhf") -> tuple[float, int]:
    """Seconds and candidates evaluated of one plan over ``gpus``."""
    start = time.perf_counter()
    results = plan_gpus(model, method, gpus=gpus, flags=FLAGS if framework == "openrlhf" else [], framework=framework)
    return time.perf_counter() - start, sum(r.candidates_evaluated for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--check", action="store_true", help="exit 1 when a median misses its target")
    args = parser.parse_args()
    cold, _ = timed(["a800-80g"])
    print(f"first (cold) single-type plan: {cold:.3f} s")
    print(f"{'case':<24} {'median s':>9} {'min s':>7} {'max s':>7} {'candidates':>10} {'cand/s':>8} {'target s':>9}")
    missed = False
    for label, gpus, target, model, method, framework in CASES:
        samples = [timed(gpus, model, method, framework) for _ in range(args.runs)]
        times = [t for t, _ in samples]
        median, candidates = statistics.median(times), samples[0][1]
        missed |= median >= target
        print(f"{label:<24} {median:>9.3f} {min(times):>7.3f} {max(times):>7.3f} {candidates:>10} "
              f"{candidates / median:>8.1f} {target:>9.1f}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
