"""Save and load peaks on the host (issue 13, item 5): OpenRLHF's ``save_model`` and DeepSpeed checkpoints.

Independent numbers: parameter counts from validation/exact/param_counts.json (PyTorch's own count of the HF
model), multiplied by hand by the bytes of the saved dtype (bf16: 2) and the ranks that hold a copy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memplan.api import estimate_command
from memplan.errors import ConfigError
from memplan.charts import estimate_chart
from memplan.cli.render import estimate_text
from memplan.memory.breakdown import Phase

ROOT = Path(__file__).resolve().parents[2]
COUNTS = json.loads((ROOT / "validation" / "exact" / "param_counts.json").read_text())["cases"]
#: The seed of issue 13: Llama-2-70B PPO, 2 × 8 A800-80G, ZeRO-3 + --adam_offload, the official 16-GPU layout.
SEED = ("python3 -m openrlhf.cli.train_ppo_ray --pretrain llama-2-70b --reward_pretrain llama-2-70b "
        "--actor_num_nodes 1 --actor_num_gpus_per_node 4 --critic_num_nodes 1 --critic_num_gpus_per_node 4 "
        "--ref_num_gpus_per_node 2 --reward_num_gpus_per_node 2 --vllm_num_engines 2 --vllm_tensor_parallel_size 2 "
        "--zero_stage 3 --bf16 --adam_offload --gradient_checkpointing --flash_attn")
SFT_7B = "deepspeed --module openrlhf.cli.train_sft --pretrain llama-2-7b --zero_stage 2 --bf16 --micro_train_batch_size 1"
BF16 = 2


def _phase(host, phase: Phase):
    return next(p for p in host.phases if p.phase == phase)


def _term(usage, prefix: str) -> int:
    return sum(t.bytes for t in usage.terms if t.path.startswith(prefix))


def test_llama2_70b_zero3_state_dict_on_rank0() -> None:
    # _zero3_consolidated_16bit_state_dict: rank 0 keeps every parameter in bf16 on its host, once
    est = estimate_command(SEED, gpu="a800-80g", host_ram="1600GB", version="0.11")
    node0, node1 = est.hosts
    assert _term(_phase(node0, Phase.SAVE), "actor.save.state_dict") == BF16 * 68_976_648_192
    assert COUNTS["preset:llama-2-70b"]["num_params"] == 68_976_648_192
    # the critic saves only with --save_value_network
    assert _term(_phase(node1, Phase.SAVE), "critic.save") == 0
    valued = estimate_command(SEED + " --save_value_network", gpu="a800-80g", host_ram="1600GB", version="0.9")
    # the critic: the 70B backbone without lm_head (32000 × 8192) plus the value head (8192 × 1)
    critic = 68_976_648_192 - 32000 * 8192 + 8192
    assert _term(_phase(valued.hosts[1], Phase.SAVE), "critic.save.state_dict") == BF16 * critic


def test_seed_fits_while_training_and_dies_at_the_end_save() -> None:
    est = estimate_command(SEED, gpu="a800-80g", host_ram="1600GB", version="0.11")
    node0 = est.hosts[0]
    assert str(node0.training_verdict) == "tight"
    assert node0.failing_save is not None and node0.failing_save.phase == Phase.SAVE
    # 1308.17 GiB while training + 128.48 GiB of state dict > Ray's 0.95 × 1600 GB = 1415.61 GiB
    assert node0.failing_save.bytes > 0.95 * 1600e9 > max(p.bytes for p in node0.phases if p.phase != Phase.SAVE)
    assert str(node0.verdict) == "oom"
    note = next(n for n in est.notes if n.startswith("host node0 holds while training"))
    assert "save_model" in note and "actor.save.state_dict 128.48 GiB" in note
    assert "oom at its first save" in estimate_text(est)


def test_zero2_every_rank_clones_the_state_dict() -> None:
    # clone_tensors_for_torch_save(model.state_dict()) runs on every rank: 8 bf16 copies on the node
    est = estimate_command(SFT_7B, gpu="a100-80g", host_ram="1TB")
    assert _term(_phase(est.hosts[0], Phase.SAVE), "policy.save.state_dict_clone") == 8 * BF16 * 6_738_415_616
    # a tied embedding is two state-dict entries of one tensor: copied twice
    tied = estimate_command(SFT_7B.replace("llama-2-7b", "qwen2.5-0.5b"), gpu="a100-80g", host_ram="1TB")
    per_rank = BF16 * (COUNTS["preset:qwen2.5-0.5b"]["num_params"] + 151936 * 896)
    assert _term(_phase(tied.hosts[0], Phase.SAVE), "policy.save.state_dict_clone") == 8 * per_rank


def test_checkpoint_copies_one_gpu_storage_at_a_time() -> None:
    # ZeRO-2, optimizer on the GPU: torch.save copies the largest fp32 partition (the decay group over 8 ranks)
    est = estimate_command(SFT_7B + " --save_steps 100", gpu="a100-80g", host_ram="1TB", version="0.9")
    phases = [p.phase for p in est.hosts[0].phases]
    assert phases.index(Phase.CHECKPOINT) < phases.index(Phase.SAVE)
    no_decay = 2 * 32 * 4096 + 4096  # the RMSNorm weights: OpenRLHF's no-decay group
    copy = _term(_phase(est.hosts[0], Phase.CHECKPOINT), "policy.checkpoint.storage_copy")
    expected = 8 * 4 * (6_738_415_616 - no_decay) // 8
    assert expected <= copy <= expected + 8 * 4 * 2 * 8  # DeepSpeed pads each partition to an alignment
    # --disable_ds_ckpt (0.11: --ckpt.disable_ds): no checkpoint; --adam_offload: the state is already on the host
    off = estimate_command(SFT_7B + " --ckpt.save_steps 100 --ckpt.disable_ds", gpu="a100-80g", host_ram="1TB",
                           version="0.11")
    assert Phase.CHECKPOINT not in [p.phase for p in off.hosts[0].phases]
    offload = estimate_command(SFT_7B + " --save_steps 100 --adam_offload", gpu="a100-80g", host_ram="1TB", version="0.9")
    assert _term(_phase(offload.hosts[0], Phase.CHECKPOINT), "policy.checkpoint") == 0


def test_checkpoint_that_kills_names_the_flag_that_avoids_it() -> None:
    # ZeRO-3 without offload: loading is one module per rank, the checkpoint copies a 3.4 GB fp32 sub-group per rank
    command = SFT_7B.replace("--zero_stage 2 --bf16", "--zero_stage 3 --param_dtype bf16") + " --ckpt.save_steps 100"
    probe = estimate_command(command, gpu="a100-80g", version="0.11")
    host = probe.hosts[0]
    # one rank's fp32 partition, written by torch.save one storage at a time: Llama-2-7B's 6,738,415,616
    # parameters (param_counts.json) less the 65 RMSNorm weights of 4,096 kept whole (under the 1e5-element
    # persistence threshold), over 8 ranks, 4 B each; 8 ranks on the node
    per_rank = (6_738_415_616 - 65 * 4096) // 8 * 4
    assert _term(_phase(host, Phase.CHECKPOINT), "policy.checkpoint") == 8 * per_rank
    training = max(p.bytes for p in host.phases if p.phase not in (Phase.SAVE, Phase.CHECKPOINT))
    ram = _phase(host, Phase.CHECKPOINT).bytes - 1  # a byte short of the checkpoint
    assert training < 0.8 * ram  # the iteration fits with room
    est = estimate_command(command, gpu="a100-80g", host_ram=ram, version="0.11")
    assert est.hosts[0].failing_save.phase == Phase.CHECKPOINT
    assert any("--ckpt.disable_ds avoids it" in n for n in est.notes)


def test_runs_without_saves_during_training_have_no_checkpoint_phase_and_the_save_renders() -> None:
    est = estimate_command(SEED, gpu="a800-80g", host_ram="1600GB", version="0.11")
    assert [str(p.phase) for p in est.hosts[0].phases][-1] == "save"
    assert all(p.phase != Phase.CHECKPOINT for h in est.hosts for p in h.phases)
    bars = {r["x"] for panel in estimate_chart(est)["concat"] for r in panel["data"]["values"]}
    assert "save" in bars


@pytest.mark.parametrize(("version", "flag"), [("0.9", "--save_steps"), ("0.11", "--ckpt.save_steps")])
def test_save_steps_zero_is_refused_as_typed(version: str, flag: str) -> None:
    # OpenRLHF tests `global_step % save_steps == 0`: 0 raises ZeroDivisionError at the first step
    with pytest.raises(ConfigError) as caught:
        estimate_command(f"{SFT_7B} {flag} 0", gpu="a100-80g", version=version)
    assert caught.value.location == flag


def test_rank0_state_dict_is_on_the_node_of_the_first_bundle_as_placed() -> None:
    # actor 8 split 6 + 2 over node0 and node1 (groups filled in creation order): rank 0 is bundle 0, on node0
    # (openrlhf/trainer/ray/launcher.py@v0.11.0 :259); Ray's other placements may put it on any of the group's nodes
    command = ("python3 -m openrlhf.cli.train_ppo_ray --pretrain llama-2-70b --reward_pretrain llama-2-70b "
               "--ref_num_gpus_per_node 1 --reward_num_gpus_per_node 1 --actor_num_gpus_per_node 8 "
               "--critic_num_gpus_per_node 8 --vllm_num_engines 1 --vllm_tensor_parallel_size 2 --zero_stage 3 --bf16 "
               "--adam_offload --ref_offload --reward_offload --gradient_checkpointing")
    est = estimate_command(command, gpu="a800-80g", host_ram="1600GB", version="0.9")
    saved = [_term(_phase(h, Phase.SAVE), "actor.save.state_dict") for h in est.hosts]
    assert saved[0] == BF16 * 68_976_648_192 and saved[1:] == [0] * (len(saved) - 1)
    worst = est.placement_risk.worst[est.placement_risk.worst_node]
    assert _term(_phase(worst, Phase.SAVE), "actor.save.state_dict") == BF16 * 68_976_648_192


def test_multi_node_zero3_save_only_on_rank0_node() -> None:
    """Under ZeRO-3 rank 0 alone gathers the bf16 state dict (2 B × 68,976,648,192 parameters of Llama-2-70B,
    validation/exact/param_counts.json): node0 is reported apart, and the other nodes hold no state dict."""
    est = estimate_command("deepspeed --num_nodes 4 --num_gpus 8 --module openrlhf.cli.train_sft --pretrain "
                           "llama-2-70b --zero_stage 3 --adam_offload --train_batch_size 256 "
                           "--micro_train_batch_size 1", gpu="a100-80g", host_ram="2TB", version="0.11")
    (node0, rest) = est.hosts
    assert (node0.ids, node0.count, rest.ids, rest.count) == ("node0", 1, "node[1-3]", 3)
    save0 = next(u for u in node0.phases if u.phase == Phase.SAVE)
    save_rest = next(u for u in rest.phases if u.phase == Phase.SAVE)
    assert save0.bytes - save_rest.bytes == 2 * 68_976_648_192
    assert not any("state_dict" in t.path for t in save_rest.terms)
