"""Write an OpenRLHF launch command from canonical values: the inverse of ``parse_command``.

Only values that differ from OpenRLHF's default for the script and version are written, plus a few
essentials a reader expects to see (the model, ZeRO stage, precision, micro batch, actor layout).
A model given by a bundled preset's short name is written as the preset's hub id, which OpenRLHF can load.
Flags are spelled for the requested version (legacy flat for 0.8/0.9, dotted for 0.11) and come
in the order of OpenRLHF's own ``--help``. ``parse_command`` reads the result back to the same
values.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from memplan.errors import ConfigError
from memplan.frameworks.openrlhf.defaults import to_version_keys
from memplan.frameworks.openrlhf.flags import FlagKind, FlagSpec, FlagTable, check_value, load_table, normalize_version
from memplan.frameworks.openrlhf.launchers import Launcher, LauncherWorld, world_args

DEFAULT_RAY_ADDRESS = "http://127.0.0.1:8265"
"""Ray dashboard address used in OpenRLHF's examples (``ray job submit --address=...``)."""

ESSENTIAL_KEYS: tuple[str, ...] = (
    "pretrain", "reward_pretrain", "zero_stage", "bf16", "param_dtype", "micro_train_batch_size",
    "actor_num_nodes", "actor_num_gpus_per_node",
)
"""Keys written even when equal to the default (when the version has them and a flag can say it)."""

MODEL_PATH_KEYS: tuple[str, ...] = ("pretrain", "reward_pretrain", "critic_pretrain", "ref_pretrain", "teacher_model")
"""Keys whose value OpenRLHF passes to ``from_pretrained`` (a hub id or a local path; ``reward_pretrain`` may
list several, comma-separated: openrlhf/cli/train_ppo_ray.py@v0.11.0 ``reward_pretrain.split(",")``)."""

_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")
_SAFE_ADDRESS = re.compile(r"^[\w@%+=:,./-]+$")


def format_command(script: str, values: Mapping[str, Any], *, launcher: Launcher | str | None = None,
                   world: LauncherWorld | None = None, version: str | None = None,
                   ray_address: str = DEFAULT_RAY_ADDRESS, multiline: bool = False) -> str:
    """A launch command for ``script`` that sets ``values`` (canonical keys) in OpenRLHF ``version``.

    ``launcher`` defaults to ray for train_ppo_ray and deepspeed otherwise; ``world`` gives the
    deepspeed/torchrun world-size flags. ``multiline`` puts each flag on its own continued line.
    """
    version = normalize_version(version)
    table = load_table(script, version)
    chosen = Launcher(launcher) if launcher is not None else _default_launcher(script)
    groups = [_launcher_words(chosen, script, world, ray_address)]
    groups += _flag_groups(table, _wanted(table, loadable_models(values)))
    separator = " \\\n    " if multiline else " "
    return separator.join(" ".join(_quote(w) for w in group) for group in groups if group)


