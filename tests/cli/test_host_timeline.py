"""Host RAM per node, per phase, by kind of term, in ``--json`` and text (issue 13, item 6)."""

from __future__ import annotations

import json

from memplan.cli.main import main

SEED = ("python3 -m openrlhf.cli.train_ppo_ray --pretrain llama-2-70b --reward_pretrain llama-2-70b "
        "--actor_num_nodes 1 --actor_num_gpus_per_node 4 --critic_num_nodes 1 --critic_num_gpus_per_node 4 "
        "--ref_num_gpus_per_node 2 --reward_num_gpus_per_node 2 --vllm_num_engines 2 --vllm_tensor_parallel_size 2 "
        "--zero_stage 3 --bf16 --adam_offload --gradient_checkpointing --flash_attn").split()


def test_seed_host_timeline_json(capsys) -> None:
    assert main(["check", "--gpu", "a800-80g", "--host-ram", "1600GB", "--json", "--", *SEED]) == 0
    data = json.loads(capsys.readouterr().out)
    node0 = data["hosts"][0]
    assert node0["judged_against"]["rule"] == "Ray memory_usage_threshold 0.95 of 1600 GB"
    assert node0["judged_against_bytes"] == node0["judged_against"]["bytes"]  # both JSON fields, one number
    assert abs(node0["judged_against_bytes"] - 0.95 * 1_600_000_000_000) < 2**20  # Ray: 95% in float32
    assert node0["capacity_bytes"] == 1_600_000_000_000
    timeline = {entry["phase"]: entry for entry in node0["timeline"]}
    assert [e["phase"] for e in node0["timeline"]] == list(node0["phases"])
    for entry in node0["timeline"]:
        assert sum(entry["by_kind"].values()) == entry["bytes"] == node0["phases"][entry["phase"]]
    # Loading holds neither the optimizer state nor the rounding of buffers that do not exist yet.
    assert {"optimizer_state", "rounding", "pinned_buffers"}.isdisjoint(timeline["load"]["by_kind"])
    # In training the 4 actor ranks' rounding: each 34,488,324,096 B gradient partition pins 64 GiB.
    assert timeline["training"]["by_kind"]["rounding"] >= 4 * (64 * 2**30 - 34_488_324_096)
    assert timeline["training"]["by_kind"]["processes"] > 0


def test_seed_host_timeline_text(capsys) -> None:
    assert main(["check", "--gpu", "a800-80g", "--host-ram", "1600GB", "--", *SEED]) in (0, 1)
    out = capsys.readouterr().out
    assert "against 1415.61 GiB (Ray memory_usage_threshold 0.95 of 1600 GB)" in out
    # the replay buffer is held in training only (issue 11's rule), so training is a line of its own
    assert "    rollout, make_experience: " in out
    assert any(line.startswith("    training: ") and "replay_buffer" in line for line in out.splitlines())
    assert "rounding " in out
