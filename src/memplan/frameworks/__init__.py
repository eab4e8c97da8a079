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
