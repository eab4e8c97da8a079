"""Traced RL references (``validation/traced_rl/*.json``): one role of an OpenRLHF ``train_ppo_ray`` run.

Each record is a ``memplan trace MODEL --method ppo|grpo|reinforce|rloo --role actor|critic|ref|reward``
measurement (fake engine, one rank at world size 1): per iteration the role's make-experience forward and,
for the actor and critic, its training step (forward, backward, optimizer step), with MemTracker's bytes
per category at each phase's total peak (``iterations``) and at its activation + temp peak
(``transient_iterations``). See ``src/memplan/tracing/rl_steps.py`` for what is mirrored from OpenRLHF
v0.11.0 (OpenRLHF/OpenRLHF@3c3be62).

memplan predicts the same run with its RL estimate (:func:`memplan.api.estimate` → ``jobs/rl_estimate.py``)
for the record's flags, every role on its own single GPU, OpenRLHF's torch log-prob fallback
(:attr:`LogProbImpl.TORCH_CHUNKED`, what a CPU trace runs) and the attention as traced. Metrics, each the
GPU ``activation`` + ``temp`` bytes of the role against the trace's activation + temp peak of the
steady-state iteration:

- ``make_experience_transient`` (every role): the ``make_experience`` phase of the role's GPU in the
  estimate;
- ``training_transient`` (actor, critic): the largest activation + temp of the training sub-phases
  (forward, backward, optimizer step) of the role's micro-step, from the transient model the RL estimate
  builds the role with (``memory/transient.py::training_transients`` with the role's activation and head
  configuration, as ``jobs/roles.py::role_memory`` makes them). The estimate's TRAINING phase itself is the
  sub-phase with the largest *total*, and its backward moment is chosen with DeepSpeed's gradient buffers
  of that moment (``memory/grad_timeline.py``): the trace hands no gradients to buckets, so only the
  transient peak is comparable;
- ``optimizer_step_transient`` (actor): what the actor's training step still holds while the optimizer
  steps (OpenRLHF's ``training_step`` keeps ``output`` with its fp32 logits until it returns);
- ``peak_phase`` (actor, critic): the phase with the largest total without ``overhead`` terms, among
  make_experience and the training sub-phases as ``rl_estimate.training_activity`` weighs them (the role's
  state terms of each sub-phase plus its activity there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memplan.api import command_for, estimate, resolve_command
from memplan.frameworks.openrlhf.rl_job import build_rl_job
from memplan.jobs.job import GpuGroup, Role, RoleName
from memplan.jobs.rl_estimate import TRAIN_SUBPHASES
from memplan.jobs.result import DeviceEstimate, Estimate
from memplan.jobs.roles import RoleMemory, role_memory
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.memory.logits import LogProbImpl
from memplan.model import load_model_spec
from memplan.validation.policy import Policy
from memplan.validation.rows import Kind, Row, Unit, categorical_row, numeric_row
from memplan.validation.traces import STEADY_ITERATION, load_records

#: Directory of the RL records, relative to the validation directory.
TRACED_RL_DIR = Path("traced_rl")

#: Categories that make up transient memory.
TRANSIENT = (Category.ACTIVATION, Category.TEMP)

#: Roles of a ``train_ppo_ray`` run and whether each is trained.
TRAINED_ROLES = ("actor", "critic")
ALL_ROLES = ("actor", "critic", "ref", "reward")

#: The trace's phases of one iteration, in order (memory/breakdown.py ``Phase`` values).
TRAINING_PHASES = tuple(str(p) for p in TRAIN_SUBPHASES)


def estimate_flags(config: dict[str, Any]) -> list[str]:
    """The ``train_ppo_ray`` flags of a traced RL record: every role on one GPU of its own, and one micro-batch
    per optimizer step (``train_batch_size`` = ``micro_train_batch_size``), as the trace runs it."""
    flags = ["--prompt_max_len", str(config["prompt_max_len"]), "--generate_max_len", str(config["generate_max_len"]),
             "--micro_train_batch_size", str(config["micro_train_batch_size"]),
             "--train_batch_size", str(config["micro_train_batch_size"]),  # one micro-step per optimizer step
             "--micro_rollout_batch_size", str(config["micro_rollout_batch_size"]),
             "--init_kl_coef", repr(float(config["init_kl_coef"])),
             "--attn_implementation", str(config["traced_attn_implementation"]),
             "--zero_stage", str(config["zero_stage"]), "--param_dtype", str(config["param_dtype"]),
             "--reward_pretrain", str(config["reward_pretrain"])]
    if config["gradient_checkpointing"]:
        flags.append("--gradient_checkpointing")
    if config["use_kl_loss"]:
        flags.append("--use_kl_loss")
    if config.get("entropy_loss_coef") is not None:
        flags += ["--entropy_loss_coef", repr(float(config["entropy_loss_coef"]))]
    for key in ("ref_pretrain", "critic_pretrain"):
        if config.get(key):
            flags += [f"--{key}", str(config[key])]
    for role in ALL_ROLES:
        flags += [f"--{role}_num_nodes", "1", f"--{role}_num_gpus_per_node", "1"]
    return flags


def predict_rl(record: dict[str, Any]) -> Estimate:
    """memplan's RL estimate of the run a record traced (CPU log-prob path, attention as traced)."""
    config = record["config"]
    return estimate(str(config["model"]), str(config["method"]), estimate_flags(config),
                    logprob_impl=LogProbImpl.TORCH_CHUNKED)


