"""Honest reporting (issue 11 item 4): each example of the issue, as the user meets it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from memplan.cli import validate as validate_cli
from memplan.cli.main import main
from memplan.frameworks.openrlhf.flags import MEMORY_KEYS
from memplan.frameworks.openrlhf.unmodelled import NO_MEMORY_EFFECT, UNMODELLED

SRC = Path(__file__).resolve().parents[2] / "src" / "memplan"
TINY = "tests/data/tiny/llama-tiny.json"
GiB = 1 << 30


def _out(capsys, argv: list[str]) -> str:  # type: ignore[no-untyped-def]
    assert main(argv) == 0, argv
    return capsys.readouterr().out


def test_plan_without_host_ram_says_so(capsys) -> None:  # type: ignore[no-untyped-def]
    argv = ["plan", "llama-3-8b", "--method", "sft", "--gpu", "a100-80g"]
    data = json.loads(_out(capsys, [*argv, "--json"]))
    assert data["host_ram_constrained"] is False
    need = data["max_host_bytes_per_node"]["minimum"]
    assert need == max(h["peak_bytes"] for h in data["minimum"]["hosts"])
    assert any("host RAM was not constrained" in n and "--host-ram" in n for n in data["notes"])
    assert "note: host RAM was not constrained" in _out(capsys, argv)
    bounded = json.loads(_out(capsys, [*argv, "--host-ram", "2TB", "--json"]))
    assert bounded["host_ram_constrained"] is True
    assert not any("not constrained" in n for n in bounded["notes"])


def test_plan_command_names_the_hub_id_and_reads_back(capsys) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(_out(capsys, ["plan", "llama-3-8b", "--method", "sft", "--gpu", "a100-80g", "--json"]))
    plan = data["minimum"]
    # index.toml: llama-3-8b's hub id, which transformers' from_pretrained can load; 0.11 spells the flag
    # --model.model_name_or_path (train_sft.py@3c3be62 line 214)
    assert "--model.model_name_or_path meta-llama/Meta-Llama-3-8B" in plan["command"]
    assert " llama-3-8b" not in plan["command"]
    back = json.loads(_out(capsys, ["check", "--gpu", "a100-80g", "--json", "--", plan["command"]]))
    back.pop("suggestions")
    assert back == {k: v for k, v in plan.items() if k not in ("gpu", "layout", "flags")}


def test_plan_several_gpus_best_at_top_level_and_null_with_reason(capsys) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(_out(capsys, ["plan", TINY, "--method", "sft", "--gpu", "rtx4090-24g,a100-80g", "--json"]))
    fewest = min(p["minimum"]["summary"]["num_gpus"] for p in data["plans"])
    assert data["minimum"]["summary"]["num_gpus"] == fewest
    assert data["minimum"]["gpu"] == "rtx4090-24g"  # a tie on GPUs and host RAM keeps the order given
    none = json.loads(_out(capsys, ["plan", "llama-3.1-405b", "--method", "sft", "--gpu", "rtx4090-24g,a100-80g",
                                    "--max-gpus", "1", "--json"]))
    assert none["minimum"] is None and none["recommended"] is None
    assert "rtx4090-24g:" in none["binding_limit"] and "a100-80g:" in none["binding_limit"]
    for p in none["plans"]:
        assert p["minimum"] is None and "GPU memory" in p["binding_limit"]


def test_vllm_at_its_configured_share_fits(capsys) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(_out(capsys, ["estimate", "qwen2.5-0.5b", "--method", "ppo", "--remote_rm_url", "http://rm",
                                    "--gpu", "a100-80g", "--vllm_num_engines", "2", "--json"]))
    engine = next(d for d in data["devices"] if d["roles"] == ["rollout"])
    # vLLM takes 0.95 of the GPU by design: under 10% free, yet what it was told to take
    assert engine["capacity_bytes"] - engine["reserved_bytes"] < 0.10 * engine["capacity_bytes"]
    assert engine["verdict"] == "fits" and engine["startup_error"] is None


def test_vllm_that_cannot_start_is_oom(capsys) -> None:  # type: ignore[no-untyped-def]
    # Llama-3-8B's bf16 weights, 8,030,261,248 × 2 B = 14.96 GiB, exceed 0.6 × 24 GiB = 14.4 GiB: vLLM raises
    # "No available memory for the cache blocks." (vllm/v1/core/kv_cache_utils.py)
    data = json.loads(_out(capsys, ["estimate", "llama-3-8b", "--method", "ppo", "--remote_rm_url", "http://rm",
                                    "--gpu", "rtx3090-24g", "--vllm_num_engines", "1",
                                    "--vllm_gpu_memory_utilization", "0.6", "--json"]))
    engine = next(d for d in data["devices"] if d["roles"] == ["rollout"])
    assert engine["verdict"] == "oom" and "No available memory" in engine["startup_error"]
    assert any("cannot start" in n for n in data["notes"])


@pytest.mark.parametrize("argv", [
    ["llama-3-8b", "--method", "sft", "--gpus", "1", "--gpu", "rtx4090-24g", "--micro_train_batch_size", "8"],
    ["llama-3-8b", "--method", "dpo", "--gpus", "2", "--gpu", "a100-40g", "--max_len", "8192"],
])
def test_no_suggestion_still_ooms(capsys, argv: list[str]) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(_out(capsys, ["estimate", *argv, "--json"]))
    assert data["summary"]["verdict"] == "oom"
    assert all(s["verdict"] != "oom" for s in data["suggestions"])
    if not data["suggestions"]:
        assert "no single change" in _out(capsys, ["estimate", *argv])


def test_cluster_line_plain_grammar(capsys) -> None:  # type: ignore[no-untyped-def]
    out = _out(capsys, ["estimate", "llama-3-8b", "--method", "sft", "--gpus", "1"])
    cluster = next(line for line in out.splitlines() if line.startswith("cluster:"))
    assert cluster.startswith("cluster: 1 GPU, ") and "; 1 node, " in cluster
    assert "sum of per-GPU peaks" in cluster and "(s)" not in cluster


def test_liger_kernel_note(capsys) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(_out(capsys, ["estimate", "llama-3-8b", "--method", "sft", "--gpus", "8", "--use_liger_kernel",
                                    "--json"]))
    note = next(n for n in data["notes"] if n.startswith("--use_liger_kernel is not modelled"))
    assert "over-estimates" in note
    plain = json.loads(_out(capsys, ["estimate", "llama-3-8b", "--method", "sft", "--gpus", "8", "--json"]))
    assert not any("not modelled" in n for n in plain["notes"])
    assert plain["devices"] == data["devices"]  # not modelled: the numbers do not move


def test_every_memory_key_is_read_or_noted() -> None:
    """A memory key no job builder reads must be in UNMODELLED (a note) or NO_MEMORY_EFFECT (with a reason)."""
    code = "\n".join(p.read_text() for p in SRC.rglob("*.py")
                     if p.name not in ("flags.py", "unmodelled.py") and "tracing" not in p.parts)
    per_role = {f"{role}_{suffix}" for role in ("actor", "critic", "ref", "reward")
                for suffix in ("num_nodes", "num_gpus_per_node")}
    assert '_num_nodes")' in code and '_num_gpus_per_node")' in code  # rl_job reads f"{prefix}_num_nodes"
    silent = [k for k in sorted(MEMORY_KEYS - set(UNMODELLED) - set(NO_MEMORY_EFFECT) - per_role)
              if f'"{k}"' not in code]
    assert silent == []
    assert set(UNMODELLED) <= MEMORY_KEYS and set(NO_MEMORY_EFFECT) <= MEMORY_KEYS


def test_assumed_gpu_count_and_second_command_notes(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    one = "deepspeed --module openrlhf.cli.train_sft --pretrain llama-3-8b"
    two = one + "\ndeepspeed --num_gpus 2 --module openrlhf.cli.train_dpo --pretrain llama-3-8b\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(two))
    data = json.loads(_out(capsys, ["check", "--json", "-"]))
    assert data["summary"]["num_gpus"] == 8 and data["devices"][0]["roles"] == ["policy"]
    assert any("assumed 8 GPUs per node" in n for n in data["notes"])
    assert any("2 OpenRLHF training commands" in n and "train_sft" in n for n in data["notes"])
    stated = json.loads(_out(capsys, ["check", "--json", "--", one.replace("deepspeed", "deepspeed --num_gpus 8")]))
    assert not any("assumed" in n for n in stated["notes"])


def test_validate_from_another_directory(capsys, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a folder inside the checkout (CI installs memplan non-editable, so the checkout is found from the cwd)
    monkeypatch.chdir(Path(__file__).resolve().parents[1] / "data")
    data = json.loads(_out(capsys, ["validate", "--kind", "exact", "--json"]))
    assert data["passed"] and Path(data["validation_dir"]).is_absolute()
    monkeypatch.setattr(validate_cli, "find_checkout", lambda start: None)
    assert main(["validate"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkout" in err and "--dir" in err


def test_rl_without_vllm_engines_says_it_cannot_generate(capsys) -> None:  # type: ignore[no-untyped-def]
    # OpenRLHF 0.8-0.11 always generates through _generate_vllm (experience_maker.py@c0e2ee2 line 284,
    # samples_generator.py@3c3be62 lines 216-233): without engines the first rollout has no engine to use.
    base = ["estimate", "llama-3-8b", "--method", "grpo", "--remote_rm_url", "http://rm", "--json"]
    without = json.loads(_out(capsys, [*base, "--vllm_tensor_parallel_size", "2"]))
    assert any(n.startswith("no vLLM engines") and "--vllm_tensor_parallel_size have no effect" in n
               for n in without["notes"])
    engines = json.loads(_out(capsys, [*base, "--vllm_num_engines", "2"]))
    assert not any(n.startswith("no vLLM engines") for n in engines["notes"])
