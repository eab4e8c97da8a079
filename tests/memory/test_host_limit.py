"""What host verdicts are judged against: Ray's memory monitor threshold, or the physical RAM."""

from __future__ import annotations

import tomllib
from pathlib import Path

from memplan.api import estimate_command
from memplan.memory.host_limit import ray_limit

RECORD = Path(__file__).resolve().parents[2] / "validation" / "published" / "host_process" / "measured-cpu-build.toml"
SEED = """python3 -m openrlhf.cli.train_ppo_ray --pretrain llama-2-70b --reward_pretrain llama-2-70b
--actor_num_nodes 1 --actor_num_gpus_per_node 4 --critic_num_nodes 1 --critic_num_gpus_per_node 4
--ref_num_gpus_per_node 2 --reward_num_gpus_per_node 2 --vllm_num_engines 2 --vllm_tensor_parallel_size 2
--zero_stage 3 --bf16 --adam_offload --gradient_checkpointing --flash_attn --micro_train_batch_size 1
--micro_rollout_batch_size 2 --rollout_batch_size 1024 --prompt_max_len 1024 --generate_max_len 1024"""


def test_ray_kills_at_95_percent() -> None:
    # Ray 2.55.0's raylet logged its threshold on this project's machine: the same bytes, to the byte.
    monitor = tomllib.loads(RECORD.read_text())["ray_memory_monitor"]
    # (the 0.95 is Ray's memory_usage_threshold default, ray_config_def.h; the log is the independent truth)
    assert ray_limit(monitor["total_bytes"]).bytes == monitor["threshold_bytes"]


def test_seed_run_is_judged_against_rays_threshold() -> None:
    est = estimate_command(" ".join(SEED.split()), gpu="a800-80g", version="0.11", host_ram=1_600_000_000_000)
    for node in est.hosts:
        assert node.capacity_bytes == 1_600_000_000_000  # --host-ram stays the physical size
        assert abs(node.judged_bytes - 0.95 * 1_600_000_000_000) < 2**17  # float32 spacing at 1.5e12 B
        assert node.limit.rule == "Ray memory_usage_threshold 0.95 of 1600 GB"


def test_single_model_run_is_judged_against_physical_ram() -> None:
    cmd = ("deepspeed --num_gpus 8 --module openrlhf.cli.train_sft --pretrain llama-3-8b --zero_stage 2 "
           "--adam_offload --bf16")
    est = estimate_command(cmd, gpu="a100-80g", host_ram=1_000_000_000_000)
    assert [h.judged_bytes for h in est.hosts] == [1_000_000_000_000]
