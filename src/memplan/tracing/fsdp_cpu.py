"""The fsdp-cpu engine: ``--gpus`` ranks of real FSDP2 on the CPU with gloo, as verl 0.9.1 wraps a model.

Launches ``python -m torch.distributed.run --standalone --nproc_per_node N -m memplan.tracing.fsdp_worker``
(:func:`memplan.tracing.deepspeed_cpu.launch_ranks`), gathers every rank's JSON and returns the reference
record (``validation/fsdp_cpu/*.json``): per rank, per iteration and phase, the bytes of each FSDP2 category
at the phase's total peak (``iterations``) and at its transient peak (``transient_iterations``: everything
but the persistent states sharded_param, buffer, sharded_grad, optimizer), plus the rank's states counted
from its tensors (``model_states``).
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memplan.errors import ConfigError
from memplan.tracing.deepspeed_cpu import launch_ranks
from memplan.tracing.fsdp_request import FsdpTraceRequest, check_fsdp_request

#: Largest model (parameters) the engine accepts: fp32 parameters, gradients and AdamW states are real
#: tensors, once per rank, on this machine.
MAX_PARAMS = 200_000_000

#: Version of the record layout.
FSDP_RECORD_SCHEMA = 1

#: How the engine differs from verl on GPUs.
FSDP_NOTES = (
    "real FSDP2 (torch.distributed.fsdp.fully_shard) on a gloo CPU mesh, one process per rank; verl 0.9.1's "
    "wrapping (apply_fsdp2), mixed precision (bf16 compute, fp32 reduce), fp32 stored parameters and AdamW",
    "on the CPU a device and the host are one memory: CPUOffloadPolicy moves nothing, and verl's "
    "param/optimizer offload (offload_fsdp_model_to_cpu, offload_fsdp_optimizer) would be no-ops, so it is "
    "not traced; each rank's total is its device and host bytes together",
    "weights are randomly initialised from config.json; attention runs as sdpa (flash-attn is GPU only); "
    "log-probs and entropy are verl's torch paths (logprobs_from_logits_v2, entropy_from_logits) on the "
    "flattened logits",
    "categories are FSDPMemTracker's (torch.distributed._tools.fsdp2_mem_tracker); totals are exact",
)

#: What runs in place of the GPU code.
FSDP_EMULATED = (
    "CPUOffloadPolicy(pin_memory=False): pinning needs an accelerator",
    "torch.optim.AdamW(foreach=True) as on CUDA (verl passes no foreach; the CPU default is the for-loop)",
    "the PPO step is mirrored (no verl import): log-prob forward under no_grad, then forward, vanilla clip "
    "loss, backward, fsdp2_clip_grad_norm_ and the optimizer step",
)


def _check_size(request: FsdpTraceRequest) -> None:
    from memplan.model import load_model_spec, num_params

    count = num_params(load_model_spec(request.model))
    if count > MAX_PARAMS:
        raise ConfigError("MODEL", f"{count:,} parameters is too large for --engine fsdp-cpu (real tensors on "
                                   f"this machine; limit {MAX_PARAMS:,})")


def _rank_record(data: dict[str, Any]) -> dict[str, Any]:
    best = max(((int(it), phase, snap) for it, phases in data["iterations"].items() for phase, snap in phases.items()),
               key=lambda x: (x[2]["total"], x[0]))
    return {"rank": int(data["rank"]), "peak_bytes": int(best[2]["total"]), "peak_phase": best[1],
            "peak_iteration": best[0], "iterations": data["iterations"],
            "transient_iterations": data["transient_iterations"], "model_states": data["model_states"]}


def versions() -> dict[str, str]:
    """Python and torch versions of the run."""
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def run_fsdp_cpu(request: FsdpTraceRequest, progress: Callable[[str], None]) -> dict[str, Any]:
    """Run ``request.world_size`` ranks; the reference record without ``case`` and ``description``."""
    check_fsdp_request(request)
    _check_size(request)
    start = time.monotonic()
    progress(f"launching {request.world_size} rank(s) of FSDP2 on the CPU (gloo)")
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory(prefix="memplan-fsdp-") as tmp:
        status, tail = launch_ranks("memplan.tracing.fsdp_worker", request.as_dict(), request.world_size, Path(tmp),
                                    progress, env)
        files = [Path(tmp) / f"rank{r}.json" for r in range(request.world_size)]
        ranks = [json.loads(f.read_text(encoding="utf-8")) for f in files if f.is_file()]
    if status != 0 or len(ranks) != request.world_size:
        raise ConfigError("--engine fsdp-cpu", f"the FSDP2 run failed (exit {status}); nothing was measured. "
                                               f"Last output:\n{tail}")
    records = [_rank_record(r) for r in sorted(ranks, key=lambda r: r["rank"])]
    top = max(records, key=lambda r: r["peak_bytes"])
    return {"schema": FSDP_RECORD_SCHEMA, "framework": "verl", "engine": "fsdp-cpu", "command": request.command(),
            "config": request.as_dict(), "versions": versions(),
            "machine": {"platform": platform.platform(), "machine": platform.machine()},
            "measured": {"peak_bytes": top["peak_bytes"], "peak_phase": top["peak_phase"], "peak_rank": top["rank"],
                         "ranks": records},
            "emulated": list(FSDP_EMULATED), "notes": list(FSDP_NOTES),
            "wall_seconds": round(time.monotonic() - start, 1)}
