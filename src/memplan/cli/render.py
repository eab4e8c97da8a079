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


# --- estimates ---------------------------------------------------------------------------------

#: Largest terms listed per GPU in the text report (all of them with --explain).
TOP_TERMS = 6


def _verdict_text(verdict: Any, need: int, capacity: int | None) -> str:
    if capacity is None or verdict is None:
        return "no capacity given"
    if str(verdict) == "oom":
        return f"OOM (short by {gib(need - capacity)})"
    return f"{verdict} ({gib(capacity - need)} free)"


def _terms_lines(terms: Sequence[Any], limit: int | None, explain: bool) -> list[str]:
    ordered = sorted(terms, key=lambda t: -t.bytes)
    shown = ordered if limit is None else ordered[:limit]
    lines = []
    for t in shown:
        phase = "" if t.phase is None else f" [{t.phase}]"
        lines.append(f"      {t.path:<44} {gib(t.bytes):>12}  {t.category}{phase}")
        if explain:
            lines.append(f"          source: {t.source}")
    if limit is not None and len(ordered) > limit:
        rest = sum(t.bytes for t in ordered[limit:])
        lines.append(f"      {'(' + str(len(ordered) - limit) + ' more terms)':<44} {gib(rest):>12}")
    return lines


def estimate_text(est: Any, suggestions: Sequence[Any] = (), *, explain: bool = False) -> str:
    """The human report of an Estimate: GPUs by role set, host RAM per node, verdict, suggestions."""
    lines = [f"command: {est.command}", ""]
    for d in est.devices:
        peak = d.peak
        cap = f" of {gib(d.capacity_bytes)}" if d.capacity_bytes else ""
        lines.append(f"{d.count} × GPU {{{', '.join(d.roles)}}}: {gib(d.peak_bytes)} peak in {peak.phase}, "
                     f"{gib(d.reserved_bytes)} reserved{cap} → {_verdict_text(d.verdict, d.reserved_bytes, d.capacity_bytes)}")
        lines.append("    phases: " + " | ".join(f"{p.phase} {gib(p.bytes)}" for p in d.phases))
        lines.append(f"    {'every term' if explain else 'largest terms'} at {peak.phase}:")
        lines += _terms_lines(peak.terms, None if explain else TOP_TERMS, explain)
    lines.append("")
    for h in est.hosts:
        cap = f" of {gib(h.capacity_bytes)}" if h.capacity_bytes else ""
        lines.append(f"host {h.id}: {gib(h.peak_bytes)} RAM peak in {h.peak.phase}{cap} → "
                     f"{_verdict_text(h.verdict, h.peak_bytes, h.capacity_bytes)}")
        if explain:
            lines += _terms_lines(h.peak.terms, None, explain)
    total_gpu = sum(d.peak_bytes * d.count for d in est.devices)
    total_host = sum(h.peak_bytes for h in est.hosts)
    lines.append(f"cluster: {est.num_gpus} GPUs, {gib(total_gpu)} GPU memory at peak; {len(est.hosts)} node(s), "
                 f"{gib(total_host)} host RAM at peak")
    verdict = est.verdict
    lines.append(f"verdict: {verdict if verdict else 'no --gpu/--host-ram given: sizes only'}")
    if suggestions:
        lines += ["", "what would help (largest per-GPU reserved peak after the change):"]
        for s in suggestions:
            after = max(d.reserved_bytes for d in s.estimate.devices)
            v = s.estimate.verdict
            host = max((h.peak_bytes for h in s.estimate.hosts), default=0)
            lines.append(f"  {s.change:<40} −{gib(s.saving_bytes)} per GPU → {gib(after)}"
                         f"{' (' + str(v) + ')' if v else ''}; host peak {gib(host)}")
    for note in est.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
