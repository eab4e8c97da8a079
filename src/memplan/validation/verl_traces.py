"""verl references: real FSDP2 on the CPU (``validation/fsdp_cpu/``) and verl's step code under fake tensors
(``validation/verl_fake/``), both written by ``memplan trace MODEL --framework verl`` (scripts/gen_verl_references.py).

Metrics per record, from the busiest rank's steady-state iteration:

- fsdp-cpu: ``<phase>_rank_peak`` for each traced phase (log_prob; for the actor also forward, backward,
  optimizer_step): the rank's total bytes at that phase's peak (device and host together: one memory on a CPU).
- verl-fake: ``<phase>_transient``: activation + temp at the phase's transient peak.

Plus ``rank_peak``: the busiest rank's peak over the steady iteration (fsdp-cpu), the figure the issue's
acceptance names.

:func:`predict_verl` rebuilds the traced role as memplan's typed ``Role`` (FSDP2 sharding of the record's
world, verl's dtypes, the record's micro-batch, one micro-batch per step, the torch log-prob path a CPU runs:
``LogProbImpl.TORCH_CHUNKED``) and takes the same per-rank figures from ``jobs/fsdp_role.py``: the states
resting on the rank plus each phase's worst moment (``jobs/fsdp_moments.py``). On a CPU device and host are
one memory, so host terms (a reference's CPU-offloaded shards) count too. verl-fake rows compare the model's
own transients (no FSDP: the fake trace runs the unsharded model).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from memplan.dtypes import DType
from memplan.jobs.fsdp_moments import backward_pass, forward_pass, head_of
from memplan.jobs.fsdp_role import fsdp_role_memory
from memplan.jobs.job import GpuGroup, Role, RoleName
from memplan.jobs.roles import activation_config, role_tree
from memplan.memory.activations import AttnImpl
from memplan.memory.breakdown import Phase
from memplan.memory.fsdp import FsdpSharding, FsdpVersion
from memplan.memory.logits import Head, LogProbImpl
from memplan.model import load_model_spec
from memplan.validation.policy import Policy
from memplan.validation.rows import Kind, Row, Unit, no_prediction_row, numeric_row
from memplan.validation.traces import load_records, steady_iteration

#: Directories of the two kinds, relative to the validation directory.
FSDP_CPU_DIR = Path("fsdp_cpu")
VERL_FAKE_DIR = Path("verl_fake")

#: Phases in the order a record's iteration holds them.
VERL_PHASES = ("log_prob", "forward", "backward", "optimizer_step")

#: Engines of the fake-tensor records: verl's log-prob and loss functions (fake), verl's engine step
#: (fake-engine, whose log-prob pass computes the entropy as the trainer asks: ``log_prob_entropy``).
FAKE_ENGINES = ("fake", "fake-engine")

#: Categories of a fake trace's transient memory.
FAKE_TRANSIENT = ("activation", "temp")


#: The log-prob pass each traced role runs (the actor's recompute, the reference's).
LOG_PROB_PHASE = {"actor": Phase.OLD_LOG_PROB, "ref": Phase.REF_LOG_PROB}
#: A record's phase → memplan's phase.
TRAIN_PHASES = {"forward": Phase.FORWARD, "backward": Phase.BACKWARD, "optimizer_step": Phase.OPTIMIZER_STEP}


def traced_role(record: dict[str, Any], repo_root: Path) -> Role:
    """The role a record traced, as memplan types it (module docstring)."""
    cfg = record["config"]
    model = cfg["model"]
    spec = load_model_spec(str(repo_root / model) if (repo_root / model).is_file() else model)
    actor = cfg["role"] == "actor"
    fake = record["engine"] in FAKE_ENGINES
    sharding = FsdpSharding(version=FsdpVersion.FSDP2, shard_size=int(cfg["world_size"]),
                            param_dtype=DType.FP32 if actor and not fake else DType.BF16, compute_dtype=DType.BF16,
                            reduce_dtype=DType.FP32, reshard_after_forward=bool(cfg["reshard_after_forward"]),
                            param_offload=False, optimizer_offload=False, cpu_offload=not actor,
                            cpu_offload_pinned=False, embeddings_wrapped=True, gloo=not fake)
    tokens = int(cfg["prompt_length"]) + int(cfg["response_length"])
    micro = int(cfg["micro_batch_size"])
    return Role(name=RoleName.ACTOR if actor else RoleName.REF, spec=spec, head=Head.LM, trained=actor, group="all",
                param_dtype=DType.BF16, sharding=sharding, lora=None, load_in_4bit=False,
                gradient_checkpointing=bool(cfg["gradient_checkpointing"]) and actor, attn_impl=AttnImpl.SDPA,
                micro_batch_size=1 if fake else micro, sequences_per_sample=1, seq_len=micro * tokens if fake else tokens,
                packing=fake, ring_size=1, ds_tp_size=1,
                entropy=bool(cfg.get("log_prob_entropy", cfg["entropy"])),
                entropy_in_loss=bool(cfg["entropy"]), autocast_head=True, grad_accum_steps=1)


def _fsdp_cpu_prediction(role: Role, world: int) -> dict[str, int]:
    log_prob = LOG_PROB_PHASE[str(role.name)]
    mem = fsdp_role_memory(role, GpuGroup(name="all", num_nodes=1, gpus_per_node=world), LogProbImpl.TORCH_CHUNKED,
                           forward_phases=(log_prob,), under_ray=False)
    states = sum(t.bytes for t in (*mem.gpu_terms, *mem.cpu_terms) if t.phase is None)
    phases = {"log_prob": log_prob, **(TRAIN_PHASES if role.trained else {})}
    out = {f"{name}_rank_peak": states + sum(t.bytes for t in mem.activity[phase]) for name, phase in phases.items()}
    out["rank_peak"] = max(out.values())
    return out


def _fake_prediction(role: Role) -> dict[str, int]:
    """The unsharded model's own transients per phase (no FSDP buffer, gradients dropped)."""
    tree = role_tree(role)
    name = str(role.name)
    fwd = replace(role, trained=False, gradient_checkpointing=False)
    cfg = activation_config(fwd, tree)
    head = head_of(role.spec, cfg, role=name, phase=Phase.OLD_LOG_PROB, impl=LogProbImpl.TORCH_CHUNKED,
                   entropy=role.entropy, entropy_chunk=None, fused=False)
    out = {"log_prob_transient": sum(t.bytes for t in forward_pass(role.spec, cfg, head, (), None, role=name,
                                                                    phase=Phase.OLD_LOG_PROB))}
    cfg = activation_config(role, tree)
    head = head_of(role.spec, cfg, role=name, phase=Phase.FORWARD, impl=LogProbImpl.TORCH_CHUNKED,
                   entropy=role.entropy_in_loss, entropy_chunk=None, fused=False)
    out["forward_transient"] = sum(t.bytes for t in forward_pass(role.spec, cfg, head, (), None, role=name,
                                                                  phase=Phase.FORWARD))
    out["backward_transient"] = sum(t.bytes for t in backward_pass(role.spec, cfg, head, (), None, role=name,
                                                                    accumulating=False))
    return out


