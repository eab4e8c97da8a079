"""The JSON API answers exactly what the CLI's ``--json`` prints (OpenRLHF and verl), and every bad request gets
a 4xx ``{"error": {"location", "message"}}`` naming what is wrong (never a traceback)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install '.[web]')")
from fastapi.testclient import TestClient  # noqa: E402

from memplan.cli.main import main  # noqa: E402
from memplan.web.app import MAX_BODY_BYTES, create_app  # noqa: E402

PPO_70B = ["--reward_pretrain", "llama-2-70b", "--actor_num_gpus_per_node", "8", "--critic_num_gpus_per_node", "8",
           "--ref_num_gpus_per_node", "4", "--reward_num_gpus_per_node", "4", "--vllm_num_engines", "4",
           "--vllm_tensor_parallel_size", "2", "--zero_stage", "3", "--adam_offload", "--gradient_checkpointing"]
SFT_CMD = ("deepspeed --num_gpus 8 --module openrlhf.cli.train_sft --pretrain meta-llama/Meta-Llama-3-8B "
           "--zero_stage 2 --gradient_checkpointing --packing_samples --max_len 4096 --micro_train_batch_size 1")

#: (CLI argv, API path, API body): ten estimates, six checks, four plans.
CASES = [
    (["estimate", "llama-3-8b", "--method", "sft", "--gpus", "8", "--gpu", "a100-80g"],
     "estimate", {"model": "llama-3-8b", "method": "sft", "gpus": 8, "gpu": "a100-80g"}),
    (["estimate", "llama-3-8b", "--method", "sft", "--gpu", "a100-80g", "--zero_stage", "3", "--adam_offload",
      "--host-ram", "512GiB"],
     "estimate", {"model": "llama-3-8b", "method": "sft", "gpu": "a100-80g", "host_ram": "512GiB",
                  "flags": ["--zero_stage", "3", "--adam_offload"]}),
    (["estimate", "llama-2-70b", "--method", "sft", "--nodes", "2", "--gpus-per-node", "8", "--gpu", "h100-80g",
      "--zero_stage", "3", "--gradient_checkpointing"],
     "estimate", {"model": "llama-2-70b", "method": "sft", "nodes": 2, "gpus_per_node": 8, "gpu": "h100-80g",
                  "flags": ["--zero_stage", "3", "--gradient_checkpointing"]}),
    (["estimate", "llama-3-8b", "--method", "dpo", "--gpus", "4", "--gpu", "rtx4090-24g", "--lora_rank", "16"],
     "estimate", {"model": "llama-3-8b", "method": "dpo", "gpus": 4, "gpu": "rtx4090-24g",
                  "flags": ["--lora_rank", "16"]}),
    (["estimate", "llama-3-8b", "--method", "rm", "--gpus", "8"],
     "estimate", {"model": "llama-3-8b", "method": "rm", "gpus": 8}),
    (["estimate", "llama-2-7b", "--method", "sft", "--gpus", "1", "--gpu", "a100-40g", "--max_len", "8192",
      "--micro_train_batch_size", "4"],
     "estimate", {"model": "llama-2-7b", "method": "sft", "gpus": 1, "gpu": "a100-40g",
                  "flags": ["--max_len", "8192", "--micro_train_batch_size", "4"]}),
    (["estimate", "llama-2-70b", "--method", "ppo", "--gpu", "a800-80g", "--host-ram", "1600GB", *PPO_70B],
     "estimate", {"model": "llama-2-70b", "method": "ppo", "gpu": "a800-80g", "host_ram": "1600GB",
                  "flags": PPO_70B}),
    (["estimate", "llama-3-8b", "--method", "grpo", "--gpu", "h100-80g", "--remote_rm_url", "http://rm",
      "--colocate_all_models", "--vllm_enable_sleep", "--deepspeed_enable_sleep", "--actor_num_gpus_per_node", "8",
      "--ref_num_gpus_per_node", "8", "--vllm_num_engines", "8", "--init_kl_coef", "0.01"],
     "estimate", {"model": "llama-3-8b", "method": "grpo", "gpu": "h100-80g",
                  "flags": ["--remote_rm_url", "http://rm", "--colocate_all_models", "--vllm_enable_sleep",
                            "--deepspeed_enable_sleep", "--actor_num_gpus_per_node", "8",
                            "--ref_num_gpus_per_node", "8", "--vllm_num_engines", "8", "--init_kl_coef", "0.01"]}),
    (["estimate", "llama-3-8b", "--method", "sft", "--gpus", "8", "--gpu", "a100-80g", "--openrlhf-version", "0.8"],
     "estimate", {"model": "llama-3-8b", "method": "sft", "gpus": 8, "gpu": "a100-80g", "openrlhf_version": "0.8"}),
    (["estimate", "llama-3-8b", "--method", "sft", "--gpus", "1", "--gpu", "a100-80g"],  # OOM: with suggestions
     "estimate", {"model": "llama-3-8b", "method": "sft", "gpus": 1, "gpu": "a100-80g"}),
    (["check", "--gpu", "a100-80g", "--", SFT_CMD], "check", {"command": SFT_CMD, "gpu": "a100-80g"}),
    (["check", "--", SFT_CMD], "check", {"command": SFT_CMD}),
    (["check", "--gpu", "a100-80g", "--host-ram", "1TiB", "--", SFT_CMD + " --adam_offload"],
     "check", {"command": SFT_CMD + " --adam_offload", "gpu": "a100-80g", "host_ram": "1TiB"}),
    (["check", "--gpu", "a100-80g", "--", "deepspeed --num_gpus 1 --module openrlhf.cli.train_sft \\\n"
      "  --pretrain meta-llama/Meta-Llama-3-8B --zero_stage 2 --max_len 128"],
     "check", {"command": "deepspeed --num_gpus 1 --module openrlhf.cli.train_sft \\\n"
                          "  --pretrain meta-llama/Meta-Llama-3-8B --zero_stage 2 --max_len 128", "gpu": "a100-80g"}),
    (["check", "--gpu", "h100-80g", "--", "deepspeed --module openrlhf.cli.train_dpo --pretrain llama-3-8b "
                                          "--ds.zero_stage 3 --flash_attn"],
     "check", {"command": "deepspeed --module openrlhf.cli.train_dpo --pretrain llama-3-8b --ds.zero_stage 3 "
                          "--flash_attn", "gpu": "h100-80g"}),
    (["check", "--gpu", "a800-80g", "--", "python3 -m openrlhf.cli.train_ppo_ray --pretrain llama-2-70b "
                                          + " ".join(PPO_70B)],
     "check", {"command": "python3 -m openrlhf.cli.train_ppo_ray --pretrain llama-2-70b " + " ".join(PPO_70B),
               "gpu": "a800-80g"}),
    (["plan", "llama-3-8b", "--method", "sft", "--gpu", "a100-80g"],
     "plan", {"model": "llama-3-8b", "method": "sft", "gpu": "a100-80g"}),
    (["plan", "llama-3-8b", "--method", "dpo", "--gpu", "a100-80g,rtx4090-24g", "--max-gpus", "16",
      "--host-ram", "512GiB"],
     "plan", {"model": "llama-3-8b", "method": "dpo", "gpu": "a100-80g,rtx4090-24g", "max_gpus": 16,
              "host_ram": "512GiB"}),
    (["plan", "llama-2-70b", "--method", "ppo", "--gpu", "a800-80g", "--host-ram", "1600GB", "--reward_pretrain",
      "llama-2-70b"],
     "plan", {"model": "llama-2-70b", "method": "ppo", "gpu": "a800-80g", "host_ram": "1600GB",
              "flags": ["--reward_pretrain", "llama-2-70b"]}),
    (["plan", "llama-3-8b", "--method", "sft", "--gpu", "rtx4090-24g", "--keep", "zero_stage=2", "--allow-lora"],
     "plan", {"model": "llama-3-8b", "method": "sft", "gpu": "rtx4090-24g", "keep": ["zero_stage=2"],
              "allow_lora": True}),
]

#: verl through the same endpoints (``framework``: the CLI's --framework; check reads it from the command).
VERL_CMD = ("python3 -m verl.trainer.main_ppo algorithm.adv_estimator=grpo data.train_batch_size=256 \\\n"
            "  data.max_prompt_length=512 data.max_response_length=1024 actor_rollout_ref.model.path=qwen2.5-7b \\\n"
            "  actor_rollout_ref.actor.ppo_mini_batch_size=64 actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 "
            "actor_rollout_ref.rollout.name=vllm actor_rollout_ref.rollout.n=5 "
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 "
            "actor_rollout_ref.rollout.tensor_model_parallel_size=2 trainer.n_gpus_per_node=8 trainer.nnodes=1")

VERL_CASES = [
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
    """The plan's wall-clock ``seconds`` differs between any two runs; everything else must not."""
    if isinstance(data, dict):
        return {k: _without_timing(v) for k, v in data.items() if k != "seconds"}
    if isinstance(data, list):
        return [_without_timing(v) for v in data]
    return data


