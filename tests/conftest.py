"""Shared test fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a config dict (or raw text) to ``tmp_path/config.json`` and return its path."""

    def _write(config: dict | str, name: str = "config.json") -> Path:
        path = tmp_path / name
        path.write_text(config if isinstance(config, str) else json.dumps(config))
        return path

    return _write