def loadable_models(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every bundled preset's short name (``llama-3-8b``) replaced by its hub id
    (``meta-llama/Meta-Llama-3-8B``): OpenRLHF loads models with ``from_pretrained``, which knows hub ids and
    paths, not memplan's short names. memplan reads the hub id back to the same preset (``find_preset``)."""
    from memplan.model.presets import find_preset

    def hub_id(name: str) -> str:
        preset = find_preset(name)
        return preset.hub_id if preset is not None else name

    out = dict(values)
    for key in MODEL_PATH_KEYS:
        if isinstance(out.get(key), str) and out[key]:
            out[key] = ",".join(hub_id(part) for part in out[key].split(","))
    return out


def _default_launcher(script: str) -> Launcher:
    return Launcher.RAY if script == "train_ppo_ray" else Launcher.DEEPSPEED


def _launcher_words(launcher: Launcher, script: str, world: LauncherWorld | None, address: str) -> list[str]:
    module = f"openrlhf.cli.{script}"
    if launcher is Launcher.DEEPSPEED:
        return ["deepspeed", *world_args(launcher, world), "--module", module]
    if launcher is Launcher.TORCHRUN:
        return ["torchrun", *world_args(launcher, world), "-m", module]
    if launcher is Launcher.PYTHON:
        return ["python3", "-m", module]
    if launcher is Launcher.RAY:
        return ["ray", "job", "submit", _RawWord(_address_word(address)), "--", "python3", "-m", module]
    return [module]


class _RawWord(str):
    """A word already quoted for the shell."""


def _address_word(address: str) -> str:
    if _SAFE_ADDRESS.match(address):
        return f'--address="{address}"'
    return "--address=" + shlex.quote(address)


def _quote(word: str) -> str:
    return word if isinstance(word, _RawWord) else shlex.quote(word)


def _wanted(table: FlagTable, values: Mapping[str, Any]) -> dict[str, Any]:
    """The values to write: non-default ones, plus essentials; every key must exist in the version."""
    given = to_version_keys(values, table.version)
    wanted: dict[str, Any] = {}
    for key, value in given.items():
        if key not in table.by_key:
            raise ConfigError(key, f"not a flag of openrlhf.cli.{table.script} in OpenRLHF {table.version}")
        value = check_value(table.by_key[key][0], value)
        if value != table.default(key) or key in ESSENTIAL_KEYS:
            wanted[key] = value
    return wanted


def _flag_groups(table: FlagTable, wanted: dict[str, Any]) -> list[list[str]]:
    groups: list[list[str]] = []
    done: set[str] = set()
    for spec in table.flags:
        if spec.key in done or not any(k in wanted for k in spec.keys):
            continue
        value = _shared_value(table, spec, wanted)
        words = _express(spec, value)
        if words is not None:
            groups.append(words)
            done.update(spec.keys)
    for key in wanted.keys() - done:
        value = wanted[key]
        if key in ESSENTIAL_KEYS and value == table.default(key):
            continue
        raise ConfigError(key, f"OpenRLHF {table.version} has no flag of openrlhf.cli.{table.script} "
                          f"that sets it to {value!r}")
    return groups


def _shared_value(table: FlagTable, spec: FlagSpec, wanted: dict[str, Any]) -> Any:
    """The one value a flag that sets several keys (--ref_reward_offload) must carry."""
    values = [wanted.get(k, table.default(k)) for k in spec.keys]
    if any(v != values[0] for v in values[1:]):
        names = ", ".join(spec.keys)
        raise ConfigError(spec.key, f"OpenRLHF {table.version} sets {names} together ({spec.option}); "
                          f"they must be equal, got {values}")
    return values[0]


def _express(spec: FlagSpec, value: Any) -> list[str] | None:
    """The words that give ``value`` through ``spec``, or None if this flag cannot say it."""
    if spec.kind is FlagKind.STORE_TRUE:
        return [spec.option] if value is True else None
    if spec.kind is FlagKind.STORE_FALSE:
        return [spec.option] if value is False else None
    if value is None:
        return None
    if spec.nargs is None:
        text = _scalar_word(spec, value)
        return [f"{spec.option}={text}"] if text.startswith("-") else [spec.option, text]
    items = [value] if isinstance(value, str) else list(value)
    return [spec.option, *(_list_word(spec, item) for item in items)]


def _scalar_word(spec: FlagSpec, value: Any) -> str:
    if spec.kind is FlagKind.FLOAT:
        return repr(float(value))
    return str(value)


def _list_word(spec: FlagSpec, value: Any) -> str:
    """One element of a multi-value flag; it must not look like an option to argparse."""
    text = _scalar_word(spec, value)
    if text.startswith("-") and not _NEGATIVE_NUMBER.match(text) and spec.kind is FlagKind.FLOAT:
        text = format(Decimal(text), "f")
    if text.startswith("-") and not _NEGATIVE_NUMBER.match(text):
        raise ConfigError(spec.key, f"{text!r} cannot be passed to {spec.option} (argparse reads it as a flag)")
    return text
