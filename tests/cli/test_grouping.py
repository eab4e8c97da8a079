"""Nothing grows with the number of identical GPUs or nodes (issue 11, items 1 and 8): identical GPUs
and identical nodes are one entry each with ``count`` and ``ids`` ranges, and ``--gpus N`` is laid
out on nodes of ``--gpus-per-node`` (default 8)."""

from __future__ import annotations

import json

import pytest

from memplan.cli.main import main
from memplan.jobs.ids import expand

SFT = ["estimate", "llama-2-7b", "--method", "sft"]


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _json(capsys, argv: list[str]) -> dict:
    code, out, _ = _run(capsys, [*argv, "--json"])
    assert code == 0
    return json.loads(out)


def test_json_size_does_not_grow_with_the_gpu_count(capsys) -> None:
    # DeepSpeed asserts train_batch_size == micro batch (8) × accumulation × GPUs: one step per micro-batch
    small, large = (_json(capsys, [*SFT, "--gpus", str(n), "--train_batch_size", str(8 * n)]) for n in (64, 4096))
    for data in (small, large):
        assert len(data["devices"]) == 1 and len(data["hosts"]) == 1
    assert abs(len(json.dumps(large)) - len(json.dumps(small))) < 200  # a few more digits, nothing per GPU
    device, host = large["devices"][0], large["hosts"][0]
    assert (device["count"], device["ids"], device["id"]) == (4096, "node[0-511]/gpu[0-7]", "node0/gpu0")
    assert (host["count"], host["ids"], host["id"]) == (512, "node[0-511]", "node0")
    assert set(host) >= {"id", "peak_bytes", "peak_phase", "capacity_bytes", "verdict", "breakdown"}
    assert (large["summary"]["num_gpus"], large["summary"]["num_nodes"]) == (4096, 512)
    assert large["summary"]["total_host_peak_bytes"] == 512 * host["peak_bytes"]


def test_gpus_in_total_are_laid_out_on_nodes_with_a_note(capsys) -> None:
    data = _json(capsys, [*SFT, "--gpus", "4096", "--train_batch_size", "32768"])
    assert data["command"].startswith("deepspeed --num_nodes 512 --num_gpus 8 --module")
    assert any("--gpus 4096: 512 nodes of 8 GPUs" in n for n in data["notes"])
    per_node = _json(capsys, [*SFT, "--gpus", "12", "--gpus-per-node", "4", "--train_batch_size", "96"])
    assert per_node["command"].startswith("deepspeed --num_nodes 3 --num_gpus 4 --module")
    assert per_node["summary"]["num_nodes"] == 3


def test_gpus_8_is_one_node_as_before(capsys) -> None:
    data = _json(capsys, [*SFT, "--gpus", "8"])
    assert data["command"].startswith("deepspeed --num_gpus 8 --module")
    assert (data["summary"]["num_gpus"], data["summary"]["num_nodes"]) == (8, 1)
    assert not any("--gpus" in n for n in data["notes"])


@pytest.mark.parametrize("argv, message", [
    (["--gpus", "12"], "--gpus: 12 GPUs do not fill whole nodes of 8"),
    (["--gpus", "16", "--nodes", "2"], "--gpus: give either --gpus (in total) or --nodes"),
])
def test_gpus_that_do_not_fill_nodes(capsys, argv: list[str], message: str) -> None:
    code, out, err = _run(capsys, [*SFT, *argv])
    assert code == 2 and out == "" and message in err


def test_identical_hosts_are_one_text_line(capsys) -> None:
    code, out, _ = _run(capsys, [*SFT, "--gpus", "4096", "--train_batch_size", "32768"])
    assert code == 0
    host_lines = [line for line in out.splitlines() if "host node" in line]
    assert len(host_lines) == 1 and host_lines[0].startswith("512 × host node[0-511]: ")
    assert "512 nodes" in out


RL = ["estimate", "qwen2.5-1.5b", "--method", "ppo", "--reward_pretrain", "qwen2.5-1.5b", "--gpu", "a100-80g"]


def test_rl_packing_is_readable_per_gpu(capsys) -> None:
    # Ray PACK, creation order rollout (3), actor (4), ref (2), critic (6), reward (3) on 8-GPU nodes:
    # GPUs 0-2 rollout, 3-6 actor, 7-8 ref, 9-14 critic, 15-17 reward (OpenRLHF train_ppo_ray.py).
    data = _json(capsys, [*RL, "--actor_num_gpus_per_node", "4", "--ref_num_gpus_per_node", "2",
                          "--critic_num_gpus_per_node", "6", "--reward_num_gpus_per_node", "3",
                          "--vllm_num_engines", "3", "--train_batch_size", "96"])  # 96: divisible by 4, 6, 2, 3
    roles = {gpu: d["roles"] for d in data["devices"] for gpu in expand(d["ids"])}
    by_hand = ["rollout"] * 3 + ["actor"] * 4 + ["ref"] * 2 + ["critic"] * 6 + ["reward"] * 3
    assert roles == {f"node{i // 8}/gpu{i % 8}": [role] for i, role in enumerate(by_hand)}
    assert [(h["ids"], h["count"]) for h in data["hosts"]] == [("node0", 1), ("node1", 1), ("node2", 1)]


def test_rl_entries_do_not_grow_with_nodes(capsys) -> None:
    def entries(nodes: int) -> tuple[int, int, list[int]]:
        flags = [f"--{role}_num_nodes" for role in ("actor", "ref", "critic", "reward")]
        args = [x for flag in flags for x in (flag, str(nodes))]
        # TP 4 divides Qwen2.5-1.5B's 12 heads (vLLM asserts it); 2 engines of 4 GPUs fill a node
        data = _json(capsys, [*RL, *args, "--vllm_num_engines", str(2 * nodes), "--vllm_tensor_parallel_size", "4",
                              "--train_batch_size", str(8 * nodes), "--rollout_batch_size", str(8 * nodes)])
        placement = data["placement"]
        assert len(placement["assumed"]) == len(data["hosts"]) and len(placement["worst"]["nodes"]) <= 6
        assert sum(n["count"] for n in placement["worst"]["nodes"]) == 5 * nodes  # every node, in a few entries
        return len(data["devices"]), len(data["hosts"]), [h["count"] for h in data["hosts"]]

    # node0, Ray's head, is an entry of its own (its daemons and the driver: issue 13, host_process.ray_node)
    assert entries(2) == (5, 6, [1, 1, 2, 2, 2, 2])
    assert entries(64) == (5, 6, [1, 63, 64, 64, 64, 64])
