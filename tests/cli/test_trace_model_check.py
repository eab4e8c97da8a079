"""``memplan trace`` checks its models before it imports torch (issue 11, item 6)."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: Runs the CLI in a fresh interpreter and reports whether torch was imported on the way to the error.
PROBE = ("import sys; from memplan.cli.main import main; code = main(sys.argv[1:]); "
         "print(code, 'torch' in sys.modules)")


@pytest.mark.parametrize("argv", [
    ["trace", "nope", "--method", "sft"],
    ["trace", "llama-2-7b", "--method", "dpo", "--ref_pretrain", "nope"],
    ["trace", "nope", "--method", "ppo", "--role", "actor"],
])
def test_unknown_model_fails_before_torch_is_imported(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["2", "False"]
    assert "nope: unknown model" in done.stderr
