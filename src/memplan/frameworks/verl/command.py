"""A verl launch command or script -> its Hydra overrides applied to verl's defaults.

Reads ``python3 -m verl.trainer.main_ppo key=value ...`` (also ``python -m``, an environment prefix,
``ray job submit ... -- python3 -m ...``, ``--config-path``/``--config-name``), from one line or from a
pasted script (``set -x``, ``export VAR=...`` used as ``$VAR``/``${VAR}``, continuations, comments; the
shell part is ``frameworks.shell``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from memplan.errors import ConfigError
from memplan.frameworks.shell import read_script
from memplan.frameworks.verl.defaults import LATEST, Engine, load_table
from memplan.frameworks.verl.hydra import HydraConfig, Override, apply_overrides, parse_override

#: The module verl's PPO-family trainers are launched as (``verl/trainer/main_ppo.py``).
MODULE = "verl.trainer.main_ppo"
#: verl's own config names (``verl/trainer/config/``) -> the model engine they compose with; 0.8.0 and 0.9.1
#: ``ppo_megatron_trainer.yaml`` is ``defaults: [ppo_trainer, override model_engine: megatron]``.
CONFIG_NAMES = {"ppo_trainer": Engine.DP, "ppo_megatron_trainer": Engine.MEGATRON}
#: verl's config groups (the ``defaults`` list of ``verl/trainer/config/ppo_trainer.yaml``, 0.8.0 and 0.9.1).
CONFIG_GROUPS = {"model_engine"}
_SHELL_ARGUMENTS = {"$@", "$*", "${@}", "${*}"}
#: What a launch script finds in its environment when memplan reads it: an NVIDIA GPU node. verl's examples
#: pick their branch with ``DEVICE=${DEVICE:-$(python3 -c 'import torch_npu' ... && echo npu || echo gpu)}``
#: ("DEVICE is auto-detected by probing torch_npu; export DEVICE=gpu|npu only to override", e.g.
#: examples/grpo_trainer/run_qwen3_4b_fsdp.sh@v0.9.0 lines 9-10); memplan models GPUs, so the probe's answer
#: there is ``gpu``. A script that assigns DEVICE itself keeps its value.
SCRIPT_ENVIRONMENT = {"DEVICE": "gpu"}
_CONFIG_OPTIONS = {"--config-name": "name", "-cn": "name", "--config-path": "path", "-cp": "path",
                   "--config-dir": "dir", "-cd": "dir"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Invocation:
    """One ``main_ppo`` call found in a command or script."""

    overrides: tuple[Override, ...]
    """Its Hydra overrides in order (``hydra.*`` settings left out: they are Hydra's own)."""
    config_name: str
    """``--config-name`` (``ppo_trainer`` unless given), without ``.yaml``."""
    config_path: str | None
    """``--config-path`` as typed (None: verl's packaged configs)."""
    model_engine: str | None
    """A ``model_engine=...`` config-group choice, if given."""
    environment: tuple[tuple[str, str], ...]
    """Variables the script assigns, for ``${oc.env:...}``."""
    notes: tuple[str, ...] = ()
    """What the shell reader could not settle in the script (a branch it read every way)."""


def find_invocations(text: str) -> list[Invocation]:
    """Every ``python[3] -m verl.trainer.main_ppo ...`` call in ``text``, in order."""
    script = read_script(text, SCRIPT_ENVIRONMENT)
    commands, environment = script.commands, tuple(sorted(script.variables.items()))
    found = []
    for words in commands:
        for index in range(len(words) - 1):
            if words[index] == "-m" and words[index + 1] == MODULE and _runs_python(words[:index]):
                found.append(replace(_invocation(words[index + 2:], environment), notes=script.notes))
                break
    return found


def _runs_python(words: list[str]) -> bool:
    return any(w.rsplit("/", 1)[-1].startswith("python") for w in words)


def _invocation(arguments: list[str], environment: tuple[tuple[str, str], ...]) -> Invocation:
    options: dict[str, str] = {}
    overrides: list[Override] = []
    groups: dict[str, str] = {}
    index = 0
    while index < len(arguments):
        word = arguments[index]
        index += 1
        option, equals, value = word.partition("=")
        if option in _CONFIG_OPTIONS:
            if not equals:
                if index >= len(arguments):
                    raise ConfigError(option, "needs a value")
                value, index = arguments[index], index + 1
            options[_CONFIG_OPTIONS[option]] = value
            continue
        if word in _SHELL_ARGUMENTS or word in ("--multirun", "-m") or word.startswith("hydra."):
            continue
        if word.startswith("-"):
            raise ConfigError(word, "not an option of verl's Hydra entry point (it takes --config-path, "
                                    "--config-name and key=value overrides)")
        if option.lstrip("+~") in CONFIG_GROUPS or "@" in option or "/" in option:
            _check_group(option, value)
            groups[option.lstrip("+~")] = value
            continue
        overrides.append(parse_override(word))
    name = options.get("name", "ppo_trainer").removesuffix(".yaml")
    return Invocation(overrides=tuple(overrides), config_name=name, config_path=options.get("path"),
                      model_engine=groups.get("model_engine"), environment=environment)


def _check_group(option: str, value: str) -> None:
    """A config-group choice: only ``model_engine`` among verl's own options is read."""
    if option.lstrip("+~") == "model_engine" and value in {e.value for e in Engine}:
        return
    if option.lstrip("+~") == "model_engine":
        raise ConfigError(option, f"memplan reads the engines verl ships a flattened config for "
                                  f"({', '.join(e.value for e in Engine)}), not {value!r}")
    raise ConfigError(option, f"selects config {value!r} of a config group; memplan reads verl's packaged "
                              "configs composed by model_engine only (a recipe's own config is not verl's)")


def engine_of(invocation: Invocation) -> Engine:
    """The model engine: the config name's, changed by a ``model_engine=...`` override (a config group)."""
    if invocation.config_name not in CONFIG_NAMES:
        where = f" in {invocation.config_path}" if invocation.config_path else ""
        raise ConfigError("--config-name", f"{invocation.config_name!r}{where} is not one of verl's configs; "
                                           f"memplan reads {' and '.join(CONFIG_NAMES)}")
    if invocation.model_engine is not None:
        return Engine(invocation.model_engine)
    return CONFIG_NAMES[invocation.config_name]


def read_config(invocation: Invocation, version: str = LATEST) -> HydraConfig:
    """The config verl runs ``invocation`` with, in ``version``."""
    table = load_table(version, engine_of(invocation))
    return apply_overrides(table, invocation.overrides, dict(invocation.environment))


def single_invocation(text: str) -> Invocation:
    """The one ``main_ppo`` call of ``text`` (ConfigError if none, or several that differ)."""
    found = find_invocations(text)
    if not found:
        raise ConfigError("command", f"no `python3 -m {MODULE} ...` call found")
    if any(f != found[0] for f in found[1:]):
        raise ConfigError("command", f"the script calls {MODULE} {len(found)} times with different "
                                     "overrides; give one command")
    return found[0]
