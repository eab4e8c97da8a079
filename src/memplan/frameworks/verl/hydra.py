"""Hydra command-line overrides applied to verl's default table, and OmegaConf interpolations resolved.

verl's entry point is ``@hydra.main(config_path="config", config_name="ppo_trainer")``
(verl 0.9.1 ``verl/trainer/main_ppo.py:166``). Hydra composes the config, sets it to struct mode and
applies each override in order (hydra-core 1.3 ``hydra/_internal/config_loader_impl.py``,
``_apply_overrides_to_config``):

* ``key=value``: the key must exist, else "Could not override 'key'. To append to your config use +key=value".
* ``+key=value``: the key must not exist (or be null, or the value be a list/dict), else "Could not append
  to config. An item is already at 'key'".
* ``++key=value``: add or override.
* ``~key`` / ``~key=value``: the key must exist with a non-null value (equal to ``value`` if given).

Values follow Hydra's override grammar (``hydra/core/override_parser``): ``null``, ``true``/``false``
(any case), integers, floats (``1e-6``, ``inf``, ``nan``), quoted strings, ``[...]`` lists, ``{k: v}``
dicts, and unquoted strings, which may hold ``${...}`` interpolations. An unquoted top-level ``a,b`` is a
sweep, refused without ``--multirun``.

The config is kept flat: full dotted path -> value. Interpolations are resolved on read, against the
final config, the way OmegaConf resolves them (``${path}``, ``${.sibling}``, ``${oc.select:path,default}``,
``${oc.env:VAR,default}``; omegaconf 2.3 ``omegaconf/resolvers/oc/__init__.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from memplan.errors import ConfigError
from memplan.frameworks.verl.defaults import DefaultTable

#: Deepest chain of interpolations followed before giving up (verl's own go two deep:
#: ``${oc.select:a,${oc.select:b,null}}``); a cycle ends here too.
MAX_INTERPOLATION_DEPTH = 32
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]+)*$")
_INT = re.compile(r"^[+-]?(?:\d[\d_]*)$")
_FLOAT = re.compile(r"^[+-]?(?:(?:\d[\d_]*)?\.\d[\d_]*(?:[eE][+-]?\d+)?|\d[\d_]*\.?(?:[eE][+-]?\d+)"
                    r"|\d[\d_]*\.|inf|nan)$", re.IGNORECASE)


class OverrideKind(StrEnum):
    """What one Hydra override does."""

    SET = "set"
    """``key=value``: change an existing key."""
    ADD = "add"
    """``+key=value``: add a key the config does not have."""
    FORCE_ADD = "force_add"
    """``++key=value``: add or change."""
    DELETE = "delete"
    """``~key`` or ``~key=value``: remove a key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Override:
    """One ``key=value`` word of the command line."""

    kind: OverrideKind
    key: str
    """The dotted key without its prefix."""
    value: Any
    """The parsed value (None for a bare ``~key``)."""
    has_value: bool
    """Whether a value was given (``~key`` has none)."""
    typed: str
    """The key as the user typed it, with its ``+``/``++``/``~`` prefix (error locations)."""