@pytest.mark.parametrize(("argv", "path", "body"), CASES + VERL_CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES + VERL_CASES)])
def test_api_equals_cli_json(client, capsys, argv, path, body) -> None:
    argv = argv[:1] + ["--json"] + argv[1:] if argv[0] == "check" else argv + ["--json"]
    assert main(argv) == 0
    cli = json.loads(capsys.readouterr().out)
    response = client.post(f"/api/{path}", json=body)
    assert response.status_code == 200, response.text
    assert _without_timing(response.json()) == _without_timing(cli)


def test_catalogue_endpoints_equal_cli(client, capsys) -> None:
    for argv, path in ((["models", "--json"], "/api/models"), (["gpus", "--json"], "/api/gpus")):
        assert main(argv) == 0
        assert client.get(path).json() == json.loads(capsys.readouterr().out)


def test_pasted_verl_command_is_read_as_verl(client) -> None:
    data = client.post("/api/check", json={"command": VERL_CMD, "gpu": "h100-80g"}).json()
    assert data["summary"]["num_gpus"] == 8
    assert any(d["roles"] == ["actor", "rollout"] for d in data["devices"])


def test_cases_are_varied() -> None:
    assert len(CASES) == 20
    assert {path for _, path, _ in CASES} == {"estimate", "check", "plan"}
    assert len({body.get("method") for _, _, body in CASES}) >= 6


