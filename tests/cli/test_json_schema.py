"""DESIGN.md's ``--json`` contract, one schema test per command (plain Python checks, no jsonschema).

The contract (../shared/DESIGN.md, "Command-line contract"): every byte value an exact int; a breakdown
lists the terms resident at the entry's peak phase and sums to ``peak_bytes``; categories from a fixed
set; verdicts fits/tight/oom/null; each device carries ``reserved_bytes`` (and ``reserved_phases``), which
the verdict compares with ``capacity_bytes``; each host carries what its verdict is judged against;
``plan`` gives minimum/recommended/candidates_evaluated/binding_limit, a null plan with its binding limit,
and with several GPU types the best at the top level plus one object per type under ``plans``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from memplan.cli.main import main

TINY = "tests/data/tiny/llama-tiny.json"
CATEGORIES = {"param", "buffer", "grad", "optimizer", "activation", "temp", "kv_cache", "overhead"}
VERDICTS = {"fits", "tight", "oom", None}
RANK = {None: 0, "fits": 1, "tight": 2, "oom": 3}


def _json(capsys, argv: list[str]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    assert main(argv) == 0, argv
    data = json.loads(capsys.readouterr().out)
    assert isinstance(data, dict)
    return data


def _is_bytes(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_breakdown(entry: dict[str, Any]) -> None:
    assert entry["breakdown"], entry["id"]
    for term in entry["breakdown"]:
        assert isinstance(term["path"], str) and term["path"]
        assert term["category"] in CATEGORIES, term
        assert _is_bytes(term["bytes"]), term
        # resident at the entry's peak phase: the peak phase's own terms, or persistent state
        assert term["phase"] == entry["peak_phase"] or term["persistent"], (entry["id"], term)
    assert sum(t["bytes"] for t in entry["breakdown"]) == entry["peak_bytes"], entry["id"]


def _check_phases(entry: dict[str, Any]) -> None:
    phases = entry["phases"]
    assert phases and all(isinstance(p, str) and _is_bytes(b) for p, b in phases.items())
    assert entry["peak_bytes"] == max(phases.values()) == phases[entry["peak_phase"]]


def check_device(d: dict[str, Any]) -> None:
    """One GPU entry; its verdict reproduced from the fields it carries."""
    assert isinstance(d["id"], str) and isinstance(d["roles"], list) and all(isinstance(r, str) for r in d["roles"])
    assert isinstance(d["count"], int) and d["count"] >= 1
    _check_phases(d)
    _check_breakdown(d)
    assert set(d["reserved_phases"]) == set(d["phases"])
    assert all(_is_bytes(b) and b >= d["phases"][p] for p, b in d["reserved_phases"].items())
    assert d["reserved_bytes"] == d["reserved_phases"][d["peak_phase"]] >= d["peak_bytes"]
    assert d["capacity_bytes"] is None or _is_bytes(d["capacity_bytes"])
    assert d["verdict"] in VERDICTS
    if d["capacity_bytes"] is None:
        assert d["verdict"] is None
    else:
        over = d["reserved_bytes"] > d["capacity_bytes"] or d["startup_error"] is not None
        assert (d["verdict"] == "oom") == over, d


def check_host(h: dict[str, Any]) -> None:
    """One node entry; its verdict reproduced from what it is judged against."""
    assert isinstance(h["id"], str)
    _check_phases(h)
    if h["peak_bytes"]:
        _check_breakdown(h)
    judged = h["judged_against_bytes"]
    assert judged is None or _is_bytes(judged)
    assert h["verdict"] in VERDICTS
    assert (h["verdict"] is None) == (judged is None)
    if judged is not None:
        assert (h["verdict"] == "oom") == (h["peak_bytes"] > judged)


def check_estimate(data: dict[str, Any]) -> None:
    """The estimate object of DESIGN.md."""
    assert isinstance(data["memplan_version"], str)
    for role, model in data["models"].items():
        assert isinstance(role, str) and isinstance(model["name"], str)
        assert _is_bytes(model["num_params"]) and 0 <= model["trainable_params"] <= model["num_params"]
    for d in data["devices"]:
        check_device(d)
    for h in data["hosts"]:
        check_host(h)
    s = data["summary"]
    devices, hosts = data["devices"], data["hosts"]
    assert s["num_gpus"] == sum(d["count"] for d in devices)
    assert s["num_nodes"] == sum(h.get("count", 1) for h in hosts)
    assert s["max_gpu_peak_bytes"] == max(d["peak_bytes"] for d in devices)
    assert s["max_host_peak_bytes"] == max(h["peak_bytes"] for h in hosts)
    assert s["total_gpu_peak_bytes"] == sum(d["peak_bytes"] * d["count"] for d in devices)
    assert {s["verdict"], s["gpu_verdict"], s["host_verdict"]} <= VERDICTS
    assert s["gpu_verdict"] == max((d["verdict"] for d in devices), key=RANK.__getitem__)
    assert s["verdict"] == max((s["gpu_verdict"], s["host_verdict"]), key=RANK.__getitem__)
    assert all(isinstance(n, str) for n in data["notes"])


def check_plan_fields(data: dict[str, Any]) -> None:
    """minimum / recommended / binding_limit: each PLAN an estimate with its command; a null plan with its reason."""
    for kind in ("minimum", "recommended"):
        plan = data[kind]
        if plan is None:
            assert isinstance(data["binding_limit"], str) and data["binding_limit"], kind
        else:
            check_estimate(plan)
            assert isinstance(plan["command"], str) and "openrlhf.cli." in plan["command"]
            assert isinstance(plan["gpu"], str)
    if data["minimum"] is not None and data["recommended"] is not None:
        assert data["binding_limit"] is None
    assert isinstance(data["candidates_evaluated"], int) and data["candidates_evaluated"] >= 0


def test_estimate_json(capsys) -> None:  # type: ignore[no-untyped-def]
    data = _json(capsys, ["estimate", "llama-3-8b", "--method", "dpo", "--gpus", "8", "--gpu", "a100-80g",
                          "--host-ram", "1TB", "--adam_offload", "--json"])
    check_estimate(data)
    rl = _json(capsys, ["estimate", "qwen2.5-0.5b", "--method", "ppo", "--reward_pretrain", "qwen2.5-0.5b",
                        "--gpu", "a100-80g", "--host-ram", "512GB", "--vllm_num_engines", "2", "--json"])
    check_estimate(rl)


def test_check_json(capsys) -> None:  # type: ignore[no-untyped-def]
    command = "deepspeed --num_gpus 2 --module openrlhf.cli.train_sft --pretrain llama-3-8b --zero_stage 3"
    data = _json(capsys, ["check", "--gpu", "rtx4090-24g", "--json", "--", command])
    check_estimate(data)
    assert data["summary"]["verdict"] == "oom"
    for s in data["suggestions"]:
        assert isinstance(s["change"], str) and isinstance(s["saving_bytes"], int) and s["verdict"] != "oom"


def test_plan_one_gpu_json(capsys) -> None:  # type: ignore[no-untyped-def]
    data = _json(capsys, ["plan", TINY, "--method", "ppo", "--gpu", "8GiB", "--max_len", "512", "--json"])
    check_plan_fields(data)
    assert data["minimum"] is not None
    nothing = _json(capsys, ["plan", "llama-3-8b", "--method", "sft", "--gpu", "a100-80g", "--max-gpus", "0", "--json"])
    check_plan_fields(nothing)
    assert nothing["minimum"] is None


def test_plan_several_gpus_json(capsys) -> None:  # type: ignore[no-untyped-def]
    data = _json(capsys, ["plan", TINY, "--method", "sft", "--gpu", "4GiB,a100-80g", "--json"])
    check_plan_fields(data)
    assert [p["gpu"] for p in data["plans"]] == ["custom", "a100-80g"]
    for per_type in data["plans"]:
        assert {"gpu", "minimum", "recommended", "binding_limit"} <= set(per_type)
        check_plan_fields(per_type)
    assert data["candidates_evaluated"] == sum(p["candidates_evaluated"] for p in data["plans"])


def test_models_json(capsys) -> None:  # type: ignore[no-untyped-def]
    data = _json(capsys, ["models", "--json"])
    assert data["models"]
    for m in data["models"]:
        assert isinstance(m["name"], str) and isinstance(m["hub_id"], str) and "/" in m["hub_id"]
        assert _is_bytes(m["num_params"]) and m["num_params"] > 0


def test_gpus_json(capsys) -> None:  # type: ignore[no-untyped-def]
    data = _json(capsys, ["gpus", "--json"])
    assert data["gpus"]
    for g in data["gpus"]:
        assert isinstance(g["name"], str)
        assert _is_bytes(g["memory_bytes"]) and 0 < g["capacity_bytes"] <= g["memory_bytes"]


def test_validate_json(capsys) -> None:  # type: ignore[no-untyped-def]
    data = _json(capsys, ["validate", "--kind", "exact", "--json"])
    assert isinstance(data["passed"], bool) and isinstance(data["validation_dir"], str)
    for s in data["summaries"]:
        assert s["kind"] == "exact" and 0 <= s["within"] <= s["compared"]
    for r in data["rows"]:
        assert isinstance(r["case"], str) and isinstance(r["within"], bool)


@pytest.mark.parametrize("argv", [
    ["llama-3-8b", "--method", "sft", "--gpus", "8", "--zero_stage", "3", "--adam_offload", "--gradient_checkpointing"],
    ["llama-3-8b", "--method", "kd", "--gpus", "4", "--openrlhf-version", "0.9"],
    ["llama-3-8b", "--method", "sft", "--gpus", "2", "--lora_rank", "16", "--zero_stage", "2"],
    ["qwen2.5-0.5b", "--method", "ppo", "--reward_pretrain", "qwen2.5-0.5b", "--vllm_num_engines", "2",
     "--adam_offload", "--colocate_actor_ref"],
    ["qwen2.5-0.5b", "--method", "grpo", "--remote_rm_url", "http://rm", "--colocate_all_models",
     "--vllm_num_engines", "8", "--actor_num_gpus_per_node", "8", "--ref_num_gpus_per_node", "8",
     "--vllm_enable_sleep", "--deepspeed_enable_sleep", "--vllm_gpu_memory_utilization", "0.5"],
])
def test_breakdowns_sum_to_peak_at_the_peak_phase(capsys, argv: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Every device's and host's breakdown holds only terms of its peak phase (or persistent) and sums to it."""
    data = _json(capsys, ["estimate", *argv, "--gpu", "a100-80g", "--host-ram", "2TB", "--json"])
    check_estimate(data)
