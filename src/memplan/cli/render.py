"""Rendering: the only place bytes and counts become text."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from memplan.frameworks.openrlhf.knobs import QUIET_VALUES
from memplan.units import GB, GiB, KiB, MiB, TiB
from memplan.memory.host import by_kind


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


def plural(n: int, noun: str) -> str:
    """``1 GPU``, ``8 GPUs``, ``1 node``, ``2 nodes``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


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


def _roles_text(roles: dict[str, int]) -> str:
    return "{" + ", ".join(f"{r}×{n}" for r, n in roles.items()) + "}"


def _placement_lines(risk: Any) -> list[str]:
    """Which placement the host lines assume, and the worst one Ray may choose instead (identical nodes grouped)."""
    assumed = ", ".join(f"{_nodes_text(h)} {_roles_text(r)}" for h, r in zip(risk.assumed, risk.assumed_roles))
    node = risk.worst[risk.worst_node]
    worst = (f"{_nodes_text(node)} {_roles_text(risk.worst_roles[risk.worst_node])} {gib(node.peak_bytes)} in {node.peak.phase}"
             f"{_host_limit_text(node)} → {_verdict_text(node.verdict, node.peak_bytes, node.judged_bytes)}")
    return [f"placement: as estimated {assumed} (groups filled in creation order)",
            f"  Ray's PACK policy may choose {plural(risk.num_placements, 'placement')}; the fullest node of the worst: "
             f"{worst}"]


def _nodes_text(h: Any) -> str:
    """``node0``, or ``node[0-63] (each)`` for identical nodes."""
    return h.id if h.count == 1 else f"{h.ids} (each)"


def _host_timeline_lines(phases: Sequence[Any]) -> list[str]:
    """One line per run of consecutive phases with the same host RAM by kind: ``rollout, training: X = ...``."""
    runs: list[tuple[list[str], int, dict]] = []
    for p in phases:
        kinds = by_kind(p.terms)
        if runs and runs[-1][2] == kinds:
            runs[-1][0].append(str(p.phase))
        else:
            runs.append(([str(p.phase)], p.bytes, kinds))
    return [f"    {', '.join(names)}: {gib(total)} = " + " + ".join(f"{k} {gib(b)}" for k, b in kinds.items())
            for names, total, kinds in runs]


def _host_limit_text(h: Any) -> str:
    """`` of 1490.12 GiB`` or, under Ray, `` against 1415.61 GiB (Ray memory_usage_threshold 0.95 of 1600 GB)``."""
    if not h.capacity_bytes:
        return ""
    if h.limit is None or h.limit.bytes == h.capacity_bytes:
        return f" of {gib(h.capacity_bytes)}"
    return f" against {gib(h.limit.bytes)} ({h.limit.rule})"


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


def host_label(host: Any) -> str:
    """``host node0``, or for identical nodes ``512 × host node[0-511]`` (the figures are per node)."""
    return f"host {host.id}" if host.count == 1 else f"{host.count} × host {host.ids}"


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
        lines.append(f"{host_label(h)}: {gib(h.peak_bytes)} RAM peak in {h.peak.phase}{_host_limit_text(h)} → "
                     f"{_verdict_text(h.verdict, h.peak_bytes, h.judged_bytes)}")
        lines += _host_timeline_lines(h.phases)
        if explain:
            lines += _terms_lines(h.peak.terms, None, explain)
    total_gpu = sum(d.peak_bytes * d.count for d in est.devices)
    total_host = sum(h.peak_bytes * h.count for h in est.hosts)
    lines.append(f"cluster: {plural(est.num_gpus, 'GPU')}, {gib(total_gpu)} GPU memory (sum of per-GPU peaks); "
                 f"{plural(est.num_nodes, 'node')}, {gib(total_host)} host RAM (sum of per-node peaks)")
    if est.placement_risk is not None:
        lines += _placement_lines(est.placement_risk)
    verdict = est.verdict
    risk = est.placement_risk.verdict if est.placement_risk is not None else None
    from memplan.jobs.result import worst

    host_verdict = worst([h.verdict for h in est.hosts])
    tail = (f"; host RAM {host_verdict} as placed, {risk} under the worst placement Ray may choose"
            if risk and host_verdict and risk != host_verdict else "")
    saves = [h for h in est.hosts if h.failing_save is not None]
    if saves:
        tail += (f"; host RAM {saves[0].training_verdict} while training, {saves[0].verdict} at its first "
                 f"{saves[0].failing_save.phase} ({saves[0].id}: see note)")
    lines.append(f"verdict: {verdict if verdict else 'no --gpu/--host-ram given: sizes only'}{tail}")
    if suggestions:
        lines += ["", "what would help (largest per-GPU reserved peak after the change):"]
        for s in suggestions:
            after = max(d.reserved_bytes for d in s.estimate.devices)
            v = s.estimate.verdict
            host = max((h.peak_bytes for h in s.estimate.hosts), default=0)
            lines.append(f"  {s.change:<40} −{gib(s.saving_bytes)} per GPU → {gib(after)}"
                         f"{' (' + str(v) + ')' if v else ''}; host peak {gib(host)}")
            if len(getattr(s, "effects", ())) > 1:
                lines.append(f"      each alone: {suggestion_effects_text(s)}")
    elif str(verdict) == "oom":
        lines += ["", "what would help: no single change, nor a set of up to four, makes it fit; "
                      "try memplan plan for a larger layout"]
    for note in est.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


