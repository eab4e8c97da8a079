"""How memplan scales with what it is given (issue 11, items 6 and 8). A benchmark, not a test.

Prints, with the issue's target next to each figure:

- the estimate of a Llama-2-7B-shaped model at 32 and 512 layers, 16 GPUs, ZeRO-2 and ZeRO-3,
  in-process (median ms; target: 512 layers < 5 ms);
- ``memplan estimate llama-2-7b --method sft --gpus N --train_batch_size 8N --json`` end to end for N = 64 and 4096
  (seconds, bytes of JSON, device and host entries; target < 1 s, and the size independent of N);
- a plan whose minimum needs 1,024 GPUs, end to end (target < 1 s);
- ``memplan check -`` on 1 MiB of text: one token, and a script of many lines (target < 1 s).

    python benchmarks/scale_speed.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from estimate_speed import timings  # benchmarks/ is the script's directory
from memplan.model.presets import find_preset

ONE_MIB = 1 << 20
GPUS = 16
LAYERS = (32, 512)
ZERO_STAGES = (2, 3)
E2E_GPUS = (64, 4096)
#: A plan whose minimum is 1,024 GPUs (64 nodes of 16): Llama-3.1-405B SFT on A100-40GB without CPU Adam.
PLAN_1024 = ["llama-3.1-405b", "--method", "sft", "--gpu", "a100-40g", "--gpus-per-node", "16", "--max-gpus", "1024",
             "--keep", "adam_offload=false", "--train_batch_size", "1024"]


def layered_config(num_layers: int, directory: Path) -> Path:
    """Llama-2-7B's config.json with ``num_hidden_layers`` replaced."""
    preset = find_preset("llama-2-7b")
    assert preset is not None
    config = preset.config()
    config["num_hidden_layers"] = num_layers
    path = directory / f"llama-2-7b-{num_layers}-layers.json"
    path.write_text(json.dumps(config))
    return path


def in_process_ms(command: str, runs: int) -> tuple[float, float]:
    """Median and least milliseconds of resolve + estimate (``estimate_speed.timings``)."""
    times = timings(command, runs)
    return statistics.median(times) * 1000, min(times) * 1000


def cli(argv: list[str], stdin: str | None = None) -> tuple[str, str, int]:
    """Wall and CPU seconds (user + system: less sensitive to other work on the machine) as text,
    stdout and exit status of ``python -m memplan ARGV``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "memplan", *argv], input=stdin, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return f"{wall:6.3f} s wall, {cpu:6.3f} s CPU", done.stdout, done.returncode


def layers(runs: int) -> None:
    print(f"estimate in-process, llama-2-7b shape, {GPUS} GPUs (target: 512 layers < 5 ms)")
    with tempfile.TemporaryDirectory() as directory:
        for stage in ZERO_STAGES:
            for num_layers in LAYERS:
                config = layered_config(num_layers, Path(directory))
                command = (f"deepspeed --num_nodes {GPUS // 8} --num_gpus 8 --module openrlhf.cli.train_sft "
                           f"--pretrain {config} --zero_stage {stage} --gradient_checkpointing")
                median, least = in_process_ms(command, runs)
                print(f"  ZeRO-{stage} {num_layers:>4} layers: median {median:6.2f} ms, min {least:6.2f} ms")


def wide_estimates() -> None:
    print("estimate llama-2-7b --method sft --json, end to end (target < 1 s, size independent of the GPUs)")
    for gpus in E2E_GPUS:
        for world in (["--gpus", str(gpus)], ["--nodes", str(gpus // 8), "--gpus-per-node", "8"]):
            # DeepSpeed asserts train_batch_size = micro batch (8) x accumulation x GPUs: one micro-batch per step
            batch = ["--train_batch_size", str(8 * gpus)]
            seconds, out, code = cli(["estimate", "llama-2-7b", "--method", "sft", *world, *batch, "--json"])
            data = json.loads(out) if code == 0 else {}
            print(f"  {' '.join(world):<28}: {seconds}, exit {code}, {len(out):>8} bytes JSON, "
                  f"{len(data.get('devices', []))} device and {len(data.get('hosts', []))} host entries")


def wide_plan() -> None:
    seconds, out, code = cli(["plan", *PLAN_1024, "--json"])
    minimum = json.loads(out).get("minimum") if code == 0 else None
    gpus = minimum["summary"]["num_gpus"] if minimum else None
    print(f"plan {' '.join(PLAN_1024)}\n  {seconds}, exit {code}, minimum {gpus} GPUs, "
          f"{len(out)} bytes JSON (target < 1 s)")


def shell_text() -> None:
    launch = "deepspeed --module openrlhf.cli.train_sft --pretrain llama-2-7b"
    head = f"{launch} --save_path "
    token = head + "a" * (ONE_MIB - len(head) - 1) + "\n"
    lines, size = [], len(launch) + 1
    while size < ONE_MIB - 64:
        lines.append(f"export VAR{len(lines)}=value{len(lines)}  # comment {len(lines)}\n")
        size += len(lines[-1])
    script = "".join(lines) + launch + "\n"
    print("check - on 1 MiB of text (the most it reads), end to end (target < 1 s)")
    for name, text in (("one 1 MiB token", token), (f"{len(lines) + 1} lines", script)):
        seconds, _, code = cli(["check", "--json", "-"], stdin=text)
        print(f"  {name} ({len(text)} characters): {seconds}, exit {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    layers(args.runs)
    wide_estimates()
    wide_plan()
    shell_text()


if __name__ == "__main__":
    main()
