"""Run the seam corpus (``corpus.txt``) and print or write each command's output.

``python tests/seam/freeze.py`` rewrites ``frozen/`` (only on purpose: the frozen files are the
OpenRLHF results before the framework seam, issue 14); ``run_one`` is what the test compares.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import sys
from pathlib import Path

from memplan.cli.main import main

HERE = Path(__file__).parent
FROZEN = HERE / "frozen"


def commands() -> list[list[str]]:
    """The corpus: one argv per non-comment line."""
    lines = (HERE / "corpus.txt").read_text().splitlines()
    return [shlex.split(line) for line in lines if line.strip() and not line.startswith("#")]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _with_json(argv: list[str]) -> list[str]:
    if "--" in argv:
        cut = argv.index("--")
        return [*argv[:cut], "--json", *argv[cut:]]
    return [*argv, "--json"]


def _timeless(value: object) -> object:
    """The JSON without its wall-time fields ("seconds", at any depth)."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def run_one(argv: list[str]) -> dict[str, object]:
    """Exit codes, the JSON (wall time removed) and, for estimate/check, the text output."""
    code, text, err = _run(_with_json(argv))
    body = _timeless(json.loads(text)) if text.strip() else None
    result: dict[str, object] = {"argv": argv, "exit": code, "json": body, "stderr": err}
    if argv[0] in ("estimate", "check"):
        text_code, plain, text_err = _run(argv)
        result["text_exit"] = text_code
        result["text"] = plain
        result["text_stderr"] = text_err
    return result


def main_freeze() -> None:
    FROZEN.mkdir(exist_ok=True)
    for n, argv in enumerate(commands()):
        path = FROZEN / f"{n:03d}.json"
        path.write_text(json.dumps(run_one(argv), indent=1, sort_keys=True) + "\n")
        print(path.name, argv[:3], file=sys.stderr)


if __name__ == "__main__":
    main_freeze()
