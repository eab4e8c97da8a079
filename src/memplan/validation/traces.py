"""Traced and deepspeed-cpu references (``validation/traced/*.json``, ``validation/deepspeed_cpu/*.json``).

Both hold ``memplan trace`` records: the configuration, the command that reproduced it, and per rank the
bytes per iteration, phase and category that PyTorch's ``MemTracker`` measured (schema in the files and
their READMEs). memplan predicts what the trace ran: OpenRLHF's torch log-prob fallback
(:attr:`LogProbImpl.TORCH_CHUNKED`) and the attention implementation as traced
(``traced_attn_implementation``: ``flash_attention_2`` runs as ``sdpa`` on a CPU).

traced (fake engine: DeepSpeed's optimizer emulated in torch, without its buckets and flat copies, see the
records' ``emulated``): the transient memory of the forward and of the backward, i.e. memplan's
``activation`` + ``temp`` terms of that phase against the trace's ACT + TEMP at that phase's peak in the
steady-state iteration, and the phase that peaks (predicted without ``overhead`` terms, which no trace
sees).

deepspeed-cpu (real DeepSpeed on the CPU accelerator): each rank's peak against memplan's per-rank peak
without ``overhead`` terms. On the CPU accelerator offloaded state lives in the same memory as the rest, so
memplan's host (CPU) terms of the rank are added to its GPU terms, phase by phase.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memplan.errors import ConfigError
from memplan.jobs.result import Estimate
from memplan.memory.breakdown import Category, Device
from memplan.memory.logits import LogProbImpl
from memplan.validation.commands import parse_command, predict, with_flag
from memplan.validation.policy import Policy
from memplan.validation.rows import Kind, Row, Unit, categorical_row, numeric_row

#: Directories of the two kinds, relative to the validation directory.
TRACED_DIR = Path("traced")
DEEPSPEED_CPU_DIR = Path("deepspeed_cpu")

#: The steady-state iteration (the optimizer state exists from the first step on; reference/tracing.md §1).
STEADY_ITERATION = "2"

#: Training phases a trace records.
TRAIN_PHASES = ("forward", "backward", "optimizer_step")

#: Phases whose transient memory is compared (the optimizer step's transient is what the loop carries).
TRANSIENT_PHASES = ("forward", "backward")

#: Categories that make up a phase's transient memory.
TRANSIENT = (Category.ACTIVATION, Category.TEMP)


def load_records(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(path, record)`` for every ``*.json`` in ``directory`` (sorted), none when it does not exist."""
    if not directory.is_dir():
        return []
    return [(p, json.loads(p.read_text(encoding="utf-8"))) for p in sorted(directory.glob("*.json"))]


