"""``memplan gpus [NAME_OR_SIZE]``: list the GPU catalogue, or show how one ``--gpu`` value resolves."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memplan.hardware import Gpu


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``gpus`` command."""
    parser = subparsers.add_parser(
        "gpus", help="list the GPU catalogue, or show one GPU",
        description="Without an argument: list the catalogue (driver total, vendor label, memory a process "
                    "can use, bf16). With NAME_OR_SIZE (a name such as a100-80g, an alias such as h100, or a "
                    "size such as 80GiB or 96GB): show exactly what --gpu would use.")
    parser.add_argument("gpu", nargs="?", metavar="NAME_OR_SIZE", help="catalogue name, alias, or size (80GiB)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (byte counts as integers)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List the catalogue or describe one GPU."""
    from memplan.cli import render
    from memplan.hardware import load_catalogue, resolve_gpu

    if args.gpu is None:
        gpus = load_catalogue()
        if args.json:
            render.print_json({"gpus": [gpu_to_json(g) for g in gpus]})
        else:
            _print_table(gpus, render)
        return 0
    gpu = resolve_gpu(args.gpu, location="NAME_OR_SIZE")
    if args.json:
        render.print_json({"gpu": gpu_to_json(gpu)})
    else:
        _print_one(gpu, render)
    return 0


def gpu_to_json(gpu: "Gpu") -> dict[str, Any]:
    """One GPU as plain JSON values; every size in exact bytes."""
    return {
        "name": gpu.name, "display_name": gpu.display_name, "vendor": str(gpu.vendor),
        "aliases": list(gpu.aliases),
        "vendor_label": gpu.vendor_label, "vendor_label_bytes": gpu.vendor_label_bytes,
        "memory_bytes": gpu.memory_bytes, "usable_bytes": gpu.usable_bytes, "capacity_bytes": gpu.capacity_bytes,
        "bf16": gpu.bf16, "compute_capability": gpu.compute_capability,
        "sources": [{"kind": str(s.kind), "ref": s.ref, "detail": s.detail} for s in gpu.sources],
        "notes": list(gpu.notes),
    }


def _print_table(gpus: Sequence["Gpu"], render: ModuleType) -> None:
    rows = [[g.name, g.display_name, render.gib(g.memory_bytes), g.vendor_label,
             render.gib(g.usable_bytes) if g.usable_bytes is not None else "unknown", render.yes_no(g.bf16)]
            for g in gpus]
    print(render.table(["name", "display name", "driver total", "vendor label", "usable", "bf16"], rows, "llrlrl"))
    print()
    print("driver total: nvidia-smi / rocm-smi / npu-smi memory total. usable: the runtime's total "
          "(cudaMemGetInfo), all a process can allocate.")
    print("Vendor labels say GB but mean GiB. `memplan gpus NAME` shows sources and notes; "
          "--gpu also takes a size such as 80GiB.")


def _print_one(gpu: "Gpu", render: ModuleType) -> None:
    print(f"{gpu.name}  {gpu.display_name}  [{gpu.vendor}]")
    print(f"  vendor label  {gpu.vendor_label}  -> {render.bytes_exact(gpu.vendor_label_bytes)}"
          f" ({render.gib(gpu.vendor_label_bytes)})")
    print(f"  driver total  {render.size_all_units(gpu.memory_bytes)}")
    usable = render.size_all_units(gpu.usable_bytes) if gpu.usable_bytes is not None else "unknown (not measured)"
    print(f"  usable        {usable}")
    capability = f" (compute capability {gpu.compute_capability})" if gpu.compute_capability else ""
    print(f"  bf16          {render.yes_no(gpu.bf16)}{capability}")
    if gpu.aliases:
        print(f"  aliases       {', '.join(gpu.aliases)}")
    print("  sources:")
    for source in gpu.sources:
        print(f"    - [{source.kind}] {source}")
    if gpu.notes:
        print("  notes:")
        for note in gpu.notes:
            print(f"    - {note}")
