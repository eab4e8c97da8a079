"""``--plot FILE.svg|FILE.png`` and ``--report FILE.html`` of estimate, check and plan.

Both draw the result's Vega-Lite spec (memplan.charts, the same one the web page shows) with
vl-convert (the ``web`` extra), offline. The report is one self-contained HTML file: the chart as inline
SVG (no script, so it opens offline and in mail clients), the verdict, the per-GPU and per-node table,
every term with its source, and the launch command; a user can attach it to an issue.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from memplan.errors import ConfigError

#: Output types --plot can write, by file suffix.
PLOT_SUFFIXES = (".svg", ".png")
#: Pixel scale of PNG plots (2: sharp on high-density screens and in issue trackers).
PNG_SCALE = 2

_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2630}h1{font-size:20px}
h2{font-size:16px;margin-top:24px}pre{background:#f6f8fa;padding:8px;white-space:pre-wrap;word-break:break-all}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #d8dde3;padding:3px 8px;text-align:left;
vertical-align:top}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}td.src{font-size:11px;
color:#5f6b7a}"""


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """``--plot`` and ``--report`` (estimate, check, plan)."""
    parser.add_argument("--plot", metavar="FILE", help="write the chart as FILE.svg or FILE.png (web extra)")
    parser.add_argument("--report", metavar="FILE", help="write a self-contained HTML report (web extra)")


def _vl_convert() -> Any:
    try:
        import vl_convert
    except ImportError:
        return None
    return vl_convert


def check_output_args(args: argparse.Namespace) -> None:
    """Reject a bad --plot/--report before any work, so nothing is half-done."""
    plot, report = getattr(args, "plot", None), getattr(args, "report", None)
    if plot and Path(plot).suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError("--plot", f"{plot}: must end in .svg or .png")
    if report and Path(report).suffix.lower() not in (".html", ".htm"):
        raise ConfigError("--report", f"{report}: must end in .html")
    for flag, value in (("--plot", plot), ("--report", report)):
        if value and _vl_convert() is None:
            raise ConfigError(flag, "needs the web extra (vl-convert-python): pip install 'memplan[web]'")
        if value and not Path(value).resolve().parent.is_dir():
            raise ConfigError(flag, f"{value}: no such directory")


def _write_atomically(path: str, data: bytes) -> None:
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.resolve().parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a plot is an ordinary file
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_bytes(spec: dict[str, Any], suffix: str) -> bytes:
    """The chart as SVG text or PNG bytes."""
    vlc = _vl_convert()
    if suffix == ".png":
        return bytes(vlc.vegalite_to_png(spec, scale=PNG_SCALE))
    return vlc.vegalite_to_svg(spec).encode("utf-8")


def _terms_table(entry: dict[str, Any], title: str) -> str:
    rows = "".join(f"<tr><td>{html.escape(t['path'])}</td><td>{t['category']}</td><td class=num>"
                   f"{t['bytes'] / 2**30:.2f} GiB</td><td class=src>{html.escape(t['source'])}</td></tr>"
                   for t in sorted(entry["breakdown"], key=lambda t: -t["bytes"]))
    return (f"<h3>{html.escape(title)} at {entry['peak_phase']}</h3><table><tr><th>term</th><th>holds</th>"
            f"<th>bytes</th><th>source</th></tr>{rows}</table>")


def estimate_sections(data: dict[str, Any]) -> str:
    """Every term of every GPU role set and node, with its source."""
    parts = [_terms_table(d, f"{d['count']} × GPU {{{', '.join(d['roles'])}}}") for d in data["devices"]]
    parts += [_terms_table(h, f"host RAM {h['id']}") for h in data["hosts"]]
    return "<h2>Every term and its source</h2>" + "".join(parts)


def report_html(title: str, text: str, spec: dict[str, Any], commands: list[str], details: str) -> str:
    """The self-contained report page."""
    from memplan import __version__

    svg = plot_bytes(spec, ".svg").decode("utf-8")
    command_html = "".join(f"<pre>{html.escape(c)}</pre>" for c in commands)
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<h2>Command</h2>{command_html}<h2>Chart</h2><div class=chart>{svg}</div>"
            f"<h2>Summary</h2><pre>{html.escape(text)}</pre>{details}"
            f"<p><small>memplan {__version__}</small></p></body></html>")


def write_outputs(args: argparse.Namespace, spec: dict[str, Any], *, title: str, text: str,
                  commands: list[str], details: str = "") -> None:
    """Write --plot and --report when asked (a line on stderr for each)."""
    if getattr(args, "plot", None):
        _write_atomically(args.plot, plot_bytes(spec, Path(args.plot).suffix.lower()))
        print(f"memplan: wrote {args.plot}", file=sys.stderr)
    if getattr(args, "report", None):
        _write_atomically(args.report, report_html(title, text, spec, commands, details).encode("utf-8"))
        print(f"memplan: wrote {args.report}", file=sys.stderr)