# --- plans (memplan plan) ----------------------------------------------------------------------


def _layout_text(plan: Any) -> str:
    """``separate: actor 8, critic 8, ref 4, reward 4; vLLM 4 × TP2 (gpu_memory_utilization 0.85)``."""
    layout = plan.layout
    groups = ", ".join(f"{role} {n}" for role, n in layout.sizes)
    text = f"{plan.placement or layout.placement}: {groups}"
    if layout.engines:
        text += f"; vLLM {layout.engines} × TP{layout.tp} (gpu_memory_utilization {layout.gmu})"
    return text




def _flags_text(flags: Sequence[tuple[str, Any]]) -> str:
    words = []
    for key, value in flags:
        if (key, value) in QUIET_VALUES:
            continue
        words.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return " ".join(words)


def binding_limit_text(limit: Any, gpu_name: str = "") -> str:
    """One line: which limit binds, where, and by how much."""
    kind = str(limit.kind)
    if kind == "gpu_count":
        if limit.limit < 1:
            return f"--max-gpus {limit.limit} allows no GPU"
        return (f"GPU count: the smallest layout whose every GPU fits needs {plural(limit.need, 'GPU')}, --max-gpus "
                f"allows {limit.limit} ({limit.shortfall} short)")
    if kind == "gpu_memory":
        on = f" {gpu_name}" if gpu_name else ""
        return (f"GPU memory of {limit.where}: {gib(limit.need)} reserved per GPU on {plural(limit.num_gpus, 'GPU')}, "
                f"the{on} GPU has {gib(limit.limit)} (short by {gib(limit.shortfall)}) at the most GPUs allowed")
    if kind == "host_ram":
        return (f"host RAM of {limit.where}: {gib(limit.need)} needed on the {limit.num_gpus}-GPU layout whose GPUs "
                f"fit, the node has {gib(limit.limit)} (short by {gib(limit.shortfall)})")
    return f"every candidate was rejected by OpenRLHF's constraints: {limit.where}"


def plan_role_rows(est: Any) -> list[list[str]]:
    """Rows of the per-role table: roles, GPUs, peak, reserved, capacity, free, verdict, peak phase."""
    rows = []
    for d in est.devices:
        cap = d.capacity_bytes
        free = f"{100 * (cap - d.reserved_bytes) / cap:.0f}%" if cap else "-"
        rows.append(["+".join(d.roles), str(d.count), gib(d.peak_bytes), gib(d.reserved_bytes),
                     gib(cap) if cap else "-", free, str(d.verdict or "-"), str(d.peak.phase)])
    return rows


