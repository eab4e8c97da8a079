"""GPU-measured references (``validation/measured/*.json``, written by ``validation/gpu/measure.py``).

Each record holds the configuration, the ``memplan estimate``/``check`` command that predicts it, and per
phase of the measured (post-warm-up) step ``torch.cuda.max_memory_allocated``, ``max_memory_reserved`` and
the device's used memory (``mem_get_info``: CUDA context, NCCL and library workspaces included), with the
GPU, driver and package versions. Which prediction each metric is compared with:

- ``allocated_peak`` (max_memory_allocated) ↔ memplan's peak without ``overhead`` terms (allocated-equivalent);
- ``reserved_peak`` (max_memory_reserved) ↔ that peak with the caching allocator's reserve
  (``memory/overhead.py::reserved_bytes`` without its non-PyTorch part);
- ``device_used_peak`` (reserved + non-PyTorch memory) ↔ memplan's reserved peak, overhead included;
- ``peak_phase`` ↔ the phase of memplan's peak;
- rollout-style forward passes (``predict.compare = "transient"``): the forward's allocation above its start
  ↔ memplan's transient terms of that role in that phase (``predict.phase``, ``predict.role``).

Dry-run records (``dry_run: true``, CPU) check the harness, not memplan, and are skipped; so are cases
that failed (an OOM is recorded, not compared) and torch-emulated steps (no DeepSpeed buffers). Cases whose
predictor does not exist yet (``predict.compare = "pending"``: the verl FSDP2 suite, whose ``memplan estimate
--framework verl`` command is stored before memplan reads it) are not compared either; :func:`pending_cases`
lists them so the report can say how many wait.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memplan.jobs.result import DeviceEstimate
from memplan.memory.breakdown import Category, Device
from memplan.memory.logits import LogProbImpl
from memplan.validation.commands import parse_command, predict
from memplan.validation.policy import Policy
from memplan.validation.rows import Kind, Row, Unit, categorical_row, numeric_row
from memplan.validation.traces import TRANSIENT, load_records

#: Records directory, relative to the validation directory.
MEASURED_DIR = Path("measured")


def _overhead(device: DeviceEstimate) -> int:
    return sum(t.bytes for t in device.peak.terms if t.category == Category.OVERHEAD)


def _peak_rows(record: dict[str, Any], device: DeviceEstimate, policy: Policy, source: str) -> list[Row]:
    peak = record["measured"]["peak"]
    allocated = device.peak_bytes - _overhead(device)
    pairs = {"allocated_peak": (allocated, peak["max_memory_allocated"]),
             "reserved_peak": (device.reserved_bytes - _overhead(device), peak["max_memory_reserved"]),
             "device_used_peak": (device.reserved_bytes, peak["device_used"])}
    rows = [numeric_row(kind=Kind.MEASURED, case=record["case"], metric=metric, unit=Unit.BYTES,
                        predicted=predicted, reference=int(reference),
                        tolerance_pct=policy.tolerance(Kind.MEASURED, metric, record), source=source)
            for metric, (predicted, reference) in pairs.items()]
    rows.append(categorical_row(kind=Kind.MEASURED, case=record["case"], metric="peak_phase", unit=Unit.PHASE,
                                predicted=str(device.peak.phase), accepted=[str(peak["phase"])], source=source))
    return rows


def _transient_row(record: dict[str, Any], device: DeviceEstimate, policy: Policy, source: str) -> Row:
    spec = record["predict"]
    phase, role = spec["phase"], spec["role"]
    predicted = sum(t.bytes for usage in device.phases if str(usage.phase) == phase for t in usage.terms
                    if t.device == Device.GPU and t.category in TRANSIENT and t.path.startswith(f"{role}."))
    measured = record["measured"]["phases"][spec.get("measured_phase", "forward")]
    reference = int(measured["max_memory_allocated"]) - int(measured["allocated_at_start"])
    return numeric_row(kind=Kind.MEASURED, case=record["case"], metric="forward_transient", unit=Unit.BYTES,
                       predicted=predicted, reference=reference,
                       tolerance_pct=policy.tolerance(Kind.MEASURED, "forward_transient", record), source=source)


def latest_cases(validation_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(source, case record)`` of every measured case, the latest run winning for a case measured twice.

    A run file (``<run-id>.json``, run ids start with their UTC time) holds the run's hardware and versions
    and a ``cases`` list; dry runs, failed cases (``error``, an OOM included) and cases not meant for
    comparison (``predict.compare`` other than ``peak``/``transient``, e.g. a torch-emulated step) are left out.
    """
    latest: dict[str, tuple[str, dict[str, Any]]] = {}
    for path, run in load_records(validation_dir / MEASURED_DIR):
        if run.get("dry_run"):
            continue
        for case in run.get("cases", []):
            if case.get("error") is None and case["predict"].get("compare") in ("peak", "transient"):
                latest[case["case"]] = (str(path.relative_to(validation_dir)), case)
    return [latest[k] for k in sorted(latest)]


def pending_cases(validation_dir: Path) -> list[str]:
    """``source: case`` of every measured case (latest run per case, dry runs and failures left out) whose
    ``predict.compare`` is ``pending``: measured, stored, not yet predictable."""
    latest: dict[str, str] = {}
    for path, run in load_records(validation_dir / MEASURED_DIR):
        if run.get("dry_run"):
            continue
        for case in run.get("cases", []):
            if case.get("error") is None and case["predict"].get("compare") == "pending":
                latest[case["case"]] = f"{path.relative_to(validation_dir)}: {case['case']}"
    return [latest[k] for k in sorted(latest)]


def measured_rows(validation_dir: Path, policy: Policy) -> list[Row]:
    """Rows for every GPU-measured case (none yet when the directory is empty or absent)."""
    rows: list[Row] = []
    for source, record in latest_cases(validation_dir):
        spec = record["predict"]
        est = predict(parse_command(spec["command"]), logprob_impl=LogProbImpl(spec["logprob_impl"]))
        device = max(est.devices, key=lambda d: d.peak_bytes)
        if spec["compare"] == "transient":
            rows.append(_transient_row(record, device, policy, source))
        else:
            rows += _peak_rows(record, device, policy, source)
    return rows
