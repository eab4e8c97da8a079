"""verl references: real FSDP2 on the CPU (``validation/fsdp_cpu/``) and verl's step code under fake tensors
(``validation/verl_fake/``), both written by ``memplan trace MODEL --framework verl`` (scripts/gen_verl_references.py).

Metrics per record, from the busiest rank's steady-state iteration:

- fsdp-cpu: ``<phase>_rank_peak`` for each traced phase (log_prob; for the actor also forward, backward,
  optimizer_step): the rank's total bytes at that phase's peak (device and host together: one memory on a CPU).
- verl-fake: ``<phase>_transient``: activation + temp at the phase's transient peak.

memplan has no FSDP/verl prediction yet: :func:`predict_verl` is the hook, and until it returns numbers every
row is :attr:`memplan.validation.rows.Status.NO_PREDICTION`, shown in the report and never failing the gate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memplan.validation.policy import Policy
from memplan.validation.rows import Kind, Row, Unit, no_prediction_row, numeric_row
from memplan.validation.traces import load_records, steady_iteration

#: Directories of the two kinds, relative to the validation directory.
FSDP_CPU_DIR = Path("fsdp_cpu")
VERL_FAKE_DIR = Path("verl_fake")

#: Phases in the order a record's iteration holds them.
VERL_PHASES = ("log_prob", "forward", "backward", "optimizer_step")

#: Categories of a fake trace's transient memory.
FAKE_TRANSIENT = ("activation", "temp")


def predict_verl(kind: Kind, record: dict[str, Any]) -> dict[str, int] | None:
    """memplan's value of each metric of ``record``, or None while memplan has no FSDP/verl prediction.

    The FSDP formulas (``memory/fsdp.py``) and the verl Job (``frameworks/verl/``) are being written; wire them
    here (per-rank states + per-phase transients of the record's ``config``) when they land.
    """
    del kind, record
    return None


def reference_metrics(kind: Kind, record: dict[str, Any]) -> dict[str, int]:
    """metric -> reference bytes of ``record`` (busiest rank, steady iteration)."""
    ranks = record["measured"]["ranks"]
    if kind is Kind.FSDP_CPU:
        busiest = max(ranks, key=lambda r: int(r["peak_bytes"]))
        steady = steady_iteration(busiest)
        return {f"{p}_rank_peak": int(steady[p]["total"]) for p in VERL_PHASES if p in steady}
    rank = ranks[0]
    transient = steady_iteration({"iterations": rank["transient_iterations"]})
    return {f"{p}_transient": sum(int(transient[p][c]) for c in FAKE_TRANSIENT) for p in VERL_PHASES if p in transient}


def _rows_of(kind: Kind, directory: Path, validation_dir: Path, policy: Policy) -> list[Row]:
    rows: list[Row] = []
    for path, record in load_records(validation_dir / directory):
        source = str(path.relative_to(validation_dir))
        predicted = predict_verl(kind, record)
        for metric, reference in reference_metrics(kind, record).items():
            if predicted is None or metric not in predicted:
                rows.append(no_prediction_row(kind=kind, case=record["case"], metric=metric, unit=Unit.BYTES,
                                              reference=reference, source=source))
                continue
            rows.append(numeric_row(kind=kind, case=record["case"], metric=metric, unit=Unit.BYTES,
                                    predicted=predicted[metric], reference=reference,
                                    tolerance_pct=policy.tolerance(kind, metric, record), source=source))
    return rows


def fsdp_cpu_rows(validation_dir: Path, policy: Policy) -> list[Row]:
    """The rows of every ``validation/fsdp_cpu`` record."""
    return _rows_of(Kind.FSDP_CPU, FSDP_CPU_DIR, validation_dir, policy)


def verl_fake_rows(validation_dir: Path, policy: Policy) -> list[Row]:
    """The rows of every ``validation/verl_fake`` record."""
    return _rows_of(Kind.VERL_FAKE, VERL_FAKE_DIR, validation_dir, policy)
