"""One Vega-Lite chart per result, as plain data: the web page, ``--plot`` and ``--report`` draw the same spec.

An estimate gives one panel per GPU role set and one per node's host RAM: one bar per phase of the
iteration (rollout, make-experience, training, weight sync; or forward, backward, optimizer step),
stacked by what the memory holds (the JSON contract's categories, DESIGN.md), against the capacity
line. A plan gives, per GPU type, the minimum and the recommended layout side by side: one bar per role
set at its peak phase. Standard library only; the renderers (vega-embed, vl-convert) live in the web extra.

The spec follows the Vega-Lite v6 schema (https://vega.github.io/schema/vega-lite/v6.json): ``vconcat``
/ ``hconcat`` of ``layer`` charts with inline ``data.values``. Each bar segment's row carries its exact
``bytes`` next to the ``gib`` it is drawn with, so a reader (or a test) can add the segments back up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

#: Vega-Lite schema the specs are written for: v6, the version vl-convert-python 1.9 bundles and renders.
SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"
#: Bytes in one GiB: the charts' unit, as everywhere memplan prints sizes.
GIB = 1 << 30

#: Legend label of each JSON category (DESIGN.md), in stacking order from the bottom.
CATEGORY_LABELS: dict[str, str] = {
    "param": "weights", "buffer": "buffers", "grad": "gradients", "optimizer": "optimizer",
    "activation": "activations", "temp": "logits & temporaries", "kv_cache": "KV cache", "overhead": "overhead",
}
#: One colour per category (Tableau 10, the Vega default palette, fixed so every chart agrees).
CATEGORY_COLORS: dict[str, str] = {
    "param": "#4c78a8", "buffer": "#9ecae9", "grad": "#f58518", "optimizer": "#e45756",
    "activation": "#54a24b", "temp": "#eeca3b", "kv_cache": "#b279a2", "overhead": "#9d755d",
}
#: Colour of the capacity line.
CAPACITY_COLOR = "#d62728"
#: Panel size in pixels.
PANEL_WIDTH, PANEL_HEIGHT = 250, 200
#: Most bars whose labels stay horizontal; more are slanted by SLANTED_ANGLE degrees so they do not overlap.
FLAT_LABELS, SLANTED_ANGLE = 4, -30
#: Pixels per role set in a plan's panel (role-set labels such as "8 × {critic, reward}" need the room).
PLAN_BAR_STEP = 90
#: Panels per row of an estimate's chart.
COLUMNS = 3


def _category_rows(terms: Iterable[Any]) -> dict[str, int]:
    """Bytes per category of some terms, in CATEGORY_LABELS order (zero categories left out)."""
    totals = dict.fromkeys(CATEGORY_LABELS, 0)
    for term in terms:
        totals[str(term.category)] = totals.get(str(term.category), 0) + term.bytes
    return {category: num_bytes for category, num_bytes in totals.items() if num_bytes}


def _segment(x_label: str, x_order: int, category: str, num_bytes: int) -> dict[str, Any]:
    return {"x": x_label, "x_order": x_order, "category": CATEGORY_LABELS.get(category, category),
            "category_order": list(CATEGORY_LABELS).index(category) if category in CATEGORY_LABELS else 99,
            "bytes": num_bytes, "gib": num_bytes / GIB}


def _color_scale() -> dict[str, Any]:
    return {"domain": list(CATEGORY_LABELS.values()), "range": list(CATEGORY_COLORS.values())}


def _panel(title: str, x_title: str, rows: list[dict[str, Any]], capacity_bytes: int | None,
           capacity_label: str = "capacity") -> dict[str, Any]:
    """A stacked bar chart (x: phase or role set, stacked by category) with the capacity rule on top."""
    bars = {
        "mark": {"type": "bar", "tooltip": True},
        "encoding": {
            "x": {"field": "x", "type": "nominal", "title": x_title, "sort": {"field": "x_order", "op": "min"},
                  "axis": {"labelAngle": 0 if len({r["x"] for r in rows}) <= FLAT_LABELS else SLANTED_ANGLE}},
            "y": {"field": "gib", "type": "quantitative", "aggregate": "sum", "title": "GiB", "stack": "zero"},
            "color": {"field": "category", "type": "nominal", "title": "holds", "scale": _color_scale()},
            "order": {"field": "category_order"},
            "tooltip": [{"field": "x", "title": x_title}, {"field": "category", "title": "holds"},
                        {"field": "gib", "title": "GiB", "format": ".2f"}],
        },
    }
    layers: list[dict[str, Any]] = [bars]
    if capacity_bytes is not None:
        datum = capacity_bytes / GIB
        layers.append({"mark": {"type": "rule", "color": CAPACITY_COLOR, "strokeDash": [6, 4], "size": 2},
                       "encoding": {"y": {"datum": datum}}})
        layers.append({"mark": {"type": "text", "color": CAPACITY_COLOR, "align": "right", "dy": -6,
                                "x": "width"},
                       "encoding": {"y": {"datum": datum}, "text": {"value": f"{capacity_label} {datum:.2f} GiB"}}})
    return {"title": title, "width": PANEL_WIDTH, "height": PANEL_HEIGHT, "data": {"values": rows},
            "layer": layers}


def _message_panel(title: str, text: str) -> dict[str, Any]:
    """A panel holding one line of text (a plan that found no layout)."""
    return {"title": title, "width": PANEL_WIDTH, "height": 60, "data": {"values": [{"text": text}]},
            "mark": {"type": "text", "align": "left", "x": 0, "y": 30, "fontSize": 12},
            "encoding": {"text": {"field": "text"}}}


def role_set_title(device: Any) -> str:
    """``8 × GPU {actor, ref}``: the same heading as the CLI's table."""
    return f"{device.count} × GPU {{{', '.join(device.roles)}}}"


