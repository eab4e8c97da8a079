"""Live traces of tiny configs: the stored tiny records reproduce exactly, and the tracer's own sanity.

The large reference records (validation/traced/, validation/deepspeed_cpu/) are stored, not re-run here;
``scripts/gen_references.py`` regenerates them. Each tiny trace takes seconds (the deepspeed-cpu one about
25 s: two real DeepSpeed ranks).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from typing import Any

import pytest

from live_traces import REPO, TINY_RECORDS, live_record

pytestmark = pytest.mark.tracing


def _live(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(stored record, live trace output) for the tiny record ``name``; each trace runs once per session."""
    return live_record(name)


def test_tiny_records_exist() -> None:
    names = {p.stem for p in TINY_RECORDS}
    assert {"tiny-sft", "tiny-dpo", "tiny-sft-lora", "tiny-ds-zero2-w2"} <= names


@pytest.mark.parametrize("name", [p.stem for p in TINY_RECORDS])
def test_tiny_record_reproduces_exactly(name: str) -> None:
    record, live = _live(name)
    stored = [{"iterations": r["iterations"], "model_states": r["model_states"]} for r in record["measured"]["ranks"]]
    got = [{"iterations": r["iterations"], "model_states": r["model_states"]} for r in live["trace"]["ranks"]]
    assert got == stored
    assert max(d["peak_bytes"] for d in live["devices"]) == record["measured"]["peak_bytes"]
    assert live["trace"]["command"] == record["command"]


def test_param_bytes_equal_count_times_element_size() -> None:
    from memplan.model import load_model_spec, num_params

    _, live = _live("tiny-sft")
    states = live["trace"]["ranks"][0]["model_states"]
    count = num_params(load_model_spec(str(REPO / "tests/data/tiny/llama-tiny.json")))
    assert count == 158_016
    assert states["param_bytes"] == count * 2  # bf16, as tracked by MemTracker before the first step
    assert states["policy_param_bytes"] == count * 2


def test_dpo_tracks_policy_and_reference_params() -> None:
    from memplan.model import load_model_spec, num_params

    _, live = _live("tiny-dpo")
    states = live["trace"]["ranks"][0]["model_states"]
    count = num_params(load_model_spec(str(REPO / "tests/data/tiny/qwen2-tiny.json")))
    assert states["param_bytes"] == 2 * count * 2  # policy + reference, both bf16; tied embedding once each
    assert set(live["models"]) == {"policy", "ref"}


@pytest.mark.parametrize("name", ["tiny-sft", "tiny-dpo", "tiny-sft-lora"])
def test_adamw_state_is_two_fp32_moments_per_trainable_param(name: str) -> None:
    _, live = _live(name)
    states = live["trace"]["ranks"][0]["model_states"]
    assert states["adam_moment_bytes"] == 2 * states["trainable_params"] * 4
    assert states["master_bytes"] == states["trainable_params"] * 4


def test_lora_gradients_are_adapter_params_times_element_size() -> None:
    _, live = _live("tiny-sft-lora")
    states = live["trace"]["ranks"][0]["model_states"]
    # llama-tiny: hidden 64, kv width 32, intermediate 176, 2 layers, rank 8 on every linear but lm_head.
    # r * (in + out): q 8*128, k 8*96, v 8*96, o 8*128, gate 8*240, up 8*240, down 8*240 = 9344 per layer.
    adapters = 2 * (8 * 128 + 8 * 96 + 8 * 96 + 8 * 128 + 3 * 8 * 240)
    assert adapters == 18_688
    assert states["trainable_params"] == adapters
    assert states["grad_bytes_tracked"] == adapters * 2  # bf16 gradients, MemTracker's grad category
    assert states["grad_bytes_measured"] == adapters * 2


def test_deepspeed_cpu_reports_every_rank() -> None:
    _, live = _live("tiny-ds-zero2-w2")
    assert [d["id"] for d in live["devices"]] == ["node0/gpu0", "node0/gpu1"]
    assert all(d["peak_bytes"] > 0 for d in live["devices"])


def test_deepspeed_zero2_partitions_optimizer_state_over_two_ranks() -> None:
    _, live = _live("tiny-ds-zero2-w2")
    for rank in live["trace"]["ranks"]:
        states = rank["model_states"]
        assert states["trainable_params"] == 158_016
        # ZeRO-2 over 2 ranks: each holds 158016 / 2 = 79008 fp32 masters and two fp32 moments.
        assert states["master_bytes_local"] == 79_008 * 4
        assert states["adam_moment_bytes_local"] == 2 * 79_008 * 4
        # DeepSpeed's default reduce bucket: 5e8 elements of bf16 during backward.
        backward = max(it["backward"]["grad"] for it in rank["iterations"].values())
        assert backward >= 500_000_000 * 2


def test_phases_and_breakdown_follow_the_estimate_contract() -> None:
    _, live = _live("tiny-sft")
    device = live["devices"][0]
    assert set(device["phases"]) == {"forward", "backward", "optimizer_step"}
    assert device["peak_bytes"] == max(device["phases"].values())
    assert sum(t["bytes"] for t in device["breakdown"]) == device["peak_bytes"]
    assert {t["category"] for t in device["breakdown"]} <= {"param", "buffer", "grad", "optimizer", "activation",
                                                             "temp", "kv_cache", "overhead"}


def test_cli_import_does_not_load_torch() -> None:
    code = "import sys; from memplan.cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("extra", "flag"), [
    (["--gpus", "2"], "--gpus"),
    (["--adam_offload"], "--adam_offload"),
    (["--method", "kto", "--micro_train_batch_size", "1"], "--micro_train_batch_size"),
    (["--packing_samples", "--attn_implementation", "eager"], "--packing_samples"),
])
def test_unsupported_configuration_is_one_line_exit_2(extra: list[str], flag: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from memplan.cli.main import main

    argv = ["trace", str(REPO / "tests/data/tiny/llama-tiny.json"), "--method", "sft", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"memplan: error: {flag}") and "\n" not in err


def test_request_command_round_trips() -> None:
    from memplan.cli.main import build_parser
    from memplan.cli.trace import _request
    from memplan.tracing.config import resolve_request

    request = resolve_request(model="llama-2-7b", method="kd", max_len=1024, micro_train_batch_size=2,
                              gradient_checkpointing=True, lora_rank=16, target_modules=("q_proj", "v_proj"),
                              zero_stage=3, attn_implementation="eager")
    args = build_parser().parse_args(shlex.split(request.to_command())[1:])
    assert _request(args) == request
