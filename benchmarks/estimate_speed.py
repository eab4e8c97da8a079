"""Speed of one estimate: in-process (issue: < 5 ms) and ``memplan check -- ...`` end to end
(issue: < 0.5 s). Prints medians; a benchmark, not a test.

    python benchmarks/estimate_speed.py [--runs 50]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from memplan.api import estimate_run, resolve_capacity, resolve_command

CASES = {
    "llama-3-8b sft z2 8gpu": "deepspeed --num_gpus 8 --module openrlhf.cli.train_sft --pretrain llama-3-8b "
                              "--zero_stage 2 --gradient_checkpointing --max_len 4096",
    "llama-2-70b dpo z3 16gpu lora": "deepspeed --num_nodes 2 --num_gpus 8 --module openrlhf.cli.train_dpo "
                                     "--pretrain llama-2-70b --zero_stage 3 --lora_rank 64 --adam_offload",
    "mixtral-8x7b rm z3": "deepspeed --module openrlhf.cli.train_rm --pretrain mixtral-8x7b --zero_stage 3",
}


def timings(command: str, runs: int) -> list[float]:
    """Seconds of each of ``runs`` resolve + estimate calls, after a warm-up call (model specs cached)."""
    gpu, host = resolve_capacity("a100-80g", "1TiB")
    estimate_run(resolve_command(command), gpu=gpu, host_ram_bytes=host)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        estimate_run(resolve_command(command), gpu=gpu, host_ram_bytes=host)
        times.append(time.perf_counter() - start)
    return times


def in_process(command: str, runs: int) -> float:
    """Median seconds of resolve + estimate, after a warm-up call (model specs cached)."""
    return statistics.median(timings(command, runs))


def end_to_end(command: str, runs: int) -> float:
    """Median seconds of ``python -m memplan check --gpu a100-80g --json -- COMMAND``."""
    argv = [sys.executable, "-m", "memplan", "check", "--gpu", "a100-80g", "--json", "--", command]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    print(f"{'case':<32} {'in-process ms':>14} {'check end-to-end s':>19}")
    for name, command in CASES.items():
        ms = in_process(command, args.runs) * 1000
        e2e = end_to_end(command, max(args.runs // 10, 3))
        print(f"{name:<32} {ms:>14.2f} {e2e:>19.3f}")


if __name__ == "__main__":
    main()
