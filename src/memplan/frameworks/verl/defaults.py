"""verl's config defaults per release and model engine, read from the generated tables in ``data/``.

Each table is every leaf of one flattened trainer config shipped in verl's wheel
(``verl/trainer/config/_generated_ppo_trainer.yaml`` for ``model_engine=dp``, and the megatron,
torchtitan and veomni variants), written by ``scripts/gen_verl_defaults.py``. Keys are full dotted
Hydra paths; interpolations (``${...}``) are kept as typed and resolved after the overrides.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any

from memplan.errors import ConfigError

#: Releases memplan has tables for, oldest first: the previous line (0.8.x; 0.8.0 is its newest wheel on
#: PyPI), 0.9.0 (the release whose examples the GitHub snapshot holds; 0.9.1 removed keys they use, e.g.
#: ``actor.megatron.grad_offload``) and the latest release.
VERSIONS: tuple[str, ...] = ("0.8.0", "0.9.0", "0.9.1")
#: The release memplan assumes when none is given.
LATEST = VERSIONS[-1]


class Engine(StrEnum):
    """verl's ``model_engine`` config group (``verl/trainer/config/model_engine/*.yaml``)."""

    DP = "dp"
    """FSDP/FSDP2 workers (``ppo_trainer``'s default)."""
    MEGATRON = "megatron"
    """Megatron-LM workers (``--config-name ppo_megatron_trainer`` or ``model_engine=megatron``)."""
    TORCHTITAN = "torchtitan"
    """TorchTitan workers."""
    VEOMNI = "veomni"
    """VeOmni workers."""


class Kind(StrEnum):
    """The type of a default as the yaml holds it."""

    NULL = "null"
    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    STR = "str"
    LIST = "list"
    DICT = "dict"
    """An empty mapping (``engine_kwargs.vllm: {}``): keys below it are added with ``+``."""
    INTERPOLATION = "interpolation"
    """A ``${...}`` string, resolved against the final config."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Default:
    """One leaf of verl's config."""

    kind: Kind
    """Its type in the yaml."""
    value: Any
    """Its default (None for null; the ``${...}`` text for an interpolation)."""
    line: int
    """Line in the generated yaml (for citations)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DefaultTable:
    """Every leaf of verl's composed PPO config for one release and model engine."""

    version: str
    """verl release (``0.9.1``)."""
    engine: Engine
    """Model engine the config was composed with."""
    source: str
    """File inside the wheel the table was read from."""
    wheel: str
    """Wheel file name."""
    keys: MappingProxyType[str, Default]
    """Full dotted Hydra path -> its default."""


@cache
def load_table(version: str, engine: Engine = Engine.DP) -> DefaultTable:
    """The table of ``version`` (one of ``VERSIONS``) for ``engine``."""
    if version not in VERSIONS:
        raise ConfigError("version", f"memplan has verl defaults for {', '.join(VERSIONS)}, not {version!r}")
    name = f"defaults_{version}_{Engine(engine).value}.toml"
    data = tomllib.loads(resources.files("memplan.frameworks.verl").joinpath("data", name).read_text(encoding="utf-8"))
    keys = {}
    for key, row in data["keys"].items():
        value = json.loads(row["default_json"]) if "default_json" in row else row.get("default")
        keys[key] = Default(kind=Kind(row["kind"]), value=value, line=row["line"])
    return DefaultTable(version=data["version"], engine=Engine(data["engine"]), source=data["source"],
                        wheel=data["wheel"], keys=MappingProxyType(keys))


def normalize_version(text: str, location: str = "--framework-version") -> str:
    """The table release for a version as typed (``0.9``, ``v0.9.1`` -> ``0.9.1``; ``0.9.0`` -> ``0.9.0``).

    A release with a table is itself; another release of a line with a table maps to the line's newest
    table (``0.8.1`` -> ``0.8.0``, ``0.9`` -> ``0.9.1``); other lines are refused.
    """
    cleaned = text.strip().removeprefix("v")
    if cleaned in VERSIONS:
        return cleaned
    parts = cleaned.split(".")
    for version in reversed(VERSIONS):
        if parts[:2] == version.split(".")[:2]:
            return version
    lines = sorted({v[:3] + ".x" for v in VERSIONS})
    raise ConfigError(location, f"memplan reads verl {', '.join(lines)}, not {text!r}")
