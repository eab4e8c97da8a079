"""Tolerances and known misses, read from the validation directory (data, never per-case code).

``tolerances.toml`` gives a default tolerance per reference kind, optionally per metric, each with its
reason; a reference file may carry its own ``tolerance_pct`` (a number, or a table per metric) that wins.
``known_misses.toml`` lists rows that currently leave their tolerance, each with the reason (a reference
being fixed, a documented modelling gap); a reference file may give its own ``known_miss`` reason (the
published TOMLs do, read by the same golden tests). A listed row that comes back within tolerance is *stale*: the
gate fails until the entry is removed, so the list cannot hide an improvement or outlive its reason.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from memplan.errors import ConfigError
from memplan.validation.rows import Kind, Row

#: File names inside the validation directory.
TOLERANCES_FILE = "tolerances.toml"
KNOWN_MISSES_FILE = "known_misses.toml"


@dataclass(frozen=True, slots=True, kw_only=True)
class KnownMiss:
    """One row allowed to be outside its tolerance, and why."""

    kind: Kind
    """Reference kind."""
    case: str
    """Case id."""
    metric: str
    """Metric name."""
    reason: str
    """Why it misses, and what will resolve it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """Default tolerances per kind (and metric) plus the known misses."""

    defaults: dict[str, dict[str, Any]]
    """``tolerances.toml`` as read: kind → {tolerance_pct, reason, metrics: {metric: pct}}."""
    known_misses: tuple[KnownMiss, ...]
    """Entries of ``known_misses.toml``."""

    def tolerance(self, kind: Kind, metric: str, record: dict[str, Any] | None = None) -> float:
        """Tolerance in percent for ``metric`` of ``kind``: the record's own, else the kind's default."""
        own = (record or {}).get("tolerance_pct")
        if isinstance(own, dict) and metric in own:
            return float(own[metric])
        if isinstance(own, (int, float)):
            return float(own)
        section = self.defaults.get(str(kind))
        if section is None:
            raise ConfigError(f"{TOLERANCES_FILE}: [{kind}]", "no default tolerance for this reference kind")
        return float(section.get("metrics", {}).get(metric, section["tolerance_pct"]))

    def apply(self, rows: list[Row]) -> list[Row]:
        """The rows with the known-miss reasons of ``known_misses.toml`` attached (a reason the reference
        file itself gives, e.g. a published TOML's ``known_miss``, is kept unless the list names the row)."""
        reasons = {(m.kind, m.case, m.metric): m.reason for m in self.known_misses}
        out = []
        for row in rows:
            reason = reasons.get((row.kind, row.case, row.metric))
            out.append(row if reason is None else replace(row, known_miss=reason, known_miss_file=KNOWN_MISSES_FILE))
        return out

    def unused(self, rows: list[Row]) -> list[KnownMiss]:
        """Known misses that match no row (a renamed or removed case): reported so they get cleaned up."""
        keys = {(r.kind, r.case, r.metric) for r in rows}
        return [m for m in self.known_misses if (m.kind, m.case, m.metric) not in keys]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"invalid TOML: {exc}") from None


def _known_miss(entry: dict[str, Any], where: str) -> KnownMiss:
    try:
        kind = Kind(entry["kind"])
        fields = {k: str(entry[k]) for k in ("case", "metric", "reason")}
    except KeyError as exc:
        raise ConfigError(where, f"missing key {exc.args[0]!r} (need kind, case, metric, reason)") from None
    except ValueError:
        raise ConfigError(f"{where}.kind", f"unknown kind {entry['kind']!r}; "
                                           f"choose from {', '.join(k.value for k in Kind)}") from None
    if not fields["reason"].strip():
        raise ConfigError(f"{where}.reason", "a known miss needs a reason")
    fields["reason"] = " ".join(fields["reason"].split())  # TOML multi-line strings read as one line
    return KnownMiss(kind=kind, **fields)


def load_policy(validation_dir: Path) -> Policy:
    """Read ``tolerances.toml`` (required) and ``known_misses.toml`` (optional) from ``validation_dir``."""
    defaults = _read_toml(validation_dir / TOLERANCES_FILE)
    for kind in Kind:
        section = defaults.get(str(kind))
        if section is not None and "tolerance_pct" not in section:
            raise ConfigError(f"{TOLERANCES_FILE}: [{kind}]", "missing tolerance_pct")
    misses_path = validation_dir / KNOWN_MISSES_FILE
    entries = _read_toml(misses_path).get("miss", []) if misses_path.exists() else []
    misses = tuple(_known_miss(e, f"{KNOWN_MISSES_FILE}: miss[{i}]") for i, e in enumerate(entries))
    return Policy(defaults=defaults, known_misses=misses)