class Unresolved(str):
    """An interpolation memplan cannot resolve (an unset ``oc.env`` variable, an unknown resolver)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HydraConfig:
    """verl's config after the overrides: flat leaves, with where each came from."""

    table: DefaultTable
    """The defaults it started from (release and model engine)."""
    values: Mapping[str, Any]
    """Full dotted path -> value as stored (interpolations unresolved)."""
    typed: Mapping[str, str]
    """Dotted path -> the key as the user typed it, for every key an override touched."""
    environment: Mapping[str, str]
    """Variables the launch script exported, for ``${oc.env:...}``."""

    def has(self, key: str) -> bool:
        """Whether ``key`` is a leaf or a section of the config."""
        return key in self.values or _is_section(self.values, key)

    def location(self, key: str) -> str:
        """Where an error about ``key`` points: as the user typed it, else the dotted path."""
        return self.typed.get(key, key)

    def raw(self, key: str) -> Any:
        """The stored value of leaf ``key`` (KeyError if absent)."""
        return self.values[key]

    def get(self, key: str) -> Any:
        """The value of leaf ``key`` with interpolations resolved (KeyError if absent)."""
        return self._resolve(self.values[key], key, 0)

    def section(self, prefix: str) -> dict[str, Any]:
        """Every leaf under ``prefix`` (relative key -> resolved value)."""
        start = prefix + "."
        return {k[len(start):]: self.get(k) for k in self.values if k.startswith(start)}

    def _resolve(self, value: Any, key: str, depth: int) -> Any:
        if isinstance(value, Unresolved):
            return value
        if isinstance(value, str) and "${" in value:
            if depth > MAX_INTERPOLATION_DEPTH:
                raise ConfigError(self.location(key), f"interpolations nest more than {MAX_INTERPOLATION_DEPTH} "
                                                      "deep (a cycle?)")
            return self._interpolate(value, key, depth + 1)
        if isinstance(value, list):
            return [self._resolve(v, key, depth) for v in value]
        return value

    def _interpolate(self, text: str, key: str, depth: int) -> Any:
        pieces = _split_interpolations(text, self.location(key))
        if len(pieces) == 1 and isinstance(pieces[0], _Interp):
            return self._evaluate(pieces[0].body, key, depth)
        out = []
        for piece in pieces:
            value = self._evaluate(piece.body, key, depth) if isinstance(piece, _Interp) else piece
            if isinstance(value, Unresolved):
                return Unresolved(text)
            out.append(_as_text(value))
        return "".join(out)

    def _evaluate(self, body: str, key: str, depth: int) -> Any:
        resolver, _, args = body.partition(":") if _RESOLVER.match(body) else ("", "", body)
        if not resolver:
            return self._select(_absolute(body.strip(), key), key, depth, default=_MISSING)
        parts = [self._resolve(a, key, depth) for a in _split_args(args)]
        if resolver == "oc.select":
            default = parts[1] if len(parts) > 1 else _MISSING
            return self._select(_absolute(str(parts[0]), key), key, depth, default=default)
        if resolver == "oc.env":
            name = str(parts[0])
            if name in self.environment:
                return self.environment[name]
            return parts[1] if len(parts) > 1 else Unresolved("${" + body + "}")
        return Unresolved("${" + body + "}")

    def _select(self, path: str, key: str, depth: int, *, default: Any) -> Any:
        if path in self.values:
            return self._resolve(self.values[path], path, depth)
        if _is_section(self.values, path):
            return {k: self._resolve(v, path, depth) for k, v in _subtree(self.values, path).items()}
        if default is _MISSING:
            # OmegaConf raises InterpolationKeyError here; in a pasted script it is most often a shell
            # variable the script does not assign (``${HOME}/models/x``), which the shell would have expanded.
            return Unresolved("${" + path + "}")
        return default


class _Missing:
    pass


_MISSING: Any = _Missing()
_RESOLVER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:")


@dataclass(frozen=True, slots=True)
class _Interp:
    body: str


def _split_interpolations(text: str, location: str) -> list[str | _Interp]:
    """``a${x}b`` -> ["a", _Interp("x"), "b"], with nested ``${}`` kept inside their body."""
    pieces: list[str | _Interp] = []
    pos = 0
    while True:
        start = text.find("${", pos)
        if start < 0:
            if pos < len(text):
                pieces.append(text[pos:])
            return pieces
        if start > pos:
            pieces.append(text[pos:start])
        depth, index = 0, start
        while index < len(text):
            if text.startswith("${", index):
                depth += 1
                index += 2
                continue
            if text[index] == "}":
                depth -= 1
                if depth == 0:
                    break
            index += 1
        if depth:
            raise ConfigError(location, f"unclosed interpolation in {text!r}")
        pieces.append(_Interp(text[start + 2: index]))
        pos = index + 1


def _split_args(text: str) -> list[Any]:
    """A resolver's arguments, split at top-level commas and parsed as Hydra values."""
    args, depth, current = [], 0, []
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            args.append("".join(current))
            current = []
        else:
            current.append(char)
    args.append("".join(current))
    return [parse_value(a.strip(), "interpolation") if "${" not in a else a.strip() for a in args]


