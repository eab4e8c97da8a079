"""Typed, validated access to a config.json dict. Every error names the field."""

from __future__ import annotations

import math
from typing import Any

from memplan.dtypes import DType
from memplan.errors import ConfigError

#: Largest width, vocabulary or window memplan accepts: 2^24. Real models stay far below
#: (DeepSeek-V3: hidden 7168, Gemma 3: vocab 262,208); beyond this a value is a typo or an attack.
MAX_DIMENSION = 2**24
#: Largest layer or head count accepted (real models: at most a few hundred).
MAX_COUNT = 2**16


class Fields:
    """Reads fields of one config dict; ``location`` prefixes every error ("config.json")."""

    def __init__(self, config: dict[str, Any], location: str) -> None:
        self._config = config
        self._location = location
        self.read: set[str] = set()

    def _where(self, key: str) -> str:
        return f"{self._location}: {key}"

    def has(self, key: str) -> bool:
        """True when ``key`` is present and not null."""
        return self._config.get(key) is not None

    def raw(self, key: str) -> Any:
        """The value as written (``None`` when absent)."""
        self.read.add(key)
        return self._config.get(key)

    def int(self, key: str, default: int | None = None, *, limit: int = MAX_DIMENSION, minimum: int = 1) -> int:
        """A positive integer field; required when ``default`` is None."""
        value = self.raw(key)
        if value is None:
            if default is None:
                raise ConfigError(self._where(key), "required field is missing")
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(self._where(key), f"must be an integer, got {value!r}")
        if isinstance(value, float):
            if not math.isfinite(value) or not value.is_integer():
                raise ConfigError(self._where(key), f"must be an integer, got {value!r}")
            value = int(value)
        if value < minimum:
            raise ConfigError(self._where(key), f"must be >= {minimum}, got {value}")
        if value > limit:
            raise ConfigError(self._where(key), f"{value} is beyond any real model (limit {limit})")
        return value

    def optional_int(self, key: str, *, limit: int = MAX_DIMENSION, minimum: int = 1) -> int | None:
        """A positive integer field that may be absent or null."""
        if not self.has(key):
            self.read.add(key)
            return None
        return self.int(key, limit=limit, minimum=minimum)

    def bool(self, key: str, default: bool) -> bool:
        """A boolean field."""
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(self._where(key), f"must be true or false, got {value!r}")
        return value

    def optional_float(self, key: str) -> float | None:
        """A finite positive number that may be absent or null."""
        value = self.raw(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(self._where(key), f"must be a number, got {value!r}")
        if value <= 0:
            raise ConfigError(self._where(key), f"must be positive, got {value!r}")
        return float(value)

    def str(self, key: str, default: str) -> str:
        """A string field."""
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(self._where(key), f"must be a string, got {value!r}")
        return value

    def int_list(self, key: str) -> tuple[int, ...]:
        """A list of non-negative integers (e.g. ``mlp_only_layers``); empty when absent."""
        value = self.raw(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise ConfigError(self._where(key), f"must be a list of layer indices, got {value!r}")
        return tuple(value)

    def str_list(self, key: str) -> tuple[str, ...] | None:
        """A list of strings (e.g. ``layer_types``); ``None`` when absent."""
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(self._where(key), f"must be a list of strings, got {value!r}")
        return tuple(value)

    def dtype(self) -> DType | None:
        """``torch_dtype`` (or ``dtype`` in transformers ≥ 4.56 configs)."""
        for key in ("torch_dtype", "dtype"):
            value = self.raw(key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise ConfigError(self._where(key), f"must be a dtype name, got {value!r}")
            try:
                return DType.from_name(value)
            except KeyError:
                raise ConfigError(self._where(key), f"unknown dtype {value!r}") from None
        return None

    def rope_scaling(self) -> tuple[str | None, float | None]:
        """``rope_scaling`` (or transformers 5's ``rope_parameters``): type and factor."""
        for key in ("rope_scaling", "rope_parameters"):
            value = self.raw(key)
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(self._where(key), f"must be an object, got {value!r}")
            kind = value.get("rope_type", value.get("type"))
            if kind is not None and not isinstance(kind, str):
                raise ConfigError(self._where(f"{key}.rope_type"), f"must be a string, got {kind!r}")
            if kind == "default":
                kind = None
            factor = value.get("factor")
            if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))):
                raise ConfigError(self._where(f"{key}.factor"), f"must be a number, got {factor!r}")
            return kind, (float(factor) if factor is not None and kind is not None else None)
        return None, None
