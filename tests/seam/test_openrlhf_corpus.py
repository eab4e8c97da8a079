"""The framework seam (issue 14) keeps OpenRLHF's results byte-identical.

``frozen/`` holds the JSON (and estimate/check text) of the 67 commands of ``corpus.txt`` — every
OpenRLHF method, versions 0.8/0.9/0.11, both spellings, all colocations, estimate/check/plan —
taken on main before the seam; each must come out the same.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from freeze import FROZEN, commands, run_one  # noqa: E402

CORPUS = commands()


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 60
    assert len(list(FROZEN.glob("*.json"))) == len(CORPUS)


@pytest.mark.parametrize("n", range(len(CORPUS)), ids=lambda n: f"{n:03d}")
def test_result_unchanged(n: int) -> None:
    frozen = json.loads((FROZEN / f"{n:03d}.json").read_text())
    now = json.loads(json.dumps(run_one(CORPUS[n]), sort_keys=True))
    assert now["argv"] == frozen["argv"], "corpus.txt changed without re-freezing"
    assert now == frozen
