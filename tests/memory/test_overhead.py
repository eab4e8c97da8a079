"""Runtime overhead terms against their published records."""

from __future__ import annotations

import tomllib
from pathlib import Path

from memplan.memory import overhead
from memplan.memory.breakdown import Category

RECORDS = Path(__file__).resolve().parents[2] / "validation" / "published" / "overhead"


def test_cuda_context_matches_record() -> None:
    rec = tomllib.loads((RECORDS / "compressed-tensors-pr587.toml").read_text())["measured"]
    # non-PyTorch = in use - allocated - reserved-unallocated = 78.09 - 75.31 - 1.83 = 0.95 GiB
    assert abs(rec["process_in_use_gib"] - rec["allocated_gib"] - rec["reserved_unallocated_gib"] - 0.95) < 1e-9
    term = overhead.cuda_context("policy.cuda_context")
    assert term.bytes == int(0.95 * 2**30) and term.category == Category.OVERHEAD


def test_nccl_only_for_multi_rank_groups() -> None:
    assert overhead.nccl_buffers("x", 1) == []
    assert overhead.nccl_buffers("x", 8)[0].bytes == 1_600_000_000


def test_reserved_adds_five_percent_and_overhead() -> None:
    # 100 GiB allocated → 105 GiB reserved, plus 1 GiB non-PyTorch memory
    assert overhead.reserved_bytes(100 * 2**30, 2**30) == 106 * 2**30
