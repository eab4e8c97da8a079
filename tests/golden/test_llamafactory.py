"""LLaMA-Factory's estimated requirements (public-cases row 37) where the setup matches OpenRLHF's."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from memplan.api import estimate

CASE = tomllib.loads((Path(__file__).resolve().parents[2] / "validation" / "published" / "llamafactory"
                      / "readme-hardware-7b.toml").read_text())


@pytest.mark.parametrize("row", CASE["row"], ids=[r["name"] for r in CASE["row"]])
def test_within_table(row: dict) -> None:
    est = estimate(CASE["model"], CASE["method"], CASE["base_flags"] + row["flags"], gpus=1, version="0.9")
    reserved_gb = est.devices[0].reserved_bytes / 1e9
    assert abs(reserved_gb - row["table_gb"]) <= CASE["tolerance"] * row["table_gb"], reserved_gb
