"""``memplan.units.parse_size``: decimal and binary units, exact integers, one-line errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memplan.errors import ConfigError
from memplan.units import GB, GiB, MiB, TiB, parse_size

# Unit -> bytes, written out here rather than imported, so the tests do not check the code against itself.
UNITS = {
    "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}


def size(text: str) -> int:
    return parse_size(text, location="--x")


def test_decimal_units() -> None:
    assert size("1600GB") == 1600 * 10**9  # the DESIGN.md node: 1,600,000,000,000 bytes
    assert size("96GB") == 96_000_000_000
    assert size("2TB") == 2 * 10**12
    assert size("512MB") == 512 * 10**6


def test_binary_units() -> None:
    assert size("1.5TiB") == 1.5 * 2**40 == 1_649_267_441_664
    assert size("80GiB") == 80 * 2**30 == 85_899_345_920
    assert size("81920MiB") == 81920 * 2**20 == 80 * 2**30  # nvidia-smi's A100 total is exactly 80 GiB
    assert size("512GiB") == 512 * 2**30


def test_gb_and_gib_never_confused() -> None:
    # 80 GiB / 80 GB = 2**30 / 10**9 = 1.073741824
    assert size("80GiB") - size("80GB") == 80 * (2**30 - 10**9) == 5_899_345_920
    assert (GB, GiB, MiB, TiB) == (10**9, 2**30, 2**20, 2**40)


def test_spelling_variants() -> None:
    assert size(" 1.5 TiB ") == size("1.5TiB")
    assert size("80gib") == size("80GIB") == 80 * 2**30
    assert size("80G") == 80 * 2**30  # single letters read as binary, like nvidia-smi and free -g
    assert size(".5GiB") == 2**29
    assert size("1e3GB") == 1000 * 10**9
    assert size("100") == 100  # a bare number is bytes


def test_fractional_bytes_round_down() -> None:
    assert size("1.5B") == 1
    assert size("1.0000001KiB") == 1024  # 1024.0001 bytes


@pytest.mark.parametrize("text, words", [
    ("80XB", "unknown unit 'XB'"),
    ("-5GB", "must be positive"),
    ("0GB", "must be positive"),
    ("1e30TB", "absurdly large"),
    ("1e999999999999GB", "absurdly large"),  # used to escape as decimal.Overflow
    ("1e-30GB", "less than one byte"),
    ("1e-999999999GB", "less than one byte"),
    ("abc", "cannot read 'abc'"),
    ("", "cannot read ''"),
    ("1,600GB", "cannot read"),
    ("2EiB", "unknown unit 'EiB'"),
])
def test_errors_name_the_location(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(text, location="--host-ram")
    message = str(info.value)
    assert message.startswith("--host-ram: ")
    assert words in message
    assert "\n" not in message


def test_limit_is_one_exbibyte() -> None:
    assert size(str(2**60)) == 2**60
    with pytest.raises(ConfigError):
        size(str(2**60 + 1))


def test_require_unit() -> None:
    with pytest.raises(ConfigError, match="has no unit"):
        parse_size("80", location="--gpu", require_unit=True)
    assert parse_size("80GiB", location="--gpu", require_unit=True) == 80 * 2**30


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(sorted(UNITS)))
def test_integer_sizes_are_exact(n: int, unit: str) -> None:
    assert size(f"{n}{unit}") == n * UNITS[unit]
    assert size(f"{n} {unit.lower()}") == n * UNITS[unit]