def _phase_rows(phases: Sequence[Any]) -> list[dict[str, Any]]:
    return [_segment(str(usage.phase), index, category, num_bytes)
            for index, usage in enumerate(phases)
            for category, num_bytes in _category_rows(usage.terms).items()]


def _host_title(host: Any) -> str:
    """``node0``, or ``4 × node[1-4]`` for identical nodes reported once."""
    return f"{host.count} × {host.ids}" if host.count > 1 else host.id


def estimate_panels(est: Any) -> list[dict[str, Any]]:
    """One panel per GPU role set, then one per node's host RAM."""
    panels = [_panel(role_set_title(d), "phase", _phase_rows(d.phases), d.capacity_bytes, "usable")
              for d in est.devices]
    panels += [_panel(f"host RAM {_host_title(h)}", "phase", _phase_rows(h.phases), h.judged_bytes,
                      "Ray kill threshold" if h.limit is not None else "host RAM")
               for h in est.hosts]
    return panels


def _spec(title: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"$schema": SCHEMA, "title": {"text": title, "anchor": "start", "offset": 14},
            "resolve": {"scale": {"color": "shared"}}, "config": {"view": {"stroke": None}, "legend": {"orient": "bottom", "direction": "horizontal"}}, **body}


def estimate_chart(est: Any) -> dict[str, Any]:
    """The Vega-Lite spec of an :class:`~memplan.jobs.result.Estimate`."""
    verdict = f" → {est.verdict}" if est.verdict else ""
    return _spec(f"memory per GPU and per node, phase by phase{verdict}", {"concat": estimate_panels(est), "columns": COLUMNS})


def _plan_panel(title: str, plan: Any, binding: str | None) -> dict[str, Any]:
    if plan is None:
        return _message_panel(title, f"no layout fits: {binding}" if binding else "no layout fits")
    devices = plan.estimate.devices
    rows = [_segment(f"{d.count} × {{{', '.join(d.roles)}}}", index, category, num_bytes)
            for index, d in enumerate(devices)
            for category, num_bytes in _category_rows(d.peak.terms).items()]
    capacity = next((d.capacity_bytes for d in devices if d.capacity_bytes is not None), None)
    panel = _panel(f"{title}: {plan.num_gpus} GPUs", "GPU role set (at its peak phase)", rows, capacity, "usable")
    return {**panel, "width": {"step": PLAN_BAR_STEP}}


def plan_chart(results: Sequence[Any]) -> dict[str, Any]:
    """The Vega-Lite spec of one or several :class:`~memplan.planner.plan.PlanResult` (one row per GPU type)."""
    from memplan.cli.render import binding_limit_text

    rows = []
    for result in results:
        binding = binding_limit_text(result.binding_limit, result.gpu.name) if result.binding_limit else None
        rows.append({"hconcat": [_plan_panel(f"{result.gpu.name} minimum", result.minimum, binding),
                                 _plan_panel(f"{result.gpu.name} recommended", result.recommended, binding)]})
    return _spec("minimum and recommended layouts: memory per GPU at its peak phase", {"vconcat": rows})
