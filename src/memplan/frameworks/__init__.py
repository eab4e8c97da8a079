"""Framework adapters and their registry: ``get(name)`` returns the adapter (a ``base.Framework``).

Each framework is one folder (``frameworks/<name>/``) that registers here; adapters are imported on first
use, so naming the registry costs nothing at import.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from memplan.errors import ConfigError

if TYPE_CHECKING:
    from memplan.frameworks.base import Framework

#: Registered frameworks: name -> ``module:attribute`` of the adapter object.
_REGISTRY: dict[str, str] = {"openrlhf": "memplan.frameworks.openrlhf.framework:FRAMEWORK",
                             "verl": "memplan.frameworks.verl.framework:FRAMEWORK"}


#: A word that names a framework's entry point in a launch command -> the framework (others: the default).
_ENTRY_POINTS: dict[str, str] = {"verl.trainer.main_ppo": "verl"}


def detect(command: str | list[str], default: str = "openrlhf") -> str:
    """The framework a launch command (or script) runs: ``verl`` for ``python3 -m verl.trainer.main_ppo``."""
    words = command if isinstance(command, list) else command.split()
    return next((_ENTRY_POINTS[w] for w in words if w in _ENTRY_POINTS), default)


def names() -> tuple[str, ...]:
    """Every registered framework, in registration order."""
    return tuple(_REGISTRY)


def register(name: str, target: str) -> None:
    """Register the adapter at ``target`` (``module:attribute``) as ``name``."""
    _REGISTRY[name] = target


def get(name: str = "openrlhf") -> Framework:
    """The adapter of framework ``name`` (ConfigError naming ``--framework`` when unknown)."""
    target = _REGISTRY.get(name)
    if target is None:
        raise ConfigError("--framework", f"unknown framework {name!r}; choose from {', '.join(_REGISTRY)}")
    module, _, attribute = target.partition(":")
    return getattr(import_module(module), attribute)  # type: ignore[no-any-return]
