"""``memplan plan --framework verl``: minimum and recommended layouts over verl's knobs, read back by ``check``.

Independent checks: each plan's command is estimated again through ``memplan check`` (the same verdict and
bytes); the minimum's GPU count is the smallest at which anything fits — every smaller count that verl can
split the step over is estimated with every rollout TP and memory share at verl's most memory-saving settings
(offload, checkpointing, chunked entropy, one sequence per micro-batch), and none fits; ``--keep`` pins stay in
the commands; verl's own start-up rules hold for the emitted commands (checked by hand below).
"""

from __future__ import annotations

import json
import shlex

import pytest

from memplan import frameworks
from memplan.api import estimate_run
from memplan.cli.main import main
from memplan.hardware import resolve_gpu
from memplan.planner.knobs import GMU_GRID

ACTOR = "actor_rollout_ref.actor"
ROLLOUT = "actor_rollout_ref.rollout"


def _run(capsys, argv: list[str]) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    status = main(argv)
    return status, capsys.readouterr().out


def _devices(data: dict) -> list[tuple]:
    return sorted((tuple(d["roles"]), d["count"], d["peak_bytes"], d["reserved_bytes"], d["verdict"])
                  for d in data["devices"])


def _words(command: str) -> dict[str, str]:
    words = shlex.split(command)
    assert words[:3] == ["python3", "-m", "verl.trainer.main_ppo"]
    return dict(w.split("=", 1) for w in words[3:])


@pytest.fixture(scope="module")
def grpo_7b() -> dict:
    from io import StringIO
    from contextlib import redirect_stdout

    out = StringIO()
    with redirect_stdout(out):
        assert main(["plan", "qwen2.5-7b", "--framework", "verl", "--method", "grpo", "--gpu", "h100-80g",
                     "--json"]) == 0
    return json.loads(out.getvalue())


def test_grpo_7b_both_plans_round_trip_through_check(capsys, grpo_7b) -> None:  # type: ignore[no-untyped-def]
    data = grpo_7b
    assert data["binding_limit"] is None
    for kind in ("minimum", "recommended"):
        plan = data[kind]
        status, out = _run(capsys, ["check", "--gpu", "h100-80g", "--json", "--", plan["command"]])
        assert status == 0
        back = json.loads(out)
        assert _devices(back) == _devices(plan)
        assert [h["peak_bytes"] for h in back["hosts"]] == [h["peak_bytes"] for h in plan["hosts"]]
        assert back["summary"]["verdict"] in ("fits", "tight")
    assert data["recommended"]["summary"]["verdict"] == "fits"  # 10% headroom


def test_grpo_7b_commands_obey_verls_start_up_rules(grpo_7b) -> None:  # type: ignore[no-untyped-def]
    """By hand, from verl 0.9.1: the world splits train_batch_size × rollout.n (utils/config.py:121-127), the
    rollout TP divides the world (engine_workers.py:659) and Qwen2.5-7B's 28 heads, and the token budget holds
    one prompt + response (seqlen_balancing.py:384)."""
    for kind in ("minimum", "recommended"):
        w = _words(grpo_7b[kind]["command"])
        world = int(w["trainer.n_gpus_per_node"]) * int(w["trainer.nnodes"])
        tp = int(w[f"{ROLLOUT}.tensor_model_parallel_size"])
        assert int(w["data.train_batch_size"]) * int(w[f"{ROLLOUT}.n"]) % world == 0
        assert world % tp == 0 and 28 % tp == 0
        assert w[f"{ACTOR}.use_dynamic_bsz"] == "true"
        assert int(w[f"{ACTOR}.ppo_max_token_len_per_gpu"]) >= 512 + 512
        assert grpo_7b[kind]["summary"]["num_gpus"] == world


def test_grpo_7b_minimum_is_the_fewest_gpus(grpo_7b) -> None:  # type: ignore[no-untyped-def]
    """Every smaller GPU count that splits 1024 samples (1, 2 when the minimum is 4), at verl's most saving
    settings, each rollout TP dividing it and the 28 heads, each memory share: none fits an H100."""
    fw = frameworks.get("verl")
    gpu = resolve_gpu("h100-80g", location="--gpu")
    minimum = grpo_7b["minimum"]["summary"]["num_gpus"]
    assert 2 <= minimum <= 8
    w = _words(grpo_7b["minimum"]["command"])
    saving = {f"{ACTOR}.fsdp_config.param_offload": "true", f"{ACTOR}.fsdp_config.optimizer_offload": "true",
              "actor_rollout_ref.model.enable_gradient_checkpointing": "true",
              f"{ACTOR}.fsdp_config.entropy_from_logits_with_chunking": "true", f"{ACTOR}.use_dynamic_bsz": "true",
              f"{ACTOR}.ppo_max_token_len_per_gpu": "1024"}
    tried = 0
    for n in (k for k in range(1, minimum) if 1024 % k == 0):
        for tp in (t for t in (1, 2, 4) if n % t == 0):
            for gmu in GMU_GRID:
                words = {**w, **saving, "trainer.n_gpus_per_node": str(n), f"{ROLLOUT}.tensor_model_parallel_size":
                         str(tp), f"{ROLLOUT}.gpu_memory_utilization": str(gmu)}
                command = "python3 -m verl.trainer.main_ppo " + " ".join(f"{k}={v}" for k, v in words.items())
                est = estimate_run(fw.resolve_command(command), gpu=gpu, host_ram_bytes=None)
                assert est.verdict == "oom", command
                tried += 1
    assert tried >= len(GMU_GRID)


