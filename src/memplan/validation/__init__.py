"""Predicted vs reference, per case, for every kind of reference in ``validation/``.

:func:`compare` loads the references of the kinds asked for, predicts each with memplan's public API and
returns typed :class:`Row` objects (kind, case, metric, predicted, reference, error %, tolerance, within,
known-miss reason); :func:`summarize` gives per kind the case count and the median and worst error. The
tolerances and known misses are data (``validation/tolerances.toml``, ``validation/known_misses.toml``).
Standard library only, like the rest of the core.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from memplan.validation.exact import exact_rows
from memplan.validation.measured import measured_rows, pending_cases
from memplan.validation.policy import KnownMiss, Policy, load_policy
from memplan.validation.published import published_rows
from memplan.validation.rl_traces import rl_traced_rows
from memplan.validation.rows import Kind, KindSummary, Row, Status, Unit, summarize
from memplan.validation.traces import deepspeed_cpu_rows, traced_rows
from memplan.validation.verl_traces import fsdp_cpu_rows, verl_fake_rows

__all__ = ["Comparison", "Kind", "KindSummary", "KnownMiss", "Policy", "Row", "Status", "Unit", "compare",
           "load_policy", "summarize"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """Every row of the kinds compared, their summaries, and known misses that matched nothing."""

    rows: tuple[Row, ...]
    """All rows, kind by kind in :class:`Kind` order, cases sorted by file name."""
    summaries: tuple[KindSummary, ...]
    """One per kind compared (also for kinds without references yet)."""
    unused_known_misses: tuple[KnownMiss, ...]
    """``known_misses.toml`` entries of the compared kinds that match no row."""

    pending: tuple[str, ...] = ()
    """Measured cases stored before memplan can predict them (``predict.compare = "pending"``), not compared."""

    @property
    def gate_failures(self) -> tuple[Row, ...]:
        """Rows that fail the gate: unlisted misses and stale known misses."""
        return tuple(r for r in self.rows if r.gate_fails)

    @property
    def passed(self) -> bool:
        """True when no row fails the gate and no known miss is left unused."""
        return not self.gate_failures and not self.unused_known_misses


def _rows_of(kind: Kind, validation_dir: Path, policy: Policy) -> list[Row]:
    if kind is Kind.EXACT:
        return exact_rows(validation_dir, policy)
    if kind is Kind.TRACED:
        return traced_rows(validation_dir, policy) + rl_traced_rows(validation_dir, policy)
    if kind is Kind.DEEPSPEED_CPU:
        return deepspeed_cpu_rows(validation_dir, policy)
    if kind is Kind.FSDP_CPU:
        return fsdp_cpu_rows(validation_dir, policy)
    if kind is Kind.VERL_FAKE:
        return verl_fake_rows(validation_dir, policy)
    if kind is Kind.MEASURED:
        return measured_rows(validation_dir, policy)
    return published_rows(validation_dir)


def compare(validation_dir: str | Path = "validation", kinds: Iterable[Kind | str] | None = None) -> Comparison:
    """Compare memplan with the references of ``kinds`` (all kinds by default) under ``validation_dir``."""
    root = Path(validation_dir)
    wanted = [Kind(k) for k in kinds] if kinds is not None else list(Kind)
    policy = load_policy(root)
    rows: list[Row] = []
    for kind in Kind:
        if kind in wanted:
            rows += policy.apply(_rows_of(kind, root, policy))
    unused = tuple(m for m in policy.unused(rows) if m.kind in wanted)
    pending = tuple(pending_cases(root)) if Kind.MEASURED in wanted else ()
    return Comparison(rows=tuple(rows), summaries=tuple(summarize(k, rows) for k in Kind if k in wanted),
                      unused_known_misses=unused, pending=pending)
