"""OpenRLHF's side of planning: the base run of ``plan MODEL --method ...`` with the user's flags and
``--keep`` pins (``Framework.plan_run``), the pins read as flags, and candidate values re-resolved.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import Any

from memplan.errors import ConfigError
from memplan.frameworks.base import PlanRun
from memplan.frameworks.openrlhf.command import parse_command
from memplan.frameworks.openrlhf.flags import FlagKind, check_value, load_table, tables_with
from memplan.frameworks.openrlhf.job import SCRIPT_METHOD
from memplan.frameworks.openrlhf.knobs import knob_keys, resolved_values
from memplan.frameworks.openrlhf.rl_job import rl_roles
from memplan.frameworks.openrlhf.run import command_for, resolve_command
from memplan.jobs.job import RoleName
from memplan.jobs.knobs import KnobKey

#: The frozen partner of each single-model script that has one.
_PARTNER = {"train_dpo": "ref", "train_kto": "ref", "train_kd": "teacher"}


def _bool_word(text: str, location: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ConfigError(location, f"expected true or false, got {text!r}")


def parse_keep(items: Sequence[str], script: str, version: str) -> dict[str, Any]:
    """``--keep FLAG=VALUE`` items → canonical keys and typed values (``zero_stage=2``, ``--ds.zero_stage=2``)."""
    table = load_table(script, version)
    pinned: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        location = f"--keep {item}"
        if not sep or not name.strip("-"):
            raise ConfigError(location, "expected FLAG=VALUE, e.g. zero_stage=3 or adam_offload=false")
        spec, key = _keep_spec(name.strip(), script, table)
        if spec is None:
            raise ConfigError(location, f"not a flag of openrlhf.cli.{script}")
        if spec.kind in (FlagKind.STORE_TRUE, FlagKind.STORE_FALSE):
            value: Any = _bool_word(text, location)
            if spec.kind is FlagKind.STORE_FALSE and name.lstrip("-") == spec.option.lstrip("-") and key != name:
                value = not value
        elif spec.kind is FlagKind.INT:
            value = _number(int, text, location)
        elif spec.kind is FlagKind.FLOAT:
            value = _number(float, text, location)
        else:
            value = text
        pinned[key] = check_value(spec, value, location)
    return pinned


def _number(kind: type, text: str, location: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(location, f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def _keep_spec(name: str, script: str, table: Any) -> tuple[Any, str]:
    bare = name.lstrip("-")
    if bare in table.by_key:
        return table.by_key[bare][0], bare
    for other in tables_with(script):
        spec = other.by_option.get(f"--{bare}")
        if spec is not None:
            return spec, spec.key
    return None, bare


def plan_run(model: str, method: str, *, options: Sequence[str], keep: Sequence[str], version: str | None,
             searched: Callable[[bool], Collection[KnobKey]]) -> PlanRun:
    """The run every candidate starts from: OpenRLHF defaults, the user's flags and pins, the roles present.

    ``searched(rl)``: the knobs the planner chooses for an RL or a single-model run; a flag the user gave
    for one of them, or a ``--keep`` pin, fixes it.
    """
    notes: list[str] = []
    argv = command_for(model, method, list(options))
    run = resolve_command(argv, version=version, whole_run=False)
    notes.extend(run.notes)  # the OpenRLHF version assumed, flags not read
    given = parse_command(argv).values
    rl = run.script not in SCRIPT_METHOD
    keys = knob_keys()
    chosen = {keys[k] for k in searched(rl) if k in keys}
    pinned = {k: run.values[k] for k in given if k in chosen}
    pinned.update(parse_keep(keep, run.script, run.version))
    values = dict(run.values)
    if rl and RoleName.REWARD in rl_roles(values) and not values.get("reward_pretrain"):
        values["reward_pretrain"] = model
        notes.append(f"reward model assumed the same as the actor (--reward_pretrain {model}); "
                     "pass --reward_pretrain or --remote_rm_url to change it")
    if run.version == "0.8":
        for key, value in (("bf16", True), ("flash_attn", True)):
            if key not in given and key not in pinned:
                values[key] = value
        notes.append("OpenRLHF 0.8: --bf16 and --flash_attn added, as every official script passes them")
    values.update(pinned)
    values = resolved_values(run.script, values, run.version)
    roles = tuple(str(r) for r in rl_roles(values)) if rl else ()
    return PlanRun(run=replace(run, values=values, notes=()), rl=rl, roles=roles, pinned=pinned, notes=tuple(notes),
                   partner=None if rl else _PARTNER.get(run.script))
