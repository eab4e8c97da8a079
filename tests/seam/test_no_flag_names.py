"""No framework's flag names in the framework-neutral code (issue 14, item 1).

``planner/``, ``advice.py``, ``jobs/`` and ``memory/`` work on typed objects; every flag spelling of
every registered framework (read from the framework's own tables by its ``flag_names()``) is kept in
``frameworks/<name>/``. The scan reads every string constant, docstrings included, with ``ast``: a
constant fails when it contains an option spelling (``--adam_offload``) or equals a multi-word key
(``zero_stage``). Single-word keys (``seed``) count only as options (``--seed``). Nothing is excluded.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from memplan import frameworks

SRC = Path(frameworks.__file__).resolve().parent.parent
#: The framework-neutral code the scan covers (files or folders under src/memplan).
NEUTRAL = ("planner", "advice.py", "jobs", "memory")
_OPTION = re.compile(r"--[A-Za-z0-9][A-Za-z0-9_.\-]*")


def all_flag_names() -> tuple[frozenset[str], frozenset[str]]:
    """(options, multi-word keys) of every registered framework."""
    options: set[str] = set()
    keys: set[str] = set()
    for name in frameworks.names():
        opts, ks = frameworks.get(name).flag_names()
        options |= opts
        keys |= ks
    return frozenset(options), frozenset(keys)


def scan(path: Path, options: frozenset[str], keys: frozenset[str]) -> list[str]:
    """``file:line:literal`` for each string constant of ``path`` that names a flag."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        text = node.value
        hits = [m.rstrip(".-") for m in _OPTION.findall(text) if m.rstrip(".-") in options]
        if text in keys:
            hits.append(text)
        where = path.relative_to(SRC.parent) if path.is_relative_to(SRC.parent) else path.name
        found += [f"{where}:{node.lineno}:{hit}" for hit in hits]
    return found


def neutral_files() -> list[Path]:
    """Every Python file of the framework-neutral code."""
    out: list[Path] = []
    for part in NEUTRAL:
        target = SRC / part
        out += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    return out


def test_neutral_code_names_no_flag() -> None:
    options, keys = all_flag_names()
    found = [hit for path in neutral_files() for hit in scan(path, options, keys)]
    assert not found, f"{len(found)} flag names outside frameworks/:\n" + "\n".join(found)


def test_scanner_catches_a_planted_flag(tmp_path: Path) -> None:
    options, keys = all_flag_names()
    planted = tmp_path / "planted.py"
    planted.write_text('"""Uses ``--adam_offload``."""\nX = {"zero_stage": 3}\nY = "seed"\n', encoding="utf-8")
    found = [hit.split(":", 1)[1] for hit in scan(planted, options, keys)]
    assert found == ["1:--adam_offload", "2:zero_stage"]


def test_every_framework_declares_flags() -> None:
    options, keys = all_flag_names()
    assert "--adam_offload" in options and "--ds.adam_offload" in options and "zero_stage" in keys
    assert "seed" not in keys and "--seed" in options
