"""The comparison data model: one row per (reference kind, case, metric), and per-kind summaries.

A row holds what memplan predicts, what the reference says, the signed error in percent of the reference,
the tolerance that applies (from data: ``validation/tolerances.toml`` or the case's own file) and whether
the prediction is within it. Categorical metrics (a verdict, the peak phase) have no error: they match or
they do not. Rendering lives in ``cli/validate.py``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """A kind of reference (DESIGN.md, "Validation: four kinds of truth")."""

    EXACT = "exact"
    """Exact ground truth: parameter counts from transformers on the meta device."""
    TRACED = "traced"
    """The real Hugging Face code under FakeTensorMode with PyTorch's MemTracker (``memplan trace``)."""
    DEEPSPEED_CPU = "deepspeed-cpu"
    """Real DeepSpeed on its CPU accelerator with gloo, every allocation tracked."""
    FSDP_CPU = "fsdp-cpu"
    """Real FSDP2 on the CPU with gloo, wrapped as verl does, every allocation tracked per rank."""
    VERL_FAKE = "verl-fake"
    """verl's log-prob and policy-loss code at full size under FakeTensorMode with MemTracker."""
    MEASURED = "measured"
    """GPU measurements (``torch.cuda.max_memory_allocated`` and friends) from ``validation/gpu/measure.py``."""
    PUBLISHED = "published"
    """Public outcomes (fits / out of memory / peak phase) with their source."""


class Unit(StrEnum):
    """What a row's values count."""

    PARAMS = "params"
    """Parameters (an integer count)."""
    BYTES = "bytes"
    """Bytes (an integer)."""
    PHASE = "phase"
    """A phase name; categorical."""
    VERDICT = "verdict"
    """fits / tight / oom; categorical."""


class Status(StrEnum):
    """How a row stands against its tolerance and the known-miss list."""

    OK = "ok"
    """Within tolerance."""
    MISS = "MISS"
    """Outside tolerance and not listed as a known miss: the CI gate fails."""
    KNOWN_MISS = "known miss"
    """Outside tolerance, listed in ``validation/known_misses.toml`` with a reason."""
    STALE = "STALE"
    """Listed as a known miss but now within tolerance: the entry must be removed (the gate fails)."""
    NO_PREDICTION = "no prediction yet"
    """A reference memplan cannot predict yet (verl/FSDP before its model lands): shown, never gating."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One comparison of a prediction with a reference."""

    kind: Kind
    """Reference kind."""
    case: str
    """Case id (the reference file's id)."""
    metric: str
    """What is compared, e.g. ``forward_transient`` or ``allocated_peak``."""
    unit: Unit
    """What the values count."""
    predicted: int | str
    """memplan's value."""
    reference: int | str
    """The reference value (for categorical metrics: one value, or accepted values joined by ``|``)."""
    error_pct: float | None
    """Signed error ``100 · (predicted − reference) / reference``; None for categorical metrics."""
    tolerance_pct: float | None
    """Allowed ``|error_pct|``; None for categorical metrics (they must match)."""
    within: bool
    """Whether the prediction is within tolerance (or matches)."""
    source: str
    """The reference file, relative to the validation directory."""
    known_miss: str | None = None
    """The reason given in ``known_misses.toml`` (or in the reference file) when this row is listed there."""
    known_miss_file: str | None = None
    """Where that reason is written: ``known_misses.toml`` or the reference file (relative path)."""
    no_prediction: bool = False
    """True when memplan has no prediction for this reference yet (``predicted`` is a placeholder)."""

    @property
    def status(self) -> Status:
        """ok / MISS / known miss / STALE / no prediction yet."""
        if self.no_prediction:
            return Status.NO_PREDICTION
        if self.known_miss is not None:
            return Status.STALE if self.within else Status.KNOWN_MISS
        return Status.OK if self.within else Status.MISS

    @property
    def gate_fails(self) -> bool:
        """Whether this row fails ``memplan validate --check`` (and the test suite)."""
        return self.status in (Status.MISS, Status.STALE)


def error_pct(predicted: int, reference: int) -> float:
    """Signed error in percent of the reference; 0 when both are 0, infinite when only the reference is."""
    if reference == 0:
        return 0.0 if predicted == 0 else math.inf
    return 100.0 * (predicted - reference) / reference


def numeric_row(*, kind: Kind, case: str, metric: str, unit: Unit, predicted: int, reference: int,
                tolerance_pct: float, source: str) -> Row:
    """A row comparing two integers against a tolerance in percent."""
    err = error_pct(predicted, reference)
    return Row(kind=kind, case=case, metric=metric, unit=unit, predicted=predicted, reference=reference,
               error_pct=err, tolerance_pct=tolerance_pct, within=abs(err) <= tolerance_pct, source=source)


#: What a row without a prediction shows as its predicted value.
NO_PREDICTION_TEXT = "-"


def no_prediction_row(*, kind: Kind, case: str, metric: str, unit: Unit, reference: int, source: str) -> Row:
    """A row for a reference memplan cannot predict yet: reported, never within, never failing the gate."""
    return Row(kind=kind, case=case, metric=metric, unit=unit, predicted=NO_PREDICTION_TEXT, reference=reference,
               error_pct=None, tolerance_pct=None, within=False, source=source, no_prediction=True)


def categorical_row(*, kind: Kind, case: str, metric: str, unit: Unit, predicted: str,
                    accepted: Sequence[str], source: str) -> Row:
    """A row that is within when ``predicted`` is one of ``accepted``."""
    return Row(kind=kind, case=case, metric=metric, unit=unit, predicted=predicted, reference="|".join(accepted),
               error_pct=None, tolerance_pct=None, within=predicted in accepted, source=source)


@dataclass(frozen=True, slots=True, kw_only=True)
class KindSummary:
    """Accuracy of one reference kind."""

    kind: Kind
    """The kind."""
    num_cases: int
    """Distinct cases."""
    num_rows: int
    """Comparisons (a case can have several metrics)."""
    num_within: int
    """Rows within tolerance."""
    num_known_misses: int
    """Rows outside tolerance that ``known_misses.toml`` lists with a reason."""
    num_gate_failures: int
    """Rows that fail the gate (unlisted misses and stale known misses)."""
    num_no_prediction: int
    """Rows memplan cannot predict yet (:attr:`Status.NO_PREDICTION`)."""
    median_abs_error_pct: float | None
    """Median ``|error|`` over the numeric rows (known misses included); None without numeric rows."""
    worst_abs_error_pct: float | None
    """Largest ``|error|`` over the numeric rows."""
    worst_case: str | None
    """``case:metric`` of the largest error."""


def summarize(kind: Kind, rows: Sequence[Row]) -> KindSummary:
    """Cases, within counts and median / worst absolute error of ``kind``'s rows."""
    mine = [r for r in rows if r.kind is kind]
    numeric = [r for r in mine if r.error_pct is not None]
    worst = max(numeric, key=lambda r: abs(r.error_pct or 0.0), default=None)
    return KindSummary(
        kind=kind, num_cases=len({r.case for r in mine}), num_rows=len(mine),
        num_within=sum(r.within for r in mine),
        num_known_misses=sum(r.status is Status.KNOWN_MISS for r in mine),
        num_gate_failures=sum(r.gate_fails for r in mine),
        num_no_prediction=sum(r.no_prediction for r in mine),
        median_abs_error_pct=statistics.median(abs(r.error_pct or 0.0) for r in numeric) if numeric else None,
        worst_abs_error_pct=abs(worst.error_pct or 0.0) if worst else None,
        worst_case=f"{worst.case}:{worst.metric}" if worst else None)
