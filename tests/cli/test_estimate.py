"""``memplan estimate`` and ``memplan check``: the JSON contract, hand-checkable values, bad input."""

from __future__ import annotations

import json

import pytest

from memplan.cli.main import main

SFT_8B = ["estimate", "llama-3-8b", "--method", "sft", "--gpus", "8", "--gpu", "a100-80g", "--json"]


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_json_contract_and_breakdown_sums(capsys) -> None:
    data = _json(capsys, SFT_8B)
    assert set(data) >= {"memplan_version", "models", "devices", "hosts", "summary"}
    # Llama-3-8B: 8,030,261,248 parameters (transformers' meta-device count)
    assert data["models"]["policy"] == {"name": "llama-3-8b", "num_params": 8_030_261_248,
                                        "trainable_params": 8_030_261_248}
    device = data["devices"][0]
    assert device["count"] == 8 and device["roles"] == ["policy"]
    assert sum(t["bytes"] for t in device["breakdown"]) == device["peak_bytes"]
    assert device["phases"][device["peak_phase"]] == device["peak_bytes"]
    assert data["summary"]["num_gpus"] == 8
    assert data["summary"]["total_gpu_peak_bytes"] == 8 * device["peak_bytes"]
    for host in data["hosts"]:
        assert sum(t["bytes"] for t in host["breakdown"]) == host["peak_bytes"]


def test_bf16_weights_term_by_hand(capsys) -> None:
    # ZeRO-2 over 8 GPUs keeps the whole bf16 model on every GPU: the flat buffer of each param group
    # padded to a multiple of 2·8 elements, 2 bytes each; ≥ 8,030,261,248 × 2 B = 16,060,522,496 B.
    data = _json(capsys, SFT_8B + ["--zero_stage", "2"])
    params = next(t for t in data["devices"][0]["breakdown"] if t["path"] == "policy.params")
    assert 16_060_522_496 <= params["bytes"] <= 16_060_522_496 + 2 * 2 * 16


def test_check_reads_the_same_command(capsys) -> None:
    a = _json(capsys, SFT_8B + ["--zero_stage", "3"])
    command = ("deepspeed --num_gpus 8 --module openrlhf.cli.train_sft \\\n  --pretrain llama-3-8b --ds.zero_stage 3")
    b = _json(capsys, ["check", "--gpu", "a100-80g", "--json", "--", command])
    assert a["devices"][0]["peak_bytes"] == b["devices"][0]["peak_bytes"]


def test_more_gpus_lower_peak_at_zero3(capsys) -> None:
    small = _json(capsys, ["estimate", "llama-2-13b", "--method", "sft", "--gpus", "2", "--zero_stage", "3", "--json"])
    big = _json(capsys, ["estimate", "llama-2-13b", "--method", "sft", "--gpus", "8", "--zero_stage", "3", "--json"])
    assert big["devices"][0]["peak_bytes"] < small["devices"][0]["peak_bytes"]


def test_text_report_names_peak_and_suggestions(capsys) -> None:
    assert main(["estimate", "llama-3-8b", "--method", "sft", "--gpus", "1", "--gpu", "a100-80g"]) == 0
    out = capsys.readouterr().out
    assert "OOM" in out and "what would help" in out and "--adam_offload" in out


BAD = [
    (["estimate", "llama-3-8b", "--method", "sft", "--zero_stage", "two"], "--zero_stage"),
    (["estimate", "llama-3-8b", "--method", "sft", "--micro_train_batch_size", "0"], "--micro_train_batch_size"),
    (["estimate", "llama-3-8b", "--method", "sft", "--max_len", "-5"], "--max_len"),
    (["estimate", "llama-3-8b", "--method", "sft", "--gpu", "80XB"], "--gpu"),
    (["estimate", "llama-3-8b", "--method", "sft", "--host-ram", "lots"], "--host-ram"),
    (["estimate", "llama-3-8b", "--method", "sft", "--gpus", "0"], "--gpus"),
    (["estimate", "nope-model", "--method", "sft"], "unknown model"),
    (["estimate", "llama-3-8b", "--method", "magic"], "--method"),
    (["check", "--", "deepspeed --module openrlhf.cli.train_sft --pretrain 'llama-3-8b"], "quot"),
    (["check", "--", "deepspeed --module openrlhf.cli.train_foo --pretrain x"], "train_foo"),
    (["check", "--", "deepspeed --module openrlhf.cli.train_sft --pretrain llama-3-8b --zero_stage"], "--zero_stage"),
    (["check"], "COMMAND"),
]


@pytest.mark.parametrize(("argv", "needle"), BAD)
def test_bad_input_is_one_line_exit_2(capsys, argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert err.count("\n") <= 2