def _absolute(path: str, key: str) -> str:
    """``.x`` is a sibling of ``key``, ``..x`` a sibling of its parent; others are absolute."""
    if not path.startswith("."):
        return path
    dots = len(path) - len(path.lstrip("."))
    base = key.split(".")[:-dots]
    return ".".join([*base, path[dots:]])


def _as_text(value: Any) -> str:
    if value is None:
        return "None"
    return str(value)


def _is_section(values: Mapping[str, Any], key: str) -> bool:
    start = key + "."
    return any(k.startswith(start) for k in values)


def _subtree(values: Mapping[str, Any], key: str) -> dict[str, Any]:
    start = key + "."
    return {k[len(start):]: v for k, v in values.items() if k.startswith(start)}


def _flatten(key: str, value: Any) -> dict[str, Any]:
    """A value set at ``key``: a non-empty dict becomes leaves below it."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for sub, item in value.items():
            out.update(_flatten(f"{key}.{sub}", item))
        return out
    return {key: value}


# --- the override grammar ------------------------------------------------------------------------------

def parse_override(word: str) -> Override:
    """One command-line word ``[+|++|~]key[=value]`` (shell quoting already removed)."""
    if word.startswith("++"):
        kind, rest = OverrideKind.FORCE_ADD, word[2:]
    elif word.startswith("+"):
        kind, rest = OverrideKind.ADD, word[1:]
    elif word.startswith("~"):
        kind, rest = OverrideKind.DELETE, word[1:]
    else:
        kind, rest = OverrideKind.SET, word
    key, equals, text = rest.partition("=")
    typed = word[: len(word) - len(rest)] + key
    if not _KEY.match(key):
        raise ConfigError(typed or word, "not a Hydra override: expected key=value with a dotted key")
    if not equals and kind is not OverrideKind.DELETE:
        raise ConfigError(typed, "not a Hydra override: expected key=value (Hydra reads every argument after "
                                 "the module as an override)")
    value = parse_value(text, typed, top=True) if equals else None
    return Override(kind=kind, key=key, value=value, has_value=bool(equals), typed=typed)


def parse_value(text: str, location: str, *, top: bool = False) -> Any:
    """One Hydra override value: primitives, quoted strings, lists, dicts (``hydra/grammar/OverrideParser.g4``)."""
    parser = _ValueParser(text, location)
    value = parser.value(top=top)
    parser.skip_space()
    if parser.pos != len(text):
        if top and text[parser.pos] == ",":
            raise ConfigError(location, f"{text!r} is a Hydra sweep (a,b); quote the value if it is one string")
        raise ConfigError(location, f"cannot read the value {text!r} (Hydra's override grammar)")
    return value


@dataclass(slots=True)
class _ValueParser:
    text: str
    location: str
    pos: int = 0

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def value(self, *, top: bool = False) -> Any:
        self.skip_space()
        char = self.text[self.pos: self.pos + 1]
        if char == "[":
            return self._sequence("[", "]", self.value)
        if char == "{":
            return dict(self._sequence("{", "}", self._pair))
        if char in ("'", '"'):
            return self._quoted(char)
        return self._primitive(top=top)

    def _sequence(self, opening: str, closing: str, item: Any) -> list[Any]:
        self.pos += 1
        items: list[Any] = []
        self.skip_space()
        if self.text.startswith(closing, self.pos):
            self.pos += 1
            return items
        while True:
            items.append(item())
            self.skip_space()
            char = self.text[self.pos: self.pos + 1]
            self.pos += 1
            if char == closing:
                return items
            if char != ",":
                raise ConfigError(self.location, f"cannot read {self.text!r}: expected ',' or {closing!r}")

    def _pair(self) -> tuple[str, Any]:
        self.skip_space()
        match = re.compile(r"[A-Za-z0-9_\-.]+").match(self.text, self.pos)
        if match is None or not self.text.startswith(":", match.end()):
            raise ConfigError(self.location, f"cannot read {self.text!r}: expected key: value in a dict")
        self.pos = match.end() + 1
        return match.group(), self.value()

    def _quoted(self, quote: str) -> str:
        out, index = [], self.pos + 1
        while index < len(self.text):
            char = self.text[index]
            if char == "\\" and index + 1 < len(self.text):
                out.append(self.text[index + 1])
                index += 2
                continue
            if char == quote:
                self.pos = index + 1
                return "".join(out)
            out.append(char)
            index += 1
        raise ConfigError(self.location, f"unclosed quote in {self.text!r}")

    def _primitive(self, *, top: bool) -> Any:
        """An unquoted run up to a structural character (``${...}`` may hold any of them)."""
        stops = "," if top else ",]}"
        start, depth = self.pos, 0
        while self.pos < len(self.text):
            if self.text.startswith("${", self.pos):
                depth += 1
                self.pos += 2
                continue
            char = self.text[self.pos]
            if depth and char == "}":
                depth -= 1
            elif not depth and char in stops:
                break
            self.pos += 1
        return _primitive(self.text[start: self.pos].strip())


def _primitive(word: str) -> Any:
    lowered = word.lower()
    if lowered == "null":
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.match(word):
        return int(word.replace("_", ""))
    if _FLOAT.match(word):
        return float(word.replace("_", ""))
    return word


# --- applying overrides ----------------------------------------------------------------------------------

def apply_overrides(table: DefaultTable, overrides: Iterable[Override],
                    environment: Mapping[str, str] | None = None) -> HydraConfig:
    """verl's config: ``table``'s defaults with ``overrides`` applied in order, as Hydra applies them."""
    values: dict[str, Any] = {k: d.value for k, d in table.keys.items()}
    typed: dict[str, str] = {}
    name = f"verl {table.version}'s config"
    for override in overrides:
        key = override.key
        exists = key in values or _is_section(values, key)
        if override.kind is OverrideKind.DELETE:
            current = values.get(key, _subtree(values, key) or None)
            if current is None:
                raise ConfigError(override.typed, f"cannot delete: {key} is not in {name} (or is null)")
            if override.has_value and override.value != current:
                raise ConfigError(override.typed, f"cannot delete: its value is {current!r}, not {override.value!r}")
            _remove(values, key)
            typed[key] = override.typed
            continue
        if override.kind is OverrideKind.SET and not exists:
            raise ConfigError(override.typed, f"not in {name}; add it with +{key}=... (Hydra refuses a plain "
                                              "override of a key the config does not have)")
        if override.kind is OverrideKind.ADD and exists and values.get(key, _MISSING) is not None \
                and not isinstance(override.value, (dict, list)):
            raise ConfigError(override.typed, f"already in {name}; set it with {key}=... or ++{key}=... "
                                              "(Hydra refuses + for an existing key)")
        _set(values, key, override.value, merge=isinstance(override.value, dict))
        typed[key] = override.typed
        for leaf in _flatten(key, override.value):
            typed.setdefault(leaf, override.typed + leaf[len(key):])
    return HydraConfig(table=table, values=MappingProxyType(values), typed=MappingProxyType(typed),
                       environment=MappingProxyType(dict(environment or {})))


def _remove(values: dict[str, Any], key: str) -> None:
    if key in values:  # a leaf is never also a section (_set drops a leaf that gets children): no scan
        del values[key]
        return
    start = key + "."
    for existing in [k for k in values if k.startswith(start)]:
        del values[existing]


def _set(values: dict[str, Any], key: str, value: Any, *, merge: bool) -> None:
    """Store ``value`` at ``key``: a dict merges into a section, anything else replaces it."""
    if not merge:
        _remove(values, key)
    parts = key.split(".")
    for index in range(1, len(parts)):
        parent = ".".join(parts[:index])
        if parent in values:  # a leaf (null or {}) that now gets children
            del values[parent]
    if merge and not value:
        if not _is_section(values, key):
            values[key] = {}
        return
    if merge:
        values.pop(key, None)
    values.update(_flatten(key, value))
