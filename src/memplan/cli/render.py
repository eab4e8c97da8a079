"""Rendering: the only place bytes and counts become text."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from memplan.units import GB, GiB, KiB, MiB, TiB


def gib(num_bytes: int, digits: int = 2) -> str:
    """``12.55 GiB`` (binary units, labelled as such)."""
    return f"{num_bytes / GiB:.{digits}f} GiB"


def human_bytes(num_bytes: int) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1."""
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(num_bytes) >= size:
            return f"{num_bytes / size:.2f} {unit}"
    return f"{num_bytes} B"


def decimal_gb(num_bytes: int) -> str:
    """``80.00 GB`` (decimal units, labelled as such)."""
    return f"{num_bytes / GB:.2f} GB"


def count(n: int) -> str:
    """A parameter count: ``6.74B``, ``494.0M``, ``1,024``."""
    if n >= 10**9:
        return f"{n / 10**9:.2f}B"
    if n >= 10**6:
        return f"{n / 10**6:.1f}M"
    return f"{n:,}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A plain-text table; ``align`` has one ``l`` or ``r`` per column."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    align = align or "l" * len(headers)

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align, strict=True)).rstrip()

    lines = [fmt(headers), fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def print_json(obj: Any) -> None:
    """One JSON object on stdout."""
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def bytes_exact(num_bytes: int) -> str:
    """``85,899,345,920 B``: the exact byte count, with thousands separators."""
    return f"{num_bytes:,} B"


def size_all_units(num_bytes: int) -> str:
    """``80.00 GiB = 85.90 GB = 85,899,345,920 B``: binary, decimal and exact, each labelled."""
    return f"{gib(num_bytes)} = {decimal_gb(num_bytes)} = {bytes_exact(num_bytes)}"


def yes_no(flag: bool) -> str:
    """``yes`` / ``no``."""
    return "yes" if flag else "no"