def plan_text(title: str, plan: Any) -> str:
    """One plan: layout, flags, per-role table, host RAM per node, the launch command."""
    est = plan.estimate
    nodes = est.num_nodes
    lines = [f"{title}: {plural(est.num_gpus, 'GPU')} on {plural(nodes, 'node')} ({est.verdict or 'no capacity'})",
             f"  layout: {_layout_text(plan)}", f"  flags:  {_flags_text(plan.flags)}", ""]
    table_text = table(["roles", "GPUs", "peak", "reserved", "capacity", "free", "verdict", "peak phase"],
                       plan_role_rows(est), "lrrrrrll")
    lines += ["  " + line for line in table_text.splitlines()]
    for h in est.hosts:
        cap = f"{_host_limit_text(h)} ({h.verdict})" if h.capacity_bytes else ""
        where = h.id if h.count == 1 else f"{h.ids} (each of {h.count} nodes)"
        lines.append(f"  host RAM {where}: {gib(h.peak_bytes)} at {h.peak.phase}{cap}")
    risk = est.placement_risk
    if risk is not None and risk.num_placements:
        node = risk.worst[risk.worst_node]
        lines.append(f"  host RAM under the worst of {plural(risk.num_placements, 'placement')} Ray may choose: "
                     f"{_roles_text(risk.worst_roles[risk.worst_node])} {gib(node.peak_bytes)}"
                     f"{f' ({node.verdict})' if node.verdict else ''}")
    lines += ["  command:", f"    {plan.command}"]
    return "\n".join(lines)


def host_ram_note(result: Any) -> str | None:
    """When no ``--host-ram`` was given: host RAM did not constrain the search; what the plans need per node."""
    if result.host_ram_bytes is not None or result.minimum is None:
        return None
    needs = [f"the minimum needs {gib(result.minimum.max_host_bytes)}"]
    if result.recommended is not None:
        needs.append(f"the recommended {gib(result.recommended.max_host_bytes)}")
    return (f"host RAM was not constrained (no --host-ram): {' and '.join(needs)} of host RAM on its fullest "
            "node; pass --host-ram SIZE (e.g. --host-ram 1TB) to plan within your nodes' RAM")


def _plan_notes(result: Any) -> list[str]:
    note = host_ram_note(result)
    return [*result.notes, *([note] if note else [])]


def plan_result_text(result: Any) -> str:
    """The human report of one GPU type's plan."""
    lines = [f"plan: {result.model}, {result.method} on {result.gpu.name} "
             f"(max {plural(result.max_gpus, 'GPU')}{', host RAM ' + gib(result.host_ram_bytes) + '/node' if result.host_ram_bytes else ''})",
             ""]
    if result.minimum is None:
        lines.append("no plan: nothing fits")
        if result.binding_limit is not None:
            lines.append(f"binding limit: {binding_limit_text(result.binding_limit, result.gpu.name)}")
    else:
        lines += [plan_text("minimum", result.minimum), ""]
        if result.recommended is not None:
            lines += [plan_text("recommended (>= 10% headroom)", result.recommended), ""]
    lines.append(f"candidates evaluated: {result.candidates_evaluated} in {result.seconds:.2f} s")
    lines += [f"note: {n}" for n in _plan_notes(result)]
    return "\n".join(lines)


def plan_comparison_text(results: Sequence[Any]) -> str:
    """Several GPU types side by side: the minimum (and the recommended GPU count) per type."""
    rows = []
    for r in results:
        m = r.minimum
        rows.append([r.gpu.name, str(m.num_gpus) if m else "no plan",
                     _layout_text(m) if m else binding_limit_text(r.binding_limit, r.gpu.name) if r.binding_limit else "-",
                     gib(max(d.reserved_bytes for d in m.estimate.devices)) if m else "-",
                     gib(m.max_host_bytes) if m else "-",
                     str(r.recommended.num_gpus) if r.recommended else "-", str(r.candidates_evaluated)])
    lines = [table(["GPU", "min GPUs", "minimum layout", "max reserved/GPU", "max host RAM/node", "recommended GPUs",
                    "candidates"], rows, "lrlrrrr"), ""]
    for r in results:
        if r.minimum is not None:
            lines += [f"{r.gpu.name} minimum:", f"  {r.minimum.command}"]
    total = sum(r.candidates_evaluated for r in results)
    lines.append(f"candidates evaluated: {total} in {sum(r.seconds for r in results):.2f} s")
    lines += [f"note: {r.gpu.name}: {note}" for r in results if (note := host_ram_note(r))]
    return "\n".join(lines)