def test_keep_pins_a_key_in_both_plans(capsys) -> None:  # type: ignore[no-untyped-def]
    status, out = _run(capsys, ["plan", "qwen2.5-7b", "--framework", "verl", "--method", "grpo", "--gpu", "h100-80g",
                                "--keep", f"{ROLLOUT}.tensor_model_parallel_size=2",
                                "--keep", f"{ACTOR}.fsdp_config.param_offload=true", "--json"])
    assert status == 0
    data = json.loads(out)
    for kind in ("minimum", "recommended"):
        w = _words(data[kind]["command"])
        assert w[f"{ROLLOUT}.tensor_model_parallel_size"] == "2"
        assert w[f"{ACTOR}.fsdp_config.param_offload"] == "true"
        assert data[kind]["layout"]["vllm"]["tensor_parallel_size"] == 2


def test_given_override_is_kept_and_bounds_the_budget(capsys) -> None:  # type: ignore[no-untyped-def]
    status, out = _run(capsys, ["plan", "qwen2.5-7b", "--framework", "verl", "--method", "grpo", "--gpu", "h100-80g",
                                "data.max_response_length=3072", f"{ROLLOUT}.n=5", "--json"])
    assert status == 0
    data = json.loads(out)
    for kind in ("minimum", "recommended"):
        w = _words(data[kind]["command"])
        assert w["data.max_response_length"] == "3072" and w[f"{ROLLOUT}.n"] == "5"
        assert int(w[f"{ACTOR}.ppo_max_token_len_per_gpu"]) >= 512 + 3072
        world = int(w["trainer.n_gpus_per_node"]) * int(w["trainer.nnodes"])
        assert 1024 * 5 % world == 0


def test_ppo_plans_the_critic_too(capsys) -> None:  # type: ignore[no-untyped-def]
    status, out = _run(capsys, ["plan", "qwen2.5-7b", "--framework", "verl", "--method", "ppo", "--gpu", "a100-80g",
                                "--json"])
    assert status == 0
    data = json.loads(out)
    plan = data["minimum"]
    assert set(plan["layout"]["groups"]) == {"actor", "critic"}
    w = _words(plan["command"])
    assert w["algorithm.adv_estimator"] == "gae"
    assert "critic.ppo_max_token_len_per_gpu" in w  # the critic's own budget, searched
    # verl 0.9.1's V1 trainer (trainer.use_v1: true in its generated ppo_trainer.yaml) cuts the critic's
    # micro-batches by ppo_infer_max_token_len_per_gpu (w:verl/trainer/ppo/v1/trainer_base.py:266-268), a
    # dataclass field added with '+': the plan bounds that one too
    assert w["++critic.ppo_infer_max_token_len_per_gpu"] == w["critic.ppo_max_token_len_per_gpu"]
    status, out = _run(capsys, ["check", "--gpu", "a100-80g", "--json", "--", plan["command"]])
    assert _devices(json.loads(out)) == _devices(plan)


def test_plan_json_has_the_openrlhf_plan_shape(capsys, grpo_7b) -> None:  # type: ignore[no-untyped-def]
    status, out = _run(capsys, ["plan", "tests/data/tiny/llama-tiny.json", "--method", "ppo", "--gpu", "8GiB",
                                "--max_len", "512", "--json"])
    openrlhf = json.loads(out)
    assert set(grpo_7b) == set(openrlhf)
    for kind in ("minimum", "recommended"):
        assert set(grpo_7b[kind]) == set(openrlhf[kind])
        assert set(grpo_7b[kind]["layout"]) == set(openrlhf[kind]["layout"])


@pytest.mark.parametrize(("argv", "location"), [
    (["--keep", "actor_rollout_ref.actor.no_such_key=1"], "--keep actor_rollout_ref.actor.no_such_key=1"),
    (["--keep", "trainer.nnodes"], "--keep trainer.nnodes"),
    (["--allow-lora"], "--allow-lora"),
    (["--openrlhf-version", "0.9"], "--openrlhf-version"),
])
def test_bad_input_is_one_line(capsys, argv, location) -> None:  # type: ignore[no-untyped-def]
    status = main(["plan", "qwen2.5-7b", "--framework", "verl", "--method", "grpo", "--gpu", "h100-80g", *argv])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err and location in err and "Traceback" not in err