def role_device(est: Estimate, role: str) -> DeviceEstimate:
    """The GPU (group) the role runs on."""
    return next(d for d in est.devices if role in d.roles)


def _transient(terms: Any) -> int:
    return sum(t.bytes for t in terms if t.device == Device.GPU and t.category in TRANSIENT)


def _no_overhead(terms: Any) -> int:
    return sum(t.bytes for t in terms if t.device == Device.GPU and t.category != Category.OVERHEAD)


def device_phase_terms(device: DeviceEstimate, phase: Phase) -> tuple[Term, ...]:
    """Every term of ``device`` in RL ``phase``."""
    return next(u.terms for u in device.phases if u.phase == phase)


def rl_role(record: dict[str, Any], role: str) -> tuple[Role, GpuGroup, LogProbImpl]:
    """The resolved role of the record's run as the RL estimate builds it, its GPU group and log-prob path."""
    config = record["config"]
    run = resolve_command(command_for(str(config["model"]), str(config["method"]), estimate_flags(config)))
    rl, _ = build_rl_job(run.values, version=run.version, load=load_model_spec, command=run.command,
                         logprob_impl=LogProbImpl.TORCH_CHUNKED)
    resolved = rl.job.role(RoleName(role))
    assert resolved is not None
    return resolved, next(g for g in rl.job.groups if g.name == resolved.group), rl.job.logprob_impl


def rl_role_memory(record: dict[str, Any], role: str) -> RoleMemory:
    """The role's memory as ``estimate_rl`` builds a trained role (``role_memory`` with forward phases FORWARD
    and MAKE_EXPERIENCE)."""
    resolved, group, logprob_impl = rl_role(record, role)
    return role_memory(resolved, group, logprob_impl, forward_phases=(Phase.FORWARD, Phase.MAKE_EXPERIENCE))


def training_subphase_terms(mem: RoleMemory) -> dict[str, list[Term]]:
    """The role's GPU terms at each training sub-phase, as ``rl_estimate.training_activity`` compares them:
    resident state (``phase=None``), that sub-phase's state terms, and the role's activity in it."""
    resident = [t for t in mem.gpu_terms if t.phase is None]
    return {str(sub): resident + [t for t in mem.gpu_terms if t.phase == sub] + list(mem.activity.get(sub, ()))
            for sub in TRAIN_SUBPHASES}


def training_transient_terms(mem: RoleMemory) -> dict[str, tuple[Term, ...]]:
    """The role's transient peak in each training sub-phase: ``transient`` (its own computation before
    DeepSpeed's gradient buffers are placed)."""
    return {str(sub): mem.transient.get(sub, ()) for sub in TRAIN_SUBPHASES}


def _steady(rank: dict[str, Any], key: str) -> dict[str, dict[str, int]]:
    iterations: dict[str, dict[str, dict[str, int]]] = rank[key]
    return iterations[STEADY_ITERATION if STEADY_ITERATION in iterations else max(iterations, key=int)]


def _traced_transient(snap: dict[str, int]) -> int:
    return sum(int(snap.get(str(c), 0)) for c in TRANSIENT)


def _rows_of(record: dict[str, Any], source: str, policy: Policy) -> list[Row]:
    role = str(record["config"]["role"])
    rank = record["measured"]["ranks"][0]
    transient, totals = _steady(rank, "transient_iterations"), _steady(rank, "iterations")
    device = role_device(predict_rl(record), role)

    def row(metric: str, predicted: int, reference: int) -> Row:
        return numeric_row(kind=Kind.TRACED, case=record["case"], metric=metric, unit=Unit.BYTES, predicted=predicted,
                           reference=reference, tolerance_pct=policy.tolerance(Kind.TRACED, metric, record),
                           source=source)

    experience = device_phase_terms(device, Phase.MAKE_EXPERIENCE)
    rows = [row("make_experience_transient", _transient(experience), _traced_transient(transient["make_experience"]))]
    if role not in TRAINED_ROLES:
        return rows
    mem = rl_role_memory(record, role)
    transients = training_transient_terms(mem)
    rows.append(row("training_transient", max(_transient(ts) for ts in transients.values()),
                    max(_traced_transient(transient[p]) for p in TRAINING_PHASES)))
    if role == "actor":
        rows.append(row("optimizer_step_transient", _transient(transients["optimizer_step"]),
                        _traced_transient(transient["optimizer_step"])))
    subphases = training_subphase_terms(mem)
    predicted = {"make_experience": _no_overhead(experience), **{p: _no_overhead(ts) for p, ts in subphases.items()}}
    traced = {p: int(totals[p]["total"]) for p in ("make_experience", *TRAINING_PHASES)}
    rows.append(categorical_row(kind=Kind.TRACED, case=record["case"], metric="peak_phase", unit=Unit.PHASE,
                                predicted=max(predicted, key=lambda p: predicted[p]),
                                accepted=[max(traced, key=lambda p: traced[p])], source=source))
    return rows


def rl_traced_rows(validation_dir: Path, policy: Policy) -> list[Row]:
    """The rows of every RL record under ``validation_dir/traced_rl``."""
    rows: list[Row] = []
    for path, record in load_records(validation_dir / TRACED_RL_DIR):
        rows += _rows_of(record, str(path.relative_to(validation_dir)), policy)
    return rows