BAD = [
    ("estimate", {"model": "llama-3-8b", "method": "sft", "gpus": "eight"}, "gpus"),
    ("estimate", {"model": "llama-3-8b", "method": "sft", "gpus": 0}, "gpus"),
    ("estimate", {"model": "llama-3-8b", "method": "sft", "gpus": 10**30}, "gpus"),
    ("estimate", {"model": "llama-3-8b", "method": "sft", "gpus": 2.5}, "gpus"),
    ("estimate", {"model": "llama-3-8b", "method": "sft", "colour": "red"}, "colour"),
    ("estimate", {"model": "llama-3-8b", "method": "sing"}, "method"),
    ("estimate", {"method": "sft"}, "model"),
    ("estimate", {"model": "llama-3-8b", "method": "sft", "flags": "--zero_stage 3"}, "flags"),
    ("estimate", {"model": "llama-3-8b", "method": "sft", "flags": [3]}, "flags[0]"),
    ("estimate", {"model": "llama-3-8b", "method": "sft", "flags": ["--zero_stage", "9"]}, "--zero_stage"),
    ("estimate", {"model": "llama-3-8b", "method": "sft", "gpu": "b9000"}, "--gpu"),
    ("estimate", {"model": "llama-3-8b", "method": "sft", "host_ram": "lots"}, "--host-ram"),
    ("estimate", {"model": "/etc/passwd", "method": "sft"}, "/etc/passwd"),
    ("estimate", {"model": "../../config.json", "method": "sft"}, "../../config.json"),
    ("estimate", {"model": "org/some-model", "method": "sft"}, "org/some-model"),  # no hub unless --allow-hub
    ("estimate", {"model": "mine", "method": "sft", "configs": {"mine": {"model_type": "nonsense"}}}, "mine"),
    ("check", {"command": "rm -rf /"}, "command"),
    ("check", {"command": ""}, "command"),
    ("check", {"command": "x" * 70_000}, "command"),
    ("plan", {"model": "llama-3-8b", "method": "sft", "gpu": " , "}, "--gpu"),
    ("plan", {"model": "llama-3-8b", "method": "sft", "gpu": "a100-80g", "gpus_per_node": -8}, "gpus_per_node"),
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
def test_bad_requests_are_422_with_location(client, path, body, location) -> None:
    response = client.post(f"/api/{path}", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert set(error) == {"location", "message"} and error["message"]
    assert location in error["location"]
    assert "Traceback" not in response.text


@pytest.mark.parametrize("raw", [b"{", b'{"model": "llama-3-8b", "method": "sft", "gpus": NaN}', b"[]", b"null",
                                 b'{"model": "llama-3-8b", "method": "sft", "gpus": 1e999}'])
def test_malformed_json_is_422(client, raw) -> None:
    response = client.post("/api/estimate", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert set(response.json()["error"]) == {"location", "message"}


@pytest.mark.parametrize("raw", [
    b'{"model": "llama-3-8b", "method": "sft", "gpus": ' + b"9" * 5000 + b"}",  # beyond Python's int digits limit
    b'{"model": "x", "method": "sft", "configs": {"x": ' + b'{"a": ' * 30000 + b"1" + b"}" * 30000 + b"}}",
])
def test_unparseable_bodies_are_400_with_the_error_shape(client, raw) -> None:
    response = client.post("/api/estimate", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["location"] == "body"


def test_oversized_body_is_413_before_parsing(client) -> None:
    response = client.post("/api/check", content=b"{" + b" " * MAX_BODY_BYTES + b"}",
                           headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["location"] == "body"


def test_uploaded_config_is_parsed_as_data(client) -> None:
    # a 2-layer Llama: embeddings 1000·64 + lm_head 64·1000 + per layer (4·64·64 attention + 3·64·128 MLP
    # + 2·64 norms) + final norm 64 = 64,000 + 64,000 + 2·(16,384 + 24,576 + 128) + 64 = 210,240
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 1000}
    response = client.post("/api/estimate", json={"model": "tiny", "method": "sft", "gpus": 1,
                                                  "configs": {"tiny": config}})
    assert response.status_code == 200, response.text
    assert response.json()["models"]["policy"]["num_params"] == 210_240


def test_unknown_route_and_internal_errors_have_the_error_shape(client, monkeypatch) -> None:
    assert client.get("/api/nothing").json()["error"]["location"] == "path"
    import memplan.web.app as app_module

    def boom(_req):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(app_module, "estimate_data", boom)
    response = TestClient(create_app(), raise_server_exceptions=False).post(
        "/api/estimate", json={"model": "llama-3-8b", "method": "sft"})
    assert response.status_code == 500
    assert response.json()["error"]["location"] == "server"
    assert "secret detail" not in response.text and "Traceback" not in response.text


def test_time_limit(monkeypatch) -> None:
    import time

    import memplan.web.app as app_module

    monkeypatch.setattr(app_module, "estimate_data", lambda _req: time.sleep(1.0))
    response = TestClient(create_app(seconds=0.1)).post("/api/estimate", json={"model": "llama-3-8b", "method": "sft"})
    assert response.status_code == 422
    assert response.json()["error"]["location"] == "request"


def test_docs_page_and_chart_endpoints(client) -> None:
    assert client.get("/docs").status_code == 200
    assert "/api/estimate" in client.get("/openapi.json").json()["paths"]
    body = {"model": "llama-3-8b", "method": "sft", "gpus": 8, "gpu": "a100-80g"}
    spec = client.post("/api/estimate/chart", json=body).json()
    phases = client.post("/api/estimate", json=body).json()["devices"][0]["phases"]
    assert sum(r["bytes"] for r in spec["concat"][0]["data"]["values"]) == sum(phases.values())
    assert client.post("/api/plan/chart", json={"model": "llama-3-8b", "method": "sft", "gpu": "a100-80g"}
                       ).json()["vconcat"]
    html = client.get("/").text
    assert "/static/vega-bundle.js" in html and "http" not in html.split("<body>")[0]  # no CDN
    assert "vegaEmbed" in client.get("/static/vega-bundle.js").text
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200
    assert client.get("/static/../app.py").status_code == 404
