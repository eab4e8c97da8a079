"""Where a number comes from: a paper section, a code location pinned to a version, or a record.

Every :class:`memplan.memory.breakdown.Term` carries a :class:`Source`, so ``--explain`` and the web
UI can show the provenance of each byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class SourceKind(StrEnum):
    """What kind of evidence backs a number."""

    PAPER = "paper"
    """A paper, with section, equation or table."""
    CODE = "code"
    """Source code of a framework, pinned to a version or commit."""
    MEASUREMENT = "measurement"
    """A record under ``validation/`` (traced, measured on a GPU, or published)."""
    CONVENTION = "convention"
    """A definition of memplan's own (e.g. how a report groups terms)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """A citation for one formula or constant."""

    kind: SourceKind
    """Paper, code, measurement or convention."""
    ref: str
    """Human-readable citation: ``deepspeedai/DeepSpeed:deepspeed/runtime/zero/stage3.py@v0.19.8``."""
    detail: str = ""
    """What exactly in the reference: a function, a line, an equation."""

    def __str__(self) -> str:
        return f"{self.ref} ({self.detail})" if self.detail else self.ref


def code(ref: str, detail: str = "") -> Source:
    """Shorthand for a code citation."""
    return Source(kind=SourceKind.CODE, ref=ref, detail=detail)


def paper(ref: str, detail: str = "") -> Source:
    """Shorthand for a paper citation."""
    return Source(kind=SourceKind.PAPER, ref=ref, detail=detail)


def measurement(ref: str, detail: str = "") -> Source:
    """Shorthand for a measurement record citation."""
    return Source(kind=SourceKind.MEASUREMENT, ref=ref, detail=detail)
