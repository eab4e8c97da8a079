"""The RL schedule OpenRLHF's adapter builds, against what OpenRLHF's trainer does (v0.11.0), and the one
dispatch point on the sharding engine."""

from __future__ import annotations

from dataclasses import replace

import pytest

from memplan.api import resolve_command
from memplan.dtypes import DType
from memplan.frameworks.openrlhf.rl_job import build_rl_job
from memplan.jobs.job import GpuGroup, RoleName
from memplan.jobs.roles import role_memory
from memplan.jobs.schedule import Activity, Residence, State, WeightTransport
from memplan.memory.breakdown import Phase
from memplan.memory.fsdp import FsdpSharding, FsdpVersion
from memplan.memory.logits import LogProbImpl
from memplan.model import load_model_spec

HYBRID = ("python3 -m openrlhf.cli.train_ppo_ray --pretrain qwen2.5-0.5b --colocate_all_models "
          "--actor_num_gpus_per_node 8 --ref_num_gpus_per_node 8 --vllm_num_engines 4 --vllm_tensor_parallel_size 2 "
          "--vllm_enable_sleep --deepspeed_enable_sleep --advantage_estimator group_norm --remote_rm_url http://rm")


def _rl(command: str):  # type: ignore[no-untyped-def]
    run = resolve_command(command)
    rl, _ = build_rl_job(run.values, version=run.version, load=load_model_spec, command=run.command)
    return rl


def test_deepspeed_sleep_offloads_the_actor_outside_its_fit() -> None:
    # ppo_trainer.py@v0.11.0: with deepspeed_enable_sleep the actor's optimizer state and grads are offloaded
    # (offload_deepspeed_states) after each fit and reloaded (reload_deepspeed_states) before the next one.
    s = _rl(HYBRID).schedule
    assert s.order == (Phase.ROLLOUT, Phase.MAKE_EXPERIENCE, Phase.TRAINING, Phase.WEIGHT_SYNC)
    assert s.residence(RoleName.ACTOR, Phase.ROLLOUT, State.OPTIMIZER) == Residence.HOST
    assert s.residence(RoleName.ACTOR, Phase.TRAINING, State.GRADS) == Residence.WHILE_ACTIVE
    assert s.residence(RoleName.ACTOR, Phase.SAVE, State.OPTIMIZER) == Residence.HOST
    assert s.residence(RoleName.ACTOR, Phase.LOAD, State.OPTIMIZER) == Residence.GPU
    assert s.residence(RoleName.ACTOR, Phase.ROLLOUT, State.WEIGHTS) == Residence.GPU
    assert not s.at(Phase.TRAINING).concurrent
    assert s.at(Phase.MAKE_EXPERIENCE).step(RoleName.REF).activity == Activity.FORWARD
    assert s.at(Phase.WEIGHT_SYNC).step(RoleName.ACTOR).activity == Activity.SYNC_SEND
    assert s.weight_transport == WeightTransport.CUDA_IPC
    # vLLM sleep level 1 between rollouts: weights to host, KV cache freed (vllm_engine.py sleep(level=1))
    assert s.residence(RoleName.ROLLOUT, Phase.TRAINING, State.KV_CACHE) == Residence.FREED


def test_separate_groups_train_concurrently_and_broadcast() -> None:
    s = _rl("python3 -m openrlhf.cli.train_ppo_ray --pretrain qwen2.5-0.5b --vllm_num_engines 1 "
            "--advantage_estimator group_norm --remote_rm_url http://rm").schedule
    assert s.at(Phase.TRAINING).concurrent
    assert s.residence(RoleName.ACTOR, Phase.ROLLOUT, State.OPTIMIZER) == Residence.GPU
    assert s.weight_transport == WeightTransport.BROADCAST


def test_an_fsdp_role_is_dispatched_to_the_fsdp_formulas() -> None:
    actor = _rl(HYBRID).job.role(RoleName.ACTOR)
    fsdp = FsdpSharding(version=FsdpVersion.FSDP2, shard_size=8, param_dtype=DType.FP32, compute_dtype=DType.BF16,
                        reduce_dtype=DType.FP32, reshard_after_forward=True, param_offload=False,
                        optimizer_offload=False, cpu_offload=False, cpu_offload_pinned=False)
    mem = role_memory(replace(actor, sharding=fsdp), GpuGroup(name="actor", num_nodes=1, gpus_per_node=8),
                      LogProbImpl.FLASH_ATTN_TRITON)
    # FSDP's terms (memory/fsdp.py), not ZeRO's: fp32 shards of every parameter, FSDP unshard buffers in forward
    params = next(t for t in mem.gpu_terms if t.path == "actor.params")
    assert "fsdp" in params.source.ref and params.bytes >= 4 * mem.info.num_params // 8
    assert any(".fsdp." in t.path for t in mem.activity[Phase.FORWARD])


@pytest.mark.parametrize(("flags", "typed"), [
    (["--zero_stage", "0", "--adam_offload"], "--adam_offload: DeepSpeed's CPU Adam needs ZeRO stage 1, 2 or 3"),
    (["--ds.zero_stage", "0", "--ds.adam_offload"], "--ds.adam_offload: DeepSpeed's CPU Adam"),
    (["--lora_rank", "8", "--target_modules", "c_attn"], "--target_modules: no linear layer"),
])
def test_errors_of_the_neutral_code_name_the_flag_as_typed(flags: list[str], typed: str) -> None:
    from memplan.api import estimate
    from memplan.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        estimate("llama-2-7b", "sft", flags)
    assert str(info.value).startswith(typed)