def predict_verl(kind: Kind, record: dict[str, Any], repo_root: Path) -> dict[str, int]:
    """memplan's value of each metric of ``record`` (module docstring)."""
    role = traced_role(record, repo_root)
    if kind is Kind.FSDP_CPU:
        return _fsdp_cpu_prediction(role, int(record["config"]["world_size"]))
    return _fake_prediction(role)


def reference_metrics(kind: Kind, record: dict[str, Any]) -> dict[str, int]:
    """metric -> reference bytes of ``record`` (busiest rank, steady iteration)."""
    ranks = record["measured"]["ranks"]
    if kind is Kind.FSDP_CPU:
        busiest = max(ranks, key=lambda r: int(r["peak_bytes"]))
        steady = steady_iteration(busiest)
        phases = {f"{p}_rank_peak": int(steady[p]["total"]) for p in VERL_PHASES if p in steady}
        return {**phases, "rank_peak": max(phases.values())}
    rank = ranks[0]
    transient = steady_iteration({"iterations": rank["transient_iterations"]})
    return {f"{p}_transient": sum(int(transient[p][c]) for c in FAKE_TRANSIENT) for p in VERL_PHASES if p in transient}


def _rows_of(kind: Kind, directory: Path, validation_dir: Path, policy: Policy) -> list[Row]:
    rows: list[Row] = []
    for path, record in load_records(validation_dir / directory):
        source = str(path.relative_to(validation_dir))
        predicted = predict_verl(kind, record, validation_dir.parent)
        for metric, reference in reference_metrics(kind, record).items():
            if metric not in predicted:
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
