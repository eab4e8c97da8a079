"""Typed readers of verl config values: each names the key as the user typed it when the value is refused.

Counts are bounded by the caller; floats must be finite; a ``$((...))`` the shell reader left (bash
arithmetic over the script's integer variables) is evaluated; ``${oc.env:...}`` strings that are integers
are read as integers, as verl's dataclass fields convert them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from memplan.errors import ConfigError
from memplan.frameworks.shell_conditions import Unknowable, arithmetic
from memplan.frameworks.verl.hydra import HydraConfig, Unresolved

_DTYPES = {"fp16": "fp16", "float16": "fp16", "16": "fp16", "fp32": "fp32", "float32": "fp32", "32": "fp32",
           "bf16": "bf16", "bfloat16": "bf16"}
"""verl's precision spellings -> canonical (w:verl/utils/torch_dtypes.py:20-22 HALF/FLOAT/BFLOAT_LIST)."""


def read_value(config: HydraConfig, key: str) -> Any:
    """The resolved value of leaf or section ``key``; refused if deleted, unresolvable or ``???``."""
    if not config.has(key):
        raise ConfigError(config.location(key), f"missing from verl {config.table.version}'s config (deleted?)")
    value = config.get(key) if key in config.values else config.section(key)
    if isinstance(value, Unresolved):
        raise ConfigError(config.location(key), f"cannot resolve {value} (a shell or environment variable the "
                                                "script does not set, or a resolver memplan does not evaluate)")
    if value == "???":
        raise ConfigError(config.location(key), "required: verl's config leaves it ??? (set it)")
    return value


def integer(config: HydraConfig, key: str, low: int, high: int, meaning: str = "") -> int:
    value = read_value(config, key)
    if isinstance(value, str) and _ARITHMETIC.match(value):
        value = _arithmetic(value, config, key)
    elif isinstance(value, str) and _DECIMAL.match(value):
        value = int(value)  # ${oc.env:...} yields a string; verl's dataclass fields convert it
    if isinstance(value, bool) or not isinstance(value, int):
        shell = " (a shell variable the script does not assign?)" if isinstance(value, str) and "$" in value else ""
        raise ConfigError(config.location(key), f"expected an integer, got {value!r}{shell}")
    if not low <= value <= high:
        extra = f" ({meaning})" if meaning else ""
        raise ConfigError(config.location(key), f"must be between {low} and {high}{extra}, got {value}")
    return value


_ARITHMETIC = re.compile(r"^\$\(\((.*)\)\)$", re.DOTALL)
_DECIMAL = re.compile(r"^\s*[+-]?\d+\s*$")
def _arithmetic(text: str, config: HydraConfig, key: str) -> int:
    """A bash arithmetic expansion ``$(( a + b ))`` left by the shell reader, over the script's integer
    variables (``shell_conditions.arithmetic``: bash(1), ARITHMETIC EVALUATION). A name the script never
    assigns is refused, not read as bash's 0: it comes from the launching shell's environment, which memplan
    does not see, and a 0 would silently stand for it."""
    body = _ARITHMETIC.match(text).group(1)  # type: ignore[union-attr]
    try:
        return arithmetic(body, lambda name: config.environment.get(name) or ("0" if name in config.environment
                                                                              else None))
    except Unknowable as why:
        raise ConfigError(config.location(key), f"cannot evaluate {text!r}: {why}") from None
    except (ValueError, SyntaxError, RecursionError):
        raise ConfigError(config.location(key), f"cannot evaluate {text!r} (memplan reads + - * / % over the "
                                                "script's integer variables)") from None


def optional_integer(config: HydraConfig, key: str, low: int, high: int) -> int | None:
    return None if read_value(config, key) is None else integer(config, key, low, high)


def boolean(config: HydraConfig, key: str, *, absent: bool | None = None) -> bool:
    """``absent``: the value when the release's config has no such key (a feature it lacks)."""
    if absent is not None and not config.has(key):
        return absent
    value = read_value(config, key)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ConfigError(config.location(key), f"expected true or false, got {value!r}")
    return value


def fraction(config: HydraConfig, key: str) -> float:
    value = read_value(config, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(config.location(key), f"expected a number, got {value!r}")
    if not math.isfinite(value) or not 0 < value <= 1:
        raise ConfigError(config.location(key), f"must be in (0, 1] (the share of each GPU's memory), got {value}")
    return float(value)


def text(config: HydraConfig, key: str) -> str:
    value = read_value(config, key)
    if not isinstance(value, str):
        raise ConfigError(config.location(key), f"expected a string, got {value!r}")
    return value


def choice(config: HydraConfig, key: str, choices: Callable[[str], Any], names: str) -> Any:
    value = read_value(config, key)
    try:
        return choices(str(value).lower())
    except (ValueError, KeyError):
        raise ConfigError(config.location(key), f"must be one of {names}, got {value!r}") from None


def dtype(config: HydraConfig, key: str, default: str) -> str:
    value = config.get(key) if key in config.values else default
    spelled = str(value).lower()
    if spelled not in _DTYPES:
        raise ConfigError(config.location(key), f"must be one of {', '.join(_DTYPES)} (verl/utils/torch_dtypes.py), "
                                                f"got {value!r}")
    return _DTYPES[spelled]


def contents(config: HydraConfig, key: str) -> tuple[str, ...]:
    value = read_value(config, key)
    if not isinstance(value, list):
        raise ConfigError(config.location(key), f"expected a list, got {value!r}")
    return tuple(str(v) for v in value)
