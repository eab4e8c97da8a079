"""plan(): the 70B PPO acceptance, official layouts, round trips, properties, impossible requests."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memplan.api import estimate_command
from memplan.jobs.result import Verdict
from memplan.planner import LimitKind, Placement, plan, plan_gpus
from memplan.units import GiB

TINY = "tests/data/tiny/llama-tiny.json"


def _peaks(est) -> list[tuple[tuple[str, ...], int, int, int]]:  # type: ignore[no-untyped-def]
    return sorted((d.roles, d.count, d.peak_bytes, d.reserved_bytes) for d in est.devices)


def _same_as_check(p, gpu: str, host_ram: str | None = None) -> None:  # type: ignore[no-untyped-def]
    """The plan's command, read back as ``memplan check`` reads it, gives the plan's estimate."""
    back = estimate_command(p.command, gpu=gpu, host_ram=host_ram)
    assert _peaks(back) == _peaks(p.estimate)
    assert [h.peak_bytes for h in back.hosts] == [h.peak_bytes for h in p.estimate.hosts]
    assert back.verdict == p.estimate.verdict


@pytest.fixture(scope="module")
def ppo_70b():  # type: ignore[no-untyped-def]
    # Llama-2-70B PPO on A800-80G, critic and reward from the same size (public-cases rows 1-4)
    return plan("llama-2-70b", "ppo", gpu="a800-80g", flags=["--reward_pretrain", "llama-2-70b"])


def test_70b_minimum_is_16_gpus_or_fewer(ppo_70b) -> None:  # type: ignore[no-untyped-def]
    m = ppo_70b.minimum
    assert m is not None and m.num_gpus <= 16
    assert m.estimate.verdict in (Verdict.FITS, Verdict.TIGHT)
    assert m.estimate.hosts and all(h.peak_bytes > 0 for h in m.estimate.hosts)  # host RAM stated per node
    assert m.command.startswith("ray job submit") and "openrlhf.cli.train_ppo_ray" in m.command


def test_70b_recommended_about_32_with_headroom(ppo_70b) -> None:  # type: ignore[no-untyped-def]
    r = ppo_70b.recommended
    assert r is not None and 24 <= r.num_gpus <= 40
    assert r.estimate.verdict == Verdict.FITS  # ≥ 10% free on every GPU
    assert r.layout.placement == Placement.SEPARATE  # no colocation for a model larger than one GPU
    assert r.layout.size("critic") == r.layout.size("actor") <= r.layout.engines * r.layout.tp  # 1:1:1


def test_70b_commands_round_trip_through_check(ppo_70b) -> None:  # type: ignore[no-untyped-def]
    _same_as_check(ppo_70b.minimum, "a800-80g")
    _same_as_check(ppo_70b.recommended, "a800-80g")


def test_host_ram_limit_is_respected() -> None:
    result = plan("llama-2-70b", "ppo", gpu="a800-80g", host_ram="1600GB", recommend=False,
                  flags=["--reward_pretrain", "llama-2-70b"])
    m = result.minimum
    assert m is not None
    assert all(h.verdict in (Verdict.FITS, Verdict.TIGHT) for h in m.estimate.hosts)
    _same_as_check(m, "a800-80g", "1600GB")


# Official OpenRLHF layouts of the public cases (reference/public-cases.md): model, method, GPU, GPUs.
OFFICIAL = [
    ("row01-70b-16xa100", "llama-2-70b", "ppo", "a100-80g", 16),
    ("row02-03-70b-32xa100", "llama-3-70b", "ppo", "a100-80g", 32),
    ("row04-7b-16xa800", "llama-2-7b", "ppo", "a800-80g", 16),
    ("row04-13b-32xa800", "llama-2-13b", "ppo", "a800-80g", 32),
    ("row04-34b-32xa800", "codellama-34b", "ppo", "a800-80g", 32),
    ("row05-34b-8xa100", "codellama-34b", "ppo", "a100-80g", 8),
    ("row06-7b-8xa100", "llama-2-7b", "ppo", "a100-80g", 8),
    ("row06-13b-8xa100", "llama-2-13b", "ppo", "a100-80g", 8),
    ("row08-34b-dpo-8xa100", "codellama-34b", "dpo", "a100-80g", 8),
    ("row09-8b-hybrid-8xa100", "llama-3-8b", "ppo", "a100-80g", 8),
    ("row10-7b-4xa100-40g", "llama-2-7b", "ppo", "a100-40g", 4),
]


@pytest.mark.parametrize(("case", "model", "method", "gpu", "official"), OFFICIAL, ids=[c[0] for c in OFFICIAL])
def test_minimum_uses_no_more_gpus_than_the_official_layout(case: str, model: str, method: str, gpu: str,
                                                           official: int) -> None:
    result = plan(model, method, gpu=gpu, recommend=False)
    assert result.minimum is not None, result.binding_limit
    assert result.minimum.num_gpus <= official


# ---- properties on small spaces (tiny models, custom GPU sizes) --------------------------------

SMALL = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SMALL
@given(method=st.sampled_from(["sft", "dpo", "rm"]), size=st.sampled_from([2, 3, 4, 6]),
       extra=st.sampled_from([1, 2, 8]))
def test_more_gpu_memory_never_breaks_a_fitting_plan(method: str, size: int, extra: int) -> None:
    result = plan(TINY, method, gpu=f"{size}GiB", recommend=False, flags=["--max_len", "512"])
    assert result.minimum is not None
    bigger = estimate_command(result.minimum.command, gpu=f"{size + extra}GiB")
    assert bigger.verdict in (Verdict.FITS, Verdict.TIGHT)
    # and the minimum on the bigger GPU needs no more GPUs
    assert plan(TINY, method, gpu=f"{size + extra}GiB", recommend=False,
                flags=["--max_len", "512"]).minimum.num_gpus <= result.minimum.num_gpus  # type: ignore[union-attr]


@SMALL
@given(size=st.sampled_from([3, 4, 6, 12]))
def test_rl_plan_peaks_equal_estimate_and_bigger_gpus_still_fit(size: int) -> None:
    result = plan(TINY, "ppo", gpu=f"{size}GiB", flags=["--max_len", "512"])
    for p in (result.minimum, result.recommended):
        if p is None:
            continue
        _same_as_check(p, f"{size}GiB")
        assert estimate_command(p.command, gpu=f"{2 * size}GiB").verdict in (Verdict.FITS, Verdict.TIGHT)


@SMALL
@given(max_gpus=st.integers(1, 12))
def test_a_larger_gpu_budget_never_worsens_the_minimum(max_gpus: int) -> None:
    gpu = "20GiB"
    small = plan("llama-3-8b", "sft", gpu=gpu, max_gpus=max_gpus, recommend=False)
    large = plan("llama-3-8b", "sft", gpu=gpu, max_gpus=max_gpus + 4, recommend=False)
    if small.minimum is not None:
        assert small.minimum.num_gpus <= max_gpus
        assert large.minimum is not None and large.minimum.num_gpus <= small.minimum.num_gpus


# ---- pins, comparisons ------------------------------------------------------------------------


def test_keep_pins_flags() -> None:
    result = plan("llama-3-8b", "sft", gpu="a100-80g", keep=["zero_stage=2", "adam_offload=false"])
    for p in (result.minimum, result.recommended):
        assert p is not None
        assert "--zero_stage 2" in p.command or "--ds.zero_stage 2" in p.command
        assert "adam_offload" not in p.command


def test_gpu_comparison_in_order() -> None:
    results = plan_gpus(TINY, "sft", gpus=["4GiB", "a100-80g", "4GiB"], recommend=False)
    assert [r.gpu.name for r in results] == ["custom", "a100-80g"]
    assert all(r.minimum is not None for r in results)


# ---- impossible requests: no plan, an explanation, bounded time --------------------------------


def test_405b_on_one_24gb_gpu() -> None:
    start = time.perf_counter()
    result = plan("llama-3.1-405b", "sft", gpu="rtx4090-24g", max_gpus=1)
    assert result.minimum is None and result.recommended is None
    limit = result.binding_limit
    assert limit is not None and limit.kind == LimitKind.GPU_MEMORY and limit.num_gpus == 1
    # the bf16 weights alone are 405.85e9 × 2 B ≈ 756 GiB against ≈ 23.6 GiB
    assert limit.shortfall > 700 * GiB
    assert time.perf_counter() - start < 10


def test_max_gpus_zero() -> None:
    result = plan(TINY, "ppo", gpu="a100-80g", max_gpus=0)
    assert result.minimum is None and result.candidates_evaluated == 0
    assert result.binding_limit is not None and result.binding_limit.kind == LimitKind.GPU_COUNT


def test_host_ram_below_one_process() -> None:
    result = plan("llama-3-8b", "sft", gpu="a100-80g", host_ram="1GiB")
    assert result.minimum is None
    limit = result.binding_limit
    assert limit is not None and limit.kind == LimitKind.HOST_RAM and limit.shortfall > 0


def test_too_few_gpus_for_70b_ppo_names_the_count() -> None:
    result = plan("llama-2-70b", "ppo", gpu="a800-80g", max_gpus=4, recommend=False)
    assert result.minimum is None and result.binding_limit is not None
    assert result.binding_limit.kind in (LimitKind.GPU_COUNT, LimitKind.GPU_MEMORY)


@pytest.mark.parametrize(("keep", "placements"), [
    (["colocate_all_models=true"], {Placement.HYBRID}),
    (["colocate_all_models=false", "colocate_actor_ref=false"], {Placement.SEPARATE, Placement.CRITIC_REWARD}),
])
def test_placement_pins(keep: list[str], placements: set[Placement]) -> None:
    result = plan("llama-3-8b", "ppo", gpu="a100-80g", keep=keep)
    for p in (result.minimum, result.recommended):
        assert p is not None and p.layout.placement in placements
        _same_as_check(p, "a100-80g")


@pytest.mark.parametrize(("method", "flags", "version"), [
    ("ppo", [], "0.8"),  # --bf16/--flash_attn spelled for 0.8
    ("sft", ["--max_len", "65536"], None),  # ring attention with packing, as train_sft asserts
    ("dpo", [], "0.11"),
])
def test_commands_round_trip_across_versions_and_long_sequences(method: str, flags: list[str],
                                                                version: str | None) -> None:
    result = plan("llama-3-8b", method, gpu="a100-80g", flags=flags, version=version)
    for p in (result.minimum, result.recommended):
        assert p is not None
        _same_as_check(p, "a100-80g")
    if "65536" in flags:
        assert dict(result.minimum.flags).get("ring_attn_size", 1) > 1  # type: ignore[union-attr]
