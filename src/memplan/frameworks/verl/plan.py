"""verl's side of planning (``Framework.plan_run``): the base run of ``plan MODEL --framework verl --method ...``
with the user's ``key=value`` overrides and ``--keep`` pins, and the roles the run has.

verl places every role (actor, reference, critic) and the rollout engines on the same GPUs (the hybrid engine,
``verl/trainer/main_ppo.py`` one resource pool for all roles unless split by hand), so the plan is
``hybrid_only``: the planner searches the GPU count (``trainer.nnodes`` × ``trainer.n_gpus_per_node``), the
rollout TP and ``gpu_memory_utilization``, offload, checkpointing, chunked entropy and the micro batch or
token budget.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import Any

from memplan.errors import ConfigError
from memplan.frameworks.base import PlanRun
from memplan.frameworks.verl.defaults import LATEST, Engine, load_table, normalize_version
from memplan.frameworks.verl.hydra import OverrideKind, parse_override
from memplan.jobs.knobs import KnobKey


def parse_keep(items: Sequence[str], version: str) -> dict[str, Any]:
    """``--keep KEY=VALUE`` items → verl keys and their values (Hydra's value grammar)."""
    table = load_table(version, Engine.DP)
    pinned: dict[str, Any] = {}
    for item in items:
        location = f"--keep {item}"
        try:
            override = parse_override(item)
        except ConfigError as exc:
            raise ConfigError(location, exc.message) from None
        if override.kind is OverrideKind.DELETE or not override.has_value:
            raise ConfigError(location, "expected KEY=VALUE, e.g. "
                                        "actor_rollout_ref.actor.fsdp_config.param_offload=false")
        if override.key not in table.keys:
            raise ConfigError(location, f"not a key of verl {version}'s config")
        pinned[override.key] = override.value
    return pinned


def plan_run(model: str, method: str, *, options: Sequence[str], keep: Sequence[str], version: str | None,
             searched: Callable[[bool], Collection[KnobKey]]) -> PlanRun:
    """The run every candidate starts from: verl's defaults, the estimate's fills, the user's overrides and pins.

    An override the user gave for a searched knob, or a ``--keep`` pin, fixes that knob.
    """
    from memplan.frameworks.verl.framework import FRAMEWORK, KNOBS, verl_run

    release = normalize_version(version) if version else LATEST
    pinned = parse_keep(keep, release)
    clash = [k for k in pinned if any(parse_override(w).key == k for w in options)]
    if clash:
        raise ConfigError(f"--keep {clash[0]}", "also given as an override; give it once")
    run = FRAMEWORK.resolve_command(FRAMEWORK.command_for(model, method, list(options)), version=release)
    given = {parse_override(w).key for w in options}
    chosen = {KNOBS[k] for k in searched(True) if k in KNOBS}
    pinned = {**{k: run.values[k] for k in given if k in chosen and k in run.values}, **pinned}
    if pinned:
        run = FRAMEWORK.with_values(run, pinned)
    verl, _ = verl_run(run)
    # the lengths bound the token budget, the samples per step the GPU counts: written out, so the planner
    # reads them as knobs and the commands show them
    sizes = {k: v for k, v in (("data.max_prompt_length", verl.max_prompt_length),
                               ("data.max_response_length", verl.max_response_length),
                               ("data.train_batch_size", verl.train_batch_size),
                               ("actor_rollout_ref.rollout.n", verl.rollout_n)) if k not in run.values}
    if sizes:
        run = FRAMEWORK.with_values(run, sizes)
    roles = ("actor", *(("critic",) if verl.critic is not None else ()), *(("ref",) if verl.ref is not None else ()))
    notes = (f"verl {release}: every role and the rollout engines share the same GPUs (the hybrid engine); the plan "
             "chooses the GPU count, rollout TP and gpu_memory_utilization, offload, checkpointing, chunked entropy "
             "and the token budget (use_dynamic_bsz)",)
    return PlanRun(run=replace(run, notes=()), rl=True, roles=roles, pinned=pinned, notes=notes, hybrid_only=True)
