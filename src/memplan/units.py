"""Byte units, defined once. Decimal (GB, 10^9) and binary (GiB, 2^30) are never mixed.

memplan stores every quantity of memory as an ``int`` number of bytes. Conversion to text happens
only in ``cli/render.py``; parsing user-written sizes ("1600GB", "1.5TiB", "80GiB") happens here.
"""

from __future__ import annotations

import re
from decimal import Decimal, DecimalException

from memplan.errors import ConfigError

KB = 10**3
MB = 10**6
GB = 10**9
TB = 10**12
KiB = 2**10
MiB = 2**20
GiB = 2**30
TiB = 2**40

_UNIT_BYTES: dict[str, int] = {
    "": 1, "b": 1,
    "kb": KB, "mb": MB, "gb": GB, "tb": TB,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB,
    # Single letters follow the common (and nvidia-smi / free -g) binary reading.
    "k": KiB, "m": MiB, "g": GiB, "t": TiB,
}

#: Largest size memplan accepts anywhere (1 EiB): beyond it an input is a typo, not a machine.
MAX_SIZE_BYTES = 2**60

#: Decimal exponents beyond this are rejected before any arithmetic (10^30 already exceeds 1 EiB),
#: so ``1e999999999999TB`` is an error message, not a ``decimal.Overflow`` traceback.
_MAX_ABS_EXPONENT = 30

_SIZE_RE = re.compile(
    r"^\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")

_HINT = "write e.g. 1600GB, 1.5TiB or 80GiB"


def parse_size(text: str, *, location: str, require_unit: bool = False) -> int:
    """Parse a human size such as ``1600GB``, ``1.5TiB`` or ``80GiB`` into bytes.

    ``GB``/``TB`` are decimal (10^9, 10^12); ``GiB``/``TiB`` binary (2^30, 2^40); single letters
    (``80G``) binary; a bare number is bytes unless ``require_unit`` (then it is an error, since
    ``--gpu 80`` could mean 80 GB or 80 GiB). A fractional byte count is rounded down. Raises
    :class:`ConfigError` naming ``location`` for anything else: no number, an unknown unit, a
    size that is not positive, under one byte, or over 1 EiB.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(location, f"cannot read {text!r} as a size; {_HINT}")
    number, unit = match.groups()
    factor = _UNIT_BYTES.get(unit.lower())
    if factor is None:
        raise ConfigError(location, f"unknown unit {unit!r} in {text!r}; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")
    if require_unit and not unit:
        raise ConfigError(location, f"{text!r} has no unit; {_HINT}")
    value = _scaled(number, factor, text, location)
    if value > MAX_SIZE_BYTES:
        raise ConfigError(location, f"size {text!r} is absurdly large (limit 1 EiB)")
    if value < 1:
        raise ConfigError(location, f"size {text!r} is less than one byte")
    return int(value)


def _scaled(number: str, factor: int, text: str, location: str) -> Decimal:
    """``number * factor`` exactly, refusing exponents no real size has."""
    try:
        mantissa = Decimal(number)
        if mantissa <= 0:
            raise ConfigError(location, f"size must be positive, got {text!r}")
        exponent = mantissa.adjusted()
        if exponent > _MAX_ABS_EXPONENT:
            raise ConfigError(location, f"size {text!r} is absurdly large (limit 1 EiB)")
        if exponent < -_MAX_ABS_EXPONENT:
            raise ConfigError(location, f"size {text!r} is less than one byte")
        return mantissa * factor
    except DecimalException:  # pragma: no cover - the exponent guard keeps arithmetic in range
        raise ConfigError(location, f"cannot read {text!r} as a size; {_HINT}") from None
