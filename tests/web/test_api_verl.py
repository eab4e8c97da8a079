"""The JSON API with ``framework: "verl"``: the same answers as the CLI's ``--json`` for verl estimates, checks
(the framework read from the pasted command) and plans; bad verl requests are 422s naming the field."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install '.[web]')")
from fastapi.testclient import TestClient  # noqa: E402

from memplan.cli.main import main  # noqa: E402
from memplan.web.app import create_app  # noqa: E402

VERL_CMD = ("python3 -m verl.trainer.main_ppo algorithm.adv_estimator=grpo data.train_batch_size=256 \\\n"
            "  data.max_prompt_length=512 data.max_response_length=1024 actor_rollout_ref.model.path=qwen2.5-7b \\\n"
            "  actor_rollout_ref.actor.ppo_mini_batch_size=64 actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 "
            "actor_rollout_ref.rollout.name=vllm actor_rollout_ref.rollout.n=5 "
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 "
            "actor_rollout_ref.rollout.tensor_model_parallel_size=2 trainer.n_gpus_per_node=8 trainer.nnodes=1")

CASES = [
    (["estimate", "qwen2.5-7b", "--framework", "verl", "--method", "grpo", "--gpu", "h100-80g",
      "trainer.n_gpus_per_node=8", "actor_rollout_ref.rollout.gpu_memory_utilization=0.6"],
     "estimate", {"framework": "verl", "model": "qwen2.5-7b", "method": "grpo", "gpu": "h100-80g",
                  "flags": ["trainer.n_gpus_per_node=8", "actor_rollout_ref.rollout.gpu_memory_utilization=0.6"]}),
    (["estimate", "qwen2.5-7b", "--framework", "verl", "--method", "ppo", "--framework-version", "0.8",
      "trainer.n_gpus_per_node=4"],
     "estimate", {"framework": "verl", "model": "qwen2.5-7b", "method": "ppo", "framework_version": "0.8",
                  "flags": ["trainer.n_gpus_per_node=4"]}),
    (["check", "--gpu", "h100-80g", "--", VERL_CMD], "check", {"command": VERL_CMD, "gpu": "h100-80g"}),
    (["check", "--framework", "verl", "--host-ram", "1TiB", "--", VERL_CMD],
     "check", {"command": VERL_CMD, "framework": "verl", "host_ram": "1TiB"}),
    (["plan", "qwen2.5-7b", "--framework", "verl", "--method", "grpo", "--gpu", "h100-80g"],
     "plan", {"framework": "verl", "model": "qwen2.5-7b", "method": "grpo", "gpu": "h100-80g"}),
    (["plan", "qwen2.5-7b", "--framework", "verl", "--method", "grpo", "--gpu", "h100-80g,a100-80g",
      "data.max_response_length=2048", "--keep", "actor_rollout_ref.rollout.tensor_model_parallel_size=2"],
     "plan", {"framework": "verl", "model": "qwen2.5-7b", "method": "grpo", "gpu": "h100-80g,a100-80g",
              "flags": ["data.max_response_length=2048"],
              "keep": ["actor_rollout_ref.rollout.tensor_model_parallel_size=2"]}),
]


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(), raise_server_exceptions=False)


def _without_timing(data):
    if isinstance(data, dict):
        return {k: _without_timing(v) for k, v in data.items() if k != "seconds"}
    if isinstance(data, list):
        return [_without_timing(v) for v in data]
    return data


@pytest.mark.parametrize(("argv", "path", "body"), CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_api_equals_cli_json(client, capsys, argv, path, body) -> None:
    argv = argv[:1] + ["--json"] + argv[1:] if argv[0] == "check" else argv + ["--json"]
    assert main(argv) == 0
    cli = json.loads(capsys.readouterr().out)
    response = client.post(f"/api/{path}", json=body)
    assert response.status_code == 200, response.text
    assert _without_timing(response.json()) == _without_timing(cli)


def test_pasted_verl_command_is_read_as_verl(client) -> None:
    data = client.post("/api/check", json={"command": VERL_CMD, "gpu": "h100-80g"}).json()
    assert data["summary"]["num_gpus"] == 8
    assert any(d["roles"] == ["actor", "rollout"] for d in data["devices"])


BAD = [
    ("estimate", {"framework": "megatron", "model": "qwen2.5-7b", "method": "grpo"}, "framework"),
    ("estimate", {"framework": "verl", "model": "qwen2.5-7b", "method": "sft"}, "--method"),
    ("estimate", {"framework": "verl", "model": "qwen2.5-7b", "method": "grpo", "openrlhf_version": "0.9"},
     "openrlhf_version"),
    ("estimate", {"framework": "verl", "model": "qwen2.5-7b", "method": "grpo", "framework_version": "7.0"},
     "framework"),
    ("estimate", {"framework": "verl", "model": "qwen2.5-7b", "method": "grpo", "flags": ["trainer.no_such=1"]},
     "trainer.no_such"),
    ("estimate", {"framework": "verl", "model": "qwen2.5-7b", "method": "grpo", "flags": ["x" * 2001]}, "flags[0]"),
    ("check", {"command": VERL_CMD, "framework": "openrlhf"}, "command"),
    ("plan", {"framework": "verl", "model": "qwen2.5-7b", "method": "grpo", "gpu": "h100-80g",
              "keep": ["trainer.no_such=1"]}, "--keep trainer.no_such=1"),
    ("plan", {"framework": "verl", "model": "qwen2.5-7b", "method": "grpo", "gpu": "h100-80g", "allow_lora": True},
     "--allow-lora"),
]


@pytest.mark.parametrize(("path", "body", "location"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_verl_requests_are_422_with_location(client, path, body, location) -> None:
    response = client.post(f"/api/{path}", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert set(error) == {"location", "message"} and error["message"]
    assert location in error["location"], error
    assert "Traceback" not in response.text
