"""The deepspeed-cpu engine: ``--gpus`` ranks of real DeepSpeed on the CPU accelerator (gloo).

Launches ``python -m torch.distributed.run --standalone --nproc_per_node N -m memplan.tracing.ds_worker``,
forwards rank 0's progress, and gathers every rank's JSON (reference/tracing.md §2). Ctrl-C stops the
whole process group.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memplan.errors import ConfigError
from memplan.tracing.config import TraceRequest
from memplan.tracing.result import RankMeasurement, TraceResult

#: Largest model (parameters) the engine accepts: real fp32 masters + Adam states + activations must fit in
#: this machine's RAM once per rank (2-4 ranks on a 24 GiB, 2-core machine).
MAX_PARAMS = 600_000_000

#: How the deepspeed-cpu engine differs from OpenRLHF on GPUs.
DS_NOTES = (
    "real DeepSpeed on the CPU accelerator with gloo: ZeRO partitioning, buckets, fp32 masters and offload are "
    "DeepSpeed's own; every rank is one process on this machine",
    "on the CPU accelerator offloaded optimizer state lives in the same memory as everything else: with "
    "--adam_offload each rank's total is device + host bytes together",
    "weights are randomly initialised from config.json (no checkpoint load); log-probs via OpenRLHF's torch "
    "fallback; flash_attention_2 runs as sdpa",
    "category attribution: parameters (and ZeRO-3 partitions) param, the wrapped optimizer's fp32 params and "
    "states optimizer, DeepSpeed optimizer attributes named *grad* grad, other DeepSpeed buffers by MemTracker's "
    "rule (activation outside backward, temp inside); totals are exact",
    "gradient accumulation 1: every iteration ends with an optimizer step",
)

#: What runs in place of the GPU code.
DS_EMULATED = ("torch.optim.AdamW(fused=True) stands in for DeepSpeed's FusedAdam (CUDA only) when the optimizer "
               "is not offloaded; with --adam_offload the real DeepSpeedCPUAdam runs",)


#: A worker's exception line as torch.distributed.run prefixes it (``[rank0]: ValueError: ...``).
_ERROR_LINE = re.compile(r"^\[rank\d+\]: \w+(Error|Exception)\b")


def _check_size(request: TraceRequest) -> None:
    from memplan.model import load_model_spec, num_params

    count = num_params(load_model_spec(request.model))
    if count > MAX_PARAMS:
        raise ConfigError("MODEL", f"{count:,} parameters is too large for --engine deepspeed-cpu (real tensors on "
                                   f"this machine; limit {MAX_PARAMS:,}); use --engine fake")


def launch_ranks(module: str, payload: dict[str, Any], num_ranks: int, out_dir: Path,
                 progress: Callable[[str], None], env: dict[str, str]) -> tuple[int, str]:
    """Run ``python -m torch.distributed.run --nproc_per_node num_ranks -m module PAYLOAD OUT_DIR`` in its own
    process group; forward its ``PROGRESS`` lines; return (exit status, the workers' error lines or the tail)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_ranks}",
           "-m", module, json.dumps(payload), str(out_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, **env), start_new_session=True)
    tail: deque[str] = deque(maxlen=20)
    errors: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("PROGRESS "):
                progress(f"{num_ranks} rank(s): {line[len('PROGRESS '):]}")
            else:
                tail.append(line)
                if _ERROR_LINE.search(line) and line not in errors:
                    errors.append(line)
        return proc.wait(), "\n".join(errors[:4] or tail)
    except BaseException:  # Ctrl-C, or a test's time limit: no rank outlives its launcher
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        raise


def _launch(request: TraceRequest, out_dir: Path, progress: Callable[[str], None]) -> tuple[int, str]:
    env = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore"}
    return launch_ranks("memplan.tracing.ds_worker", request.as_dict(), request.gpus, out_dir, progress, env)


def run_deepspeed_cpu(request: TraceRequest, progress: Callable[[str], None], module_depth: int = 0) -> TraceResult:
    """Run ``request.gpus`` ranks and collect their measurements."""
    del module_depth  # per-module tables are a fake-engine feature
    _check_size(request)
    start = time.monotonic()
    progress(f"launching {request.gpus} rank(s) of deepspeed on the CPU accelerator")
    with tempfile.TemporaryDirectory(prefix="memplan-trace-") as tmp:
        status, tail = _launch(request, Path(tmp), progress)
        ranks = [json.loads((Path(tmp) / f"rank{r}.json").read_text(encoding="utf-8"))
                 for r in range(request.gpus) if (Path(tmp) / f"rank{r}.json").is_file()]
    if status != 0 or len(ranks) != request.gpus:
        raise ConfigError("--engine deepspeed-cpu", f"the DeepSpeed run failed (exit {status}); nothing was "
                                                    f"measured. Last output:\n{tail}")
    measurements = tuple(_rank(r) for r in sorted(ranks, key=lambda r: r["rank"]))
    models = _models(request, ranks[0]["model_states"])
    return TraceResult(request=request, ranks=measurements, models=models, notes=DS_NOTES, emulated=DS_EMULATED,
                       wall_seconds=time.monotonic() - start)


def _rank(data: dict[str, Any]) -> RankMeasurement:
    iterations = {int(k): v for k, v in data["iterations"].items()}
    states = dict(data["model_states"])
    states["setup_peak_bytes"] = int(data["setup_peak"].get("total", 0))
    return RankMeasurement(rank=int(data["rank"]), iterations=iterations, model_states=states, modules=())


def _models(request: TraceRequest, states: dict[str, int]) -> dict[str, dict[str, Any]]:
    role = "reward" if request.method.value == "rm" else "policy"
    out: dict[str, dict[str, Any]] = {role: {"name": request.model, "num_params": states["policy_num_params"],
                                             "trainable_params": states["trainable_params"]}}
    if request.second_model_role and request.ref_pretrain:
        out[request.second_model_role] = {"name": request.ref_pretrain, "num_params": states["frozen_num_params"],
                                          "trainable_params": 0}
    return out