def plan_json(plan: Any, gpu_name: str) -> dict[str, Any] | None:
    """One PLAN of the contract: the estimate object plus ``command`` (and the GPU type, layout and flags)."""
    from memplan.jobs.report import estimate_json

    if plan is None:
        return None
    data = estimate_json(plan.estimate)
    layout = plan.layout
    data["command"] = plan.command
    data["gpu"] = gpu_name
    data["layout"] = {"placement": plan.placement or str(layout.placement), "groups": dict(layout.sizes),
                      "vllm": {"num_engines": layout.engines, "tensor_parallel_size": layout.tp,
                               "gpu_memory_utilization": layout.gmu} if layout.engines else None}
    data["flags"] = dict(plan.flags)
    return data


#: Why a type has a minimum but no recommended plan (planner/plan.py adds the same note).
NO_HEADROOM = "no layout with 10% headroom on every GPU and node within the limits"


def _binding_text(result: Any) -> str | None:
    """The binding limit of whichever plan is null: the search's limit when there is no minimum, the
    headroom rule when there is a minimum but no recommended plan; None when both exist."""
    if result.minimum is None:
        limit = result.binding_limit
        return binding_limit_text(limit, result.gpu.name) if limit else "no candidate was evaluated"
    if result.recommended is None:
        return f"{NO_HEADROOM} (at most {plural(result.max_gpus, 'GPU')})"
    return None


def plan_result_json(result: Any) -> dict[str, Any]:
    """``{"minimum", "recommended", "candidates_evaluated", "binding_limit"}`` (DESIGN.md) and context."""
    limit = result.binding_limit
    note = host_ram_note(result)
    needs = None if result.minimum is None else {
        "minimum": result.minimum.max_host_bytes,
        "recommended": result.recommended.max_host_bytes if result.recommended is not None else None}
    return {"minimum": plan_json(result.minimum, result.gpu.name),
            "recommended": plan_json(result.recommended, result.gpu.name),
            "candidates_evaluated": result.candidates_evaluated, "binding_limit": _binding_text(result),
            "binding": None if limit is None else {"kind": str(limit.kind), "where": limit.where,
                                                   "num_gpus": limit.num_gpus, "need": limit.need,
                                                   "limit": limit.limit, "shortfall": limit.shortfall},
            "gpu": result.gpu.name, "max_gpus": result.max_gpus, "host_ram_bytes": result.host_ram_bytes,
            "host_ram_constrained": result.host_ram_bytes is not None, "max_host_bytes_per_node": needs,
            "seconds": result.seconds, "notes": [*result.notes, *([note] if note else [])]}


def _best(results: Sequence[Any], kind: str) -> Any:
    """The result whose ``kind`` plan ranks first: fewest GPUs, then least host RAM on the fullest node,
    then the order the GPU types were given (the planner's ranking, DESIGN.md "planner/")."""
    ranked = [(getattr(r, kind).num_gpus, getattr(r, kind).max_host_bytes, i, r)
              for i, r in enumerate(results) if getattr(r, kind) is not None]
    return min(ranked, key=lambda x: x[:3])[3] if ranked else None


def plan_comparison_json(results: Sequence[Any]) -> dict[str, Any]:
    """DESIGN.md with several GPU types: the best plan over all types at the top level (``minimum``,
    ``recommended``, ``binding_limit``, ``candidates_evaluated``), plus one object per type under ``plans``
    (each as ``plan_result_json``). A null top-level plan carries every type's binding limit."""
    per_type = [plan_result_json(r) for r in results]
    best_min, best_rec = _best(results, "minimum"), _best(results, "recommended")
    limit = None
    if best_min is None or best_rec is None:
        limit = "; ".join(f"{p['gpu']}: {p['binding_limit']}" for p in per_type if p["binding_limit"])
    return {"minimum": None if best_min is None else plan_json(best_min.minimum, best_min.gpu.name),
            "recommended": None if best_rec is None else plan_json(best_rec.recommended, best_rec.gpu.name),
            "candidates_evaluated": sum(r.candidates_evaluated for r in results), "binding_limit": limit,
            "plans": per_type}


def suggestion_effects_text(suggestion: Any) -> str:
    """``--adam_offload (−106.86 GiB) + --gradient_checkpointing (−74.92 GiB)``: each change of a set with
    the drop of the largest per-GPU reserved peak it gives alone."""
    effects = getattr(suggestion, "effects", ()) or ((suggestion.change, suggestion.saving_bytes),)
    return " + ".join(f"{text} ({'−' if saving >= 0 else '+'}{gib(abs(saving))})" for text, saving in effects)
