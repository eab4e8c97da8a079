"""README.md's accuracy table is the one ``memplan validate`` generates now (so it cannot drift)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("update_readme_accuracy", REPO / "scripts" / "update_readme_accuracy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_accuracy_block_is_current() -> None:
    script = _script()
    current = script.readme_block((REPO / "README.md").read_text(encoding="utf-8"))
    if current is None:
        pytest.skip("README.md has no accuracy markers yet")
    assert current == script.generated_block(), "run: python scripts/update_readme_accuracy.py"


def test_replace_block_keeps_the_rest() -> None:
    script = _script()
    text = f"intro\n{script.START}\nold\n{script.END}\noutro\n"
    new = script.replace_block(text, "| a |")
    assert new == f"intro\n{script.START}\n| a |\n{script.END}\noutro\n"
    assert script.readme_block(new) == "| a |"
    assert script.readme_block("no markers") is None
