"""Byte units, defined once. Decimal (GB, 10^9) and binary (GiB, 2^30) are never mixed.

memplan stores every quantity of memory as an ``int`` number of bytes. Conversion to text happens
only in ``cli/render.py``; parsing user-written sizes ("1600GB", "1.5TiB", "80GiB") happens here.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

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
    "b": 1,
    "kb": KB, "mb": MB, "gb": GB, "tb": TB,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB,
    # Single letters follow the common (and nvidia-smi / free -g) binary reading.
    "k": KiB, "m": MiB, "g": GiB, "t": TiB,
}

#: Largest size memplan accepts anywhere (1 EiB): beyond it an input is a typo, not a machine.
MAX_SIZE_BYTES = 2**60

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, *, location: str) -> int:
    """Parse a human size such as ``1600GB``, ``1.5TiB`` or ``80GiB`` into bytes.

    ``GB``/``TB`` are decimal (10^9, 10^12); ``GiB``/``TiB`` binary (2^30, 2^40); a bare number is
    bytes. Raises :class:`ConfigError` naming ``location`` for anything else.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(location, f"cannot read {text!r} as a size; write e.g. 1600GB, 1.5TiB or 80GiB")
    number, unit = match.groups()
    factor = _UNIT_BYTES.get(unit.lower())
    if factor is None:
        raise ConfigError(location, f"unknown unit {unit!r} in {text!r}; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")
    try:
        value = Decimal(number) * factor
    except InvalidOperation:  # pragma: no cover - the regex admits only valid numbers
        raise ConfigError(location, f"cannot read {text!r} as a size") from None
    if value <= 0:
        raise ConfigError(location, f"size must be positive, got {text!r}")
    if value > MAX_SIZE_BYTES:
        raise ConfigError(location, f"size {text!r} is absurdly large (limit 1 EiB)")
    return int(value)
