"""Host-side facts of a CUDA training process, measured on a GPU machine (issue 13: host RAM as the node sees it).

Prints and writes one JSON record (``OUT/host-probe-<run-id>.json``) with:

* ``rss``: the process's resident set (``/proc/self/status`` VmRSS) after each step of the import set a
  trainer rank holds: Python, ``import torch``, CUDA initialised (first tensor on the device), cuBLAS
  loaded (first matmul), ``import transformers``, ``import deepspeed``; and the CUDA context's device
  memory (``mem_get_info`` used) at each step.
* ``pinned``: for pinned host allocations of chosen sizes, what PyTorch's caching host allocator reserves
  (``torch.cuda.host_memory_stats()`` when this torch has it, else the RSS growth): checks the
  power-of-two rounding of ``CachingHostAllocator`` for ``tensor.pin_memory()`` (DeepSpeed's path) and
  ``torch.empty(..., pin_memory=True)``.

Run on the device machine as one call; needs only torch (transformers/deepspeed steps are skipped when
absent). ``--dry-run`` runs the import steps on the CPU and skips the CUDA ones.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path

GIB = 1 << 30
MIB = 1 << 20

#: Pinned request sizes: just above and below powers of two, where rounding shows most.
PINNED_SIZES = (GIB + MIB, 3 * GIB, 4 * GIB, 5 * GIB + 7 * MIB, 9 * GIB)


def rss_bytes() -> int:
    """Resident set of this process (VmRSS, kB in /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return -1


def device_used(torch) -> int | None:  # type: ignore[no-untyped-def]
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    free, total = torch.cuda.mem_get_info()
    return int(total - free)


def import_steps(record: dict, cuda: bool) -> object:
    steps = record["rss"]
    steps.append({"step": "python", "rss": rss_bytes()})
    import torch

    steps.append({"step": "import torch", "rss": rss_bytes()})
    if cuda:
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
        steps.append({"step": "cuda init (first tensor)", "rss": rss_bytes(), "device_used": device_used(torch)})
        a = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
        (a @ a).sum().item()
        steps.append({"step": "cublas (first bf16 matmul)", "rss": rss_bytes(), "device_used": device_used(torch)})
    for name in ("transformers", "deepspeed"):
        try:
            __import__(name)
        except Exception as exc:  # noqa: BLE001 - record why a step is missing, go on
            steps.append({"step": f"import {name}", "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        steps.append({"step": f"import {name}", "rss": rss_bytes(), "device_used": device_used(torch) if cuda else None})
    return torch


def host_stats(torch) -> dict | None:  # type: ignore[no-untyped-def]
    stats = getattr(torch.cuda, "host_memory_stats", None)
    if stats is None:
        return None
    try:
        return {k: int(v) for k, v in stats().items() if isinstance(v, (int, float))}
    except Exception:  # noqa: BLE001
        return None


def pinned_steps(record: dict, torch) -> None:  # type: ignore[no-untyped-def]
    for how in ("tensor.pin_memory()", "torch.empty(pin_memory=True)"):
        for size in PINNED_SIZES:
            gc.collect()
            before_rss, before = rss_bytes(), host_stats(torch)
            if how == "tensor.pin_memory()":
                pageable = torch.empty(size, dtype=torch.uint8)
                pageable.fill_(1)
                pinned = pageable.pin_memory()
                del pageable
            else:
                pinned = torch.empty(size, dtype=torch.uint8, pin_memory=True)
            pinned.fill_(1)
            after_rss, after = rss_bytes(), host_stats(torch)
            entry = {"how": how, "requested": size, "rss_growth": after_rss - before_rss,
                     "is_pinned": bool(pinned.is_pinned())}
            if before is not None and after is not None:
                entry["host_stats_growth"] = {k: after[k] - before.get(k, 0) for k in after
                                              if after[k] != before.get(k, 0)}
            record["pinned"].append(entry)
            print(json.dumps(entry), flush=True)
            del pinned
            gc.collect()
            if hasattr(torch._C, "_host_emptyCache"):
                torch._C._host_emptyCache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for the record")
    parser.add_argument("--dry-run", action="store_true", help="CPU only: import steps, no CUDA")
    args = parser.parse_args()
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    record: dict = {"schema": "memplan.host-probe/1", "run_id": run_id, "python": platform.python_version(),
                    "rss": [], "pinned": []}
    cuda = not args.dry_run
    torch = import_steps(record, cuda)
    record["torch"] = torch.__version__  # type: ignore[attr-defined]
    if cuda and torch.cuda.is_available():  # type: ignore[attr-defined]
        record["device"] = torch.cuda.get_device_name(0)  # type: ignore[attr-defined]
        record["cuda"] = torch.version.cuda  # type: ignore[attr-defined]
        pinned_steps(record, torch)
    for step in record["rss"]:
        print(json.dumps(step), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"host-probe-{run_id}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
