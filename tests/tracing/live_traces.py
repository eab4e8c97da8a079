"""Live tiny traces shared by the tracing tests: each stored tiny record (and command) is traced once per session."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY_RECORDS = sorted((REPO / "validation").glob("*/tiny-*.json"))

_CACHE: dict[str, dict[str, Any]] = {}


def trace_json(command: str) -> dict[str, Any]:
    """Run a ``memplan trace ...`` command in-process with --json; the parsed output (cached per command)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from memplan.cli.main import main

    if command not in _CACHE:
        argv = shlex.split(command)
        assert argv[:2] == ["memplan", "trace"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = main([*argv[1:], "--json", "--quiet"])
        assert status == 0
        _CACHE[command] = json.loads(out.getvalue())
    return _CACHE[command]


def live_record(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(stored record, live trace output) for the tiny record ``name``."""
    path = next(p for p in TINY_RECORDS if p.stem == name)
    record = json.loads(path.read_text())
    return record, trace_json(record["command"])
