"""``memplan validate``: predicted vs reference for every case in ``validation/``, with error figures.

Per reference kind (exact, traced, deepspeed-cpu, measured on GPUs, published) it prints each case and
metric with memplan's prediction, the reference, the error, the tolerance and whether it is within, then
per kind the median and worst absolute error. It is a report: the exit status is 0 whatever the errors,
unless ``--check`` is given, which exits 1 when a case leaves its tolerance without a known-miss entry
(``validation/known_misses.toml``) or a known miss has become stale. The README's accuracy table is
:func:`markdown_block` (``scripts/update_readme_accuracy.py``).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memplan.validation import Comparison, KindSummary, Row

#: What each kind's references are, for headings.
KIND_TITLES = {
    "exact": "exact: parameter counts vs transformers on the meta device",
    "traced": "traced: forward/backward transient and peak phase vs MemTracker traces of the HF code (CPU path)",
    "deepspeed-cpu": "deepspeed-cpu: per-rank peak vs real DeepSpeed on its CPU accelerator",
    "fsdp-cpu": "fsdp-cpu: per-rank peak per phase vs real FSDP2 on the CPU, wrapped as verl 0.9.1 does",
    "verl-fake": "verl-fake: transient per phase vs verl's log-prob and loss code under fake tensors (full size)",
    "measured": "measured: GPU max_memory_allocated / reserved / device used (validation/gpu/measure.py)",
    "published": "published: verdicts and peak phases of public reports",
}

#: Kinds listed case by case in the README (exact is summarised: every count is equal or the gate fails).
README_DETAIL_KINDS = ("traced", "deepspeed-cpu", "measured", "published")


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``validate`` command."""
    parser = subparsers.add_parser(
        "validate", help="predicted vs reference per case, with error figures",
        description="Compare memplan's predictions with every reference in the validation directory: exact "
                    "counts, traces, DeepSpeed on the CPU, GPU measurements and published outcomes. Exit "
                    "status 0 (a report) unless --check, which exits 1 when a case leaves its tolerance.")
    parser.add_argument("--kind", action="append", metavar="KIND",
                        choices=["exact", "traced", "deepspeed-cpu", "fsdp-cpu", "verl-fake", "measured", "published"],
                        help="only this kind (repeatable): exact, traced, deepspeed-cpu, fsdp-cpu, verl-fake, "
                             "measured, published")
    parser.add_argument("--dir", default=None, metavar="DIR",
                        help="validation directory (default: validation/ of the memplan checkout this is run in, "
                             "or the one memplan is installed from)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a case leaves its tolerance (or a known miss is stale)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compare, print, and return the exit status."""
    from memplan.cli import render
    from memplan.errors import ConfigError
    from memplan.validation import compare

    if args.dir is not None:
        root = Path(args.dir)
        if not root.is_dir():
            raise ConfigError("--dir", f"no validation directory at {root}")
        result = compare(root, args.kind)
    else:
        checkout = find_checkout(Path.cwd())
        if checkout is None:
            raise ConfigError("validate", "needs a memplan source checkout (its validation/ and tests/data/ are "
                                          "not installed with the package): run it inside one "
                                          "(git clone the memplan repository), or pass --dir DIR")
        root = Path("validation") if checkout == Path.cwd().resolve() else checkout / "validation"
        with contextlib.chdir(checkout):  # cases name their model configs relative to the checkout
            result = compare(Path("validation"), args.kind)
    if args.json:
        render.print_json(comparison_json(result, root))
    else:
        print(report_text(result))
    return 1 if args.check and not result.passed else 0


#: What marks a memplan checkout: the validation data and the test configs its cases name.
CHECKOUT_MARKERS = ("validation/known_misses.toml", "tests/data", "pyproject.toml")


def find_checkout(start: Path) -> Path | None:
    """The memplan checkout holding ``start`` (it or a parent), else the one memplan is imported from (an
    editable install: ``src/memplan`` two levels below it), else None."""
    import memplan

    here = start.resolve()
    package_root = Path(memplan.__file__).resolve().parents[2]
    for candidate in (here, *here.parents, package_root):
        if all((candidate / marker).exists() for marker in CHECKOUT_MARKERS):
            return candidate
    return None


def value_text(value: int | str, unit: str) -> str:
    """A predicted or reference value as text: bytes in binary units, counts with separators."""
    from memplan.cli import render

    if isinstance(value, str):
        return value
    return render.human_bytes(value) if unit == "bytes" else f"{value:,}"


def error_text(err: float | None) -> str:
    """``+1.23%``, or ``-`` for categorical rows."""
    return "-" if err is None else f"{err:+.2f}%"


def tolerance_text(tol: float | None) -> str:
    """``±5%``, or ``match`` for categorical rows."""
    return "match" if tol is None else f"±{tol:g}%"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _row_cells(row: Row) -> list[str]:
    tolerance = "-" if row.no_prediction else tolerance_text(row.tolerance_pct)
    return [row.case, row.metric, value_text(row.predicted, row.unit), value_text(row.reference, row.unit),
            error_text(row.error_pct), tolerance, str(row.status)]


def summary_cells(s: KindSummary) -> list[str]:
    """One summary line: kind, cases, comparisons, within, known misses, median and worst error."""
    worst = "-" if s.worst_abs_error_pct is None else f"{s.worst_abs_error_pct:.2f}%"
    if s.worst_abs_error_pct:
        worst += f" ({s.worst_case})"
    return [str(s.kind), str(s.num_cases), str(s.num_rows), str(s.num_within), str(s.num_known_misses),
            _pct(s.median_abs_error_pct), worst]


SUMMARY_HEADERS = ["kind", "cases", "compared", "within", "known misses", "median |error|", "worst |error|"]
ROW_HEADERS = ["case", "metric", "predicted", "reference", "error", "tolerance", "status"]


def report_text(result: Comparison) -> str:
    """The full text report: one table per kind, then the summary and the gate's verdict."""
    from memplan.cli import render

    parts = []
    for s in result.summaries:
        rows = [r for r in result.rows if r.kind == s.kind]
        parts.append(KIND_TITLES[str(s.kind)])
        parts.append(render.table(ROW_HEADERS, [_row_cells(r) for r in rows], "llrrrrl") if rows
                     else "  (no references yet)")
        parts.append(f"  median |error| {_pct(s.median_abs_error_pct)}, worst {summary_cells(s)[-1]}\n")
    parts.append(render.table(SUMMARY_HEADERS, [summary_cells(s) for s in result.summaries], "lrrrrrl"))
    parts += [f"known miss: {r.kind} {r.case} {r.metric}: {r.known_miss}" for r in result.rows
              if r.known_miss and not r.gate_fails]
    parts += [f"MISS: {r.kind} {r.case} {r.metric} is outside its tolerance" for r in result.rows
              if str(r.status) == "MISS"]
    parts += [f"STALE: {r.kind} {r.case} {r.metric} is within tolerance again; remove its known miss from "
              f"validation/{r.known_miss_file}" for r in result.rows if str(r.status) == "STALE"]
    waiting = [r for r in result.rows if r.no_prediction]
    if waiting:
        kinds = ", ".join(dict.fromkeys(str(r.kind) for r in waiting))
        parts.append(f"no prediction yet: {len(waiting)} rows ({kinds}) have references but memplan cannot predict "
                     "them yet (FSDP/verl); they are reported, not gated")
    parts += [f"UNUSED: known_misses.toml lists {m.kind} {m.case} {m.metric}, which matches no case"
              for m in result.unused_known_misses]
    if result.pending:
        parts.append(f"pending: {len(result.pending)} measured case(s) stored before memplan can predict them "
                     "(predict.compare = pending), not compared: " + ", ".join(result.pending))
    parts.append("in-sample: these are the references memplan was built and calibrated against; they show that it "
                 "reproduces them, not its error on a new model or cluster (docs/peers.md compares other tools)")
    parts.append("all cases within tolerance or listed as known misses" if result.passed
                 else "GATE FAILS (memplan validate --check exits 1)")
    return "\n".join(parts)


def comparison_json(result: Comparison, root: Path) -> dict[str, Any]:
    """The comparison as plain JSON values (exact integers for bytes and counts)."""
    return {
        "validation_dir": str(root), "passed": result.passed,
        "summaries": [{"kind": str(s.kind), "cases": s.num_cases, "compared": s.num_rows, "within": s.num_within,
                       "known_misses": s.num_known_misses, "gate_failures": s.num_gate_failures,
                       "no_prediction": s.num_no_prediction,
                       "median_abs_error_pct": s.median_abs_error_pct, "worst_abs_error_pct": s.worst_abs_error_pct,
                       "worst_case": s.worst_case} for s in result.summaries],
        "rows": [{"kind": str(r.kind), "case": r.case, "metric": r.metric, "unit": str(r.unit),
                  "predicted": r.predicted, "reference": r.reference, "error_pct": r.error_pct,
                  "tolerance_pct": r.tolerance_pct, "within": r.within, "status": str(r.status),
                  "known_miss": r.known_miss, "known_miss_file": r.known_miss_file, "source": r.source}
                 for r in result.rows],
        "unused_known_misses": [{"kind": str(m.kind), "case": m.case, "metric": m.metric}
                                for m in result.unused_known_misses],
    }


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)]


def markdown_block(result: Comparison) -> str:
    """The README's accuracy section (between the accuracy markers), generated; deterministic."""
    lines = ["Generated by `python scripts/update_readme_accuracy.py` from `memplan validate`; CI fails when it",
             "is out of date or when a case leaves its tolerance without a listed reason",
             "(`validation/known_misses.toml`). Errors are (predicted − reference) / reference.", ""]
    lines += _md_table(SUMMARY_HEADERS, [summary_cells(s) for s in result.summaries])
    for kind in README_DETAIL_KINDS:
        rows = [r for r in result.rows if str(r.kind) == kind]
        if not rows:
            continue
        lines += ["", "<details><summary>" + KIND_TITLES[kind] + "</summary>", ""]
        lines += _md_table(ROW_HEADERS, [_row_cells(r) for r in rows])
        lines += ["", "</details>"]
    return "\n".join(lines)