def steady_iteration(rank: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The per-phase category bytes of the steady-state iteration (the last one if there is no second)."""
    iterations: dict[str, dict[str, dict[str, int]]] = rank["iterations"]
    key = STEADY_ITERATION if STEADY_ITERATION in iterations else max(iterations, key=int)
    return iterations[key]


def transient_reference(rank: dict[str, Any], phase: str, source: str) -> int:
    """The traced activation + temp peak of ``phase`` in the steady iteration (``transient_iterations``,
    recorded by tracing/track.py apart from the phase's total peak)."""
    iterations = rank.get("transient_iterations") or {}
    key = STEADY_ITERATION if STEADY_ITERATION in iterations else max(iterations, key=int, default=None)
    snap = iterations.get(key, {}).get(phase) if key is not None else None
    if snap is None:
        raise ConfigError(source, f"no activation + temp peak of {phase} (transient_iterations); regenerate the "
                                  "record with scripts/gen_references.py")
    return sum(int(snap.get(str(c), 0)) for c in TRANSIENT)


def predict_trace(record: dict[str, Any]) -> Estimate:
    """memplan's estimate of what a trace ran (CPU log-prob path, attention as traced)."""
    pred = parse_command(record["command"])
    config = record.get("config", {})
    flags = pred.flags
    traced_attn = config.get("traced_attn_implementation")
    if traced_attn:
        flags = with_flag(flags, "--attn_implementation", traced_attn)
    if config.get("micro_train_batch_size"):
        # A trace steps after every micro-batch (tracing/ds_config.py: gradient_accumulation_steps 1).
        flags = with_flag(flags, "--train_batch_size",
                          str(int(config["micro_train_batch_size"]) * int(config.get("gpus") or 1)))
    pred = type(pred)(model=pred.model, method=pred.method, options=pred.options, flags=flags)
    return predict(pred, logprob_impl=LogProbImpl.TORCH_CHUNKED)


def _phase_terms(est: Estimate, phase: str) -> list[Any]:
    device = max(est.devices, key=lambda d: d.peak_bytes)
    return [t for usage in device.phases if str(usage.phase) == phase for t in usage.terms]


def predicted_transient(est: Estimate, phase: str) -> int:
    """The busiest device's transient peak in ``phase``: its ``transient_bytes`` (the computation's own
    worst moment, which a trace's ACT + TEMP peak measures), else the GPU ``activation`` + ``temp`` terms
    at the phase's peak."""
    device = max(est.devices, key=lambda d: d.peak_bytes)
    usage = next((u for u in device.phases if str(u.phase) == phase), None)
    if usage is not None and usage.transient_bytes is not None:
        return usage.transient_bytes
    return sum(t.bytes for t in _phase_terms(est, phase) if t.device == Device.GPU and t.category in TRANSIENT)


def predicted_rank_bytes(est: Estimate, phase: str, *, include_host: bool) -> int:
    """One rank's bytes in ``phase`` without ``overhead``: its GPU terms (+ its share of the node's CPU terms)."""
    gpu = sum(t.bytes for t in _phase_terms(est, phase)
              if t.device == Device.GPU and t.category != Category.OVERHEAD)
    if not include_host or not est.hosts:
        return gpu
    ranks_per_node = est.num_gpus // est.num_nodes
    host = max(est.hosts, key=lambda h: h.peak_bytes)
    cpu = sum(t.bytes for usage in host.phases if str(usage.phase) == phase for t in usage.terms
              if t.category != Category.OVERHEAD)
    return gpu + cpu // ranks_per_node


def _peak_phase(per_phase: dict[str, int]) -> str:
    return max(per_phase, key=lambda p: per_phase[p])


def traced_rows(validation_dir: Path, policy: Policy) -> list[Row]:
    """Forward and backward transient and the peak phase of every traced record."""
    rows = []
    for path, record in load_records(validation_dir / TRACED_DIR):
        source = str(path.relative_to(validation_dir))
        est = predict_trace(record)
        rank0 = record["measured"]["ranks"][0]
        steady = steady_iteration(rank0)
        for phase in TRANSIENT_PHASES:
            metric = f"{phase}_transient"
            rows.append(numeric_row(
                kind=Kind.TRACED, case=record["case"], metric=metric, unit=Unit.BYTES,
                predicted=predicted_transient(est, phase), reference=transient_reference(rank0, phase, source),
                tolerance_pct=policy.tolerance(Kind.TRACED, metric, record), source=source))
        phases = [p for p in TRAIN_PHASES if p in steady]
        predicted = {p: predicted_rank_bytes(est, p, include_host=False) for p in phases}
        rows.append(categorical_row(kind=Kind.TRACED, case=record["case"], metric="peak_phase", unit=Unit.PHASE,
                                    predicted=_peak_phase(predicted),
                                    accepted=[_peak_phase({p: int(steady[p]["total"]) for p in phases})],
                                    source=source))
    return rows


def deepspeed_cpu_rows(validation_dir: Path, policy: Policy) -> list[Row]:
    """Per-rank peak (and its phase) of every deepspeed-cpu record."""
    rows = []
    for path, record in load_records(validation_dir / DEEPSPEED_CPU_DIR):
        source = str(path.relative_to(validation_dir))
        est = predict_trace(record)
        ranks = record["measured"]["ranks"]
        busiest = max(ranks, key=lambda r: int(r["peak_bytes"]))
        phases = [p for p in TRAIN_PHASES if p in steady_iteration(busiest)]
        predicted = {p: predicted_rank_bytes(est, p, include_host=True) for p in phases}
        rows.append(numeric_row(kind=Kind.DEEPSPEED_CPU, case=record["case"], metric="rank_peak", unit=Unit.BYTES,
                                predicted=max(predicted.values()), reference=int(busiest["peak_bytes"]),
                                tolerance_pct=policy.tolerance(Kind.DEEPSPEED_CPU, "rank_peak", record),
                                source=source))
        rows.append(categorical_row(kind=Kind.DEEPSPEED_CPU, case=record["case"], metric="peak_phase",
                                    unit=Unit.PHASE, predicted=_peak_phase(predicted),
                                    accepted=[str(busiest["peak_phase"])], source=source))
    return rows
