"""RL properties (issue 5): colocation and sleep never raise GPU peaks; more actor GPUs never raise the
actor's per-GPU model states; hostile commands end at exit 2."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memplan.api import estimate_command
from memplan.cli.main import main
from memplan.memory.breakdown import Category

BASE = ("python3 -m openrlhf.cli.train_ppo_ray --pretrain qwen2.5-0.5b --reward_pretrain qwen2.5-0.5b "
        "--vllm_num_engines 2 --bf16 --flash_attn --max_len 2048 ")
SHARED = "--actor_num_gpus_per_node 2 --ref_num_gpus_per_node 2 --critic_num_gpus_per_node 2 --reward_num_gpus_per_node 2 "

knobs = st.fixed_dictionaries({
    "zero": st.sampled_from(["1", "2", "3"]),
    "micro": st.sampled_from(["1", "2", "4"]),
    "ckpt": st.booleans(),
})


def _flags(k: dict) -> str:
    return f"--zero_stage {k['zero']} --micro_train_batch_size {k['micro']} " + ("--gradient_checkpointing " if k["ckpt"] else "")


def _max_peak(command: str) -> int:
    return max(d.peak_bytes for d in estimate_command(command, gpu="a100-80g", version="0.8").devices)


@settings(max_examples=12, deadline=None)
@given(knobs)
def test_removing_colocation_never_raises_a_gpu_peak(k: dict) -> None:
    plain = BASE + SHARED + _flags(k)
    for flag in ("--colocate_actor_ref", "--colocate_critic_reward"):
        assert _max_peak(plain) <= _max_peak(plain + flag)


@settings(max_examples=8, deadline=None)
@given(knobs)
def test_sleep_flags_never_raise_gpu_peaks(k: dict) -> None:
    hybrid = (BASE.replace("--vllm_num_engines 2", "--vllm_num_engines 2 --vllm_gpu_memory_utilization 0.5")
              + SHARED + "--colocate_all_models " + _flags(k))
    before = _max_peak(hybrid)
    assert _max_peak(hybrid + " --vllm_enable_sleep") <= before
    assert _max_peak(hybrid + " --deepspeed_enable_sleep") <= before


def _actor_states(est) -> int:
    device = next(d for d in est.devices if "actor" in d.roles)
    return sum(t.bytes for t in device.phases[0].terms if t.path.startswith("actor.") and t.phase is None
               and t.category in (Category.PARAM, Category.GRAD, Category.OPTIMIZER))


@settings(max_examples=8, deadline=None)
@given(knobs)
def test_more_actor_gpus_never_raise_actor_states(k: dict) -> None:
    small = estimate_command(BASE + _flags(k) + " --actor_num_gpus_per_node 2", gpu="a100-80g", version="0.8")
    big = estimate_command(BASE + _flags(k) + " --actor_num_gpus_per_node 8", gpu="a100-80g", version="0.8")
    assert _actor_states(big) <= _actor_states(small)


HOSTILE = [
    (BASE + "--colocate_actor_ref --actor_num_gpus_per_node 4 --ref_num_gpus_per_node 2", "--colocate_actor_ref"),
    (BASE + "--vllm_gpu_memory_utilization 1.5", "--vllm_gpu_memory_utilization"),
    (BASE + "--actor_num_gpus_per_node 0", "--actor_num_gpus_per_node"),
    (BASE + "--colocate_all_models --actor_num_gpus_per_node 4 --ref_num_gpus_per_node 4", "--colocate_all_models"),
    ("python3 -m openrlhf.cli.train_ppo_ray --pretrain qwen2.5-0.5b --vllm_num_engines 1", "--reward_pretrain"),
    (BASE + "--micro_rollout_batch_size", "--micro_rollout_batch_size"),
    ("python3 -m openrlhf.cli.train_ppo_ray --pretrain 'qwen2.5-0.5b", "quot"),
]


@pytest.mark.parametrize(("command", "needle"), HOSTILE)
def test_hostile_rl_commands_exit_2(capsys, command: str, needle: str) -> None:
    assert main(["check", "--gpu", "a100-80g", "--", command]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
