"""``memplan plan``: the JSON contract, the round trip through ``memplan check``, comparisons, errors."""

from __future__ import annotations

import json

import pytest

from memplan.cli.main import main

TINY = "tests/data/tiny/llama-tiny.json"


def _run(capsys, argv: list[str]) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    status = main(argv)
    return status, capsys.readouterr().out


def _devices(data: dict) -> list[tuple]:
    return sorted((tuple(d["roles"]), d["count"], d["peak_bytes"], d["reserved_bytes"]) for d in data["devices"])


def test_json_contract_and_check_round_trip(capsys) -> None:  # type: ignore[no-untyped-def]
    status, out = _run(capsys, ["plan", "llama-2-70b", "--method", "ppo", "--gpu", "a800-80g",
                                "--reward_pretrain", "llama-2-70b", "--json"])
    assert status == 0
    data = json.loads(out)
    assert set(data) >= {"minimum", "recommended", "candidates_evaluated", "binding_limit"}
    assert data["binding_limit"] is None and data["candidates_evaluated"] > 0
    for kind in ("minimum", "recommended"):
        plan = data[kind]
        assert set(plan) >= {"memplan_version", "models", "devices", "hosts", "summary", "command"}
        status, out = _run(capsys, ["check", "--gpu", "a800-80g", "--json", "--", plan["command"]])
        assert status == 0
        back = json.loads(out)
        assert _devices(back) == _devices(plan)
        assert [h["peak_bytes"] for h in back["hosts"]] == [h["peak_bytes"] for h in plan["hosts"]]
    assert data["minimum"]["summary"]["num_gpus"] <= 16
    assert 24 <= data["recommended"]["summary"]["num_gpus"] <= 40


def test_single_model_command_is_deepspeed_and_reads_back(capsys) -> None:  # type: ignore[no-untyped-def]
    status, out = _run(capsys, ["plan", "llama-3-8b", "--method", "sft", "--gpu", "a100-80g", "--json"])
    data = json.loads(out)
    command = data["minimum"]["command"]
    assert command.startswith("deepspeed") and "--module openrlhf.cli.train_sft" in command
    status, out = _run(capsys, ["check", "--gpu", "a100-80g", "--json", "--", command])
    assert _devices(json.loads(out)) == _devices(data["minimum"])


def test_text_report(capsys) -> None:  # type: ignore[no-untyped-def]
    status, out = _run(capsys, ["plan", TINY, "--method", "ppo", "--gpu", "8GiB", "--max_len", "512"])
    assert status == 0
    assert "minimum:" in out and "command:" in out and "candidates evaluated:" in out
    assert "host RAM node0" in out


def test_comparison_side_by_side(capsys) -> None:  # type: ignore[no-untyped-def]
    status, out = _run(capsys, ["plan", TINY, "--method", "sft", "--gpu", "4GiB,a100-80g,rtx4090-24g"])
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["GPU", "min", "GPUs"]
    assert [line.split()[0] for line in lines[2:5]] == ["custom", "a100-80g", "rtx4090-24g"]
    status, out = _run(capsys, ["plan", TINY, "--method", "sft", "--gpu", "4GiB,a100-80g", "--json"])
    data = json.loads(out)
    assert [p["gpu"] for p in data["plans"]] == ["custom", "a100-80g"]
    assert data["candidates_evaluated"] == sum(p["candidates_evaluated"] for p in data["plans"])


@pytest.mark.parametrize("argv", [
    ["--max-gpus", "0"],
    ["--host-ram", "1GiB"],
])
def test_no_plan_exits_0_with_a_reason(capsys, argv: list[str]) -> None:  # type: ignore[no-untyped-def]
    status, out = _run(capsys, ["plan", "llama-3-8b", "--method", "sft", "--gpu", "a100-80g", *argv, "--json"])
    assert status == 0
    data = json.loads(out)
    assert data["minimum"] is None and data["recommended"] is None
    assert data["binding_limit"]
    status, out = _run(capsys, ["plan", "llama-3-8b", "--method", "sft", "--gpu", "a100-80g", *argv])
    assert status == 0 and "no plan" in out and "binding limit:" in out


def test_405b_on_one_24gb_gpu_says_how_short(capsys) -> None:  # type: ignore[no-untyped-def]
    status, out = _run(capsys, ["plan", "llama-3.1-405b", "--method", "sft", "--gpu", "rtx4090-24g",
                                "--max-gpus", "1"])
    assert status == 0
    assert "GPU memory of train" in out and "short by" in out


@pytest.mark.parametrize("argv", [
    ["--keep", "zero_stage"],
    ["--keep", "no_such_flag=1"],
    ["--gpu", "no-such-gpu"],
    ["--gpus-per-node", "0"],
])
def test_bad_input_exit_2(capsys, argv: list[str]) -> None:  # type: ignore[no-untyped-def]
    base = ["plan", TINY, "--method", "sft", "--gpu", "a100-80g"]
    if argv[0] == "--gpu":
        base = base[:-2]
    assert main(base + argv) == 2
    assert "memplan: error:" in capsys.readouterr().err
