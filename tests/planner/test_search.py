"""Unit searches against synthetic peaks: bisection finds the smallest fitting size in few probes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from memplan.hardware import resolve_gpu
from memplan.planner.probe import UnitObs
from memplan.planner.search import LadderSearch, RolloutSearch, limit_bytes
from memplan.planner.space import Fit
from memplan.units import GiB

GPU = resolve_gpu("80GiB")
LADDER = (1, 2, 3, 4, 5, 6, 7, 8, 16, 24, 32, 48, 64, 96, 128)


def _drive(search: LadderSearch, peak) -> tuple[int | None, int]:  # type: ignore[no-untyped-def]
    probes = 0
    while (size := search.pending()) is not None:
        probes += 1
        search.observe(size, UnitObs(reserved_bytes=peak(size)))
    return search.result(), probes


def test_zero3_scaling_found_in_two_probes() -> None:
    # 70B-like: 4 GiB fixed + 280 GiB sharded. At 1 GPU 284 GiB → the jump goes to ⌈284/80⌉ = 4 GPUs
    # (74 GiB, fits); then 3 GPUs (97.3 GiB) is ruled out: 4 is the answer.
    peak = lambda s: 4 * GiB + 280 * GiB // s  # noqa: E731
    found, probes = _drive(LadderSearch(LADDER, GPU, Fit.ANY), peak)
    assert found == 4 and probes == 3


def test_headroom_needs_more() -> None:
    peak = lambda s: 4 * GiB + 280 * GiB // s  # noqa: E731
    found, _ = _drive(LadderSearch(LADDER, GPU, Fit.HEADROOM), peak)
    # 72 GiB limit: 4 + 280/s ≤ 72 → s ≥ 4.12 → 5
    assert found == 5


def test_nothing_fits() -> None:
    found, probes = _drive(LadderSearch(LADDER, GPU, Fit.ANY), lambda s: 100 * GiB)
    assert found is None and probes <= 3


@settings(max_examples=200, deadline=None)
@given(fixed=st.integers(0, 100), sharded=st.integers(0, 20_000), at_least=st.sampled_from([0, 1, 3, 8]))
def test_bisection_is_exact_for_monotone_peaks(fixed: int, sharded: int, at_least: int) -> None:
    peak = lambda s: fixed * GiB + sharded * GiB // s  # noqa: E731
    found, probes = _drive(LadderSearch(LADDER, GPU, Fit.ANY, at_least=at_least), peak)
    fitting = [s for s in LADDER if s >= at_least and peak(s) <= limit_bytes(GPU, Fit.ANY)]
    assert found == (fitting[0] if fitting else None)
    assert probes <= 8


def test_rollout_lowers_the_share_then_raises_tp() -> None:
    # weights 138 GiB / TP; the share takes gmu × 80 GiB, plus 1.5 GiB outside it
    def obs(tp: int, gmu: float) -> UnitObs:
        weights = 138 * GiB // tp
        kv = max(int(gmu * 80 * GiB) - weights, 0)
        return UnitObs(reserved_bytes=weights + kv + 3 * GiB // 2, kv_cache_bytes=kv)

    search = RolloutSearch((1, 2, 4, 8), (0.8, 0.85, 0.9, 0.95), GPU, Fit.HEADROOM, weights_bytes=138 * GiB)
    while (config := search.pending()) is not None:
        search.observe(config, obs(*config))
    # 72 GiB limit → gmu 0.85 (69.5 GiB); TP2 leaves 68 - 69 < 0 GiB of KV → TP4
    assert search.result() == (4, 0.85)
