"""verl's default tables hold what verl's own flattened configs say, read by hand from the wheels.

Expected values were read from ``verl/trainer/config/_generated_ppo_trainer.yaml`` inside
``verl-0.9.1-py3-none-any.whl`` and ``verl-0.8.0-py3-none-any.whl`` (PyPI), at the yaml lines given.
"""

from __future__ import annotations

import pytest

from memplan.errors import ConfigError
from memplan.frameworks.verl import LATEST, VERSIONS, flag_names
from memplan.frameworks.verl.defaults import Engine, Kind, load_table, normalize_version


@pytest.mark.parametrize(("version", "key", "value", "line"), [
    # rollout.max_num_seqs went 1024 -> 256 in 0.9 (0.9.1 yaml line 316, 0.8.0 line 260)
    ("0.9.1", "actor_rollout_ref.rollout.max_num_seqs", 256, 316),
    ("0.8.0", "actor_rollout_ref.rollout.max_num_seqs", 1024, 260),
    # rollout.calculate_log_probs false -> true (0.9.1 line 358, 0.8.0 line 301)
    ("0.9.1", "actor_rollout_ref.rollout.calculate_log_probs", True, 358),
    ("0.8.0", "actor_rollout_ref.rollout.calculate_log_probs", False, 301),
    ("0.9.1", "actor_rollout_ref.rollout.gpu_memory_utilization", 0.5, 305),
    ("0.9.1", "actor_rollout_ref.rollout.tensor_model_parallel_size", 2, 310),
    ("0.9.1", "actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes", 2048, 371),
    ("0.9.1", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu", 16384, 84),
    ("0.8.0", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu", 16384, 66),
    ("0.9.1", "actor_rollout_ref.actor.fsdp_config.model_dtype", "fp32", 37),
    ("0.9.1", "actor_rollout_ref.ref.fsdp_config.model_dtype", "fp32", 245),
    ("0.9.1", "critic.ppo_max_token_len_per_gpu", 32768, 612),
])
def test_default_as_the_yaml_says(version: str, key: str, value: object, line: int) -> None:
    default = load_table(version).keys[key]
    assert (default.value, default.line) == (value, line)


def test_null_and_interpolation_kinds() -> None:
    keys = load_table("0.9.1").keys
    assert keys["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"].kind is Kind.NULL
    # critic.ppo_micro_batch_size_per_gpu: ${oc.select:.ppo_micro_batch_size,null} (0.9.1 yaml line 610)
    row = keys["critic.ppo_micro_batch_size_per_gpu"]
    assert (row.kind, row.value) == (Kind.INTERPOLATION, "${oc.select:.ppo_micro_batch_size,null}")
    assert keys["actor_rollout_ref.rollout.engine_kwargs.vllm"].kind is Kind.DICT
    # rollout.name is ??? (mandatory) in verl's rollout.yaml
    assert keys["actor_rollout_ref.rollout.name"].value == "???"


def test_megatron_table_is_its_own() -> None:
    megatron = load_table("0.9.1", Engine.MEGATRON).keys
    assert "actor_rollout_ref.actor.megatron.tensor_model_parallel_size" in megatron
    assert "actor_rollout_ref.actor.fsdp_config.param_offload" not in megatron
    # 0.9.0 still had the Megatron grad_offload key that 0.9.1 folded into param_offload (verl.md §0)
    assert "actor_rollout_ref.actor.megatron.grad_offload" in load_table("0.9.0", Engine.MEGATRON).keys
    assert "actor_rollout_ref.actor.megatron.grad_offload" not in megatron


def test_versions_and_names() -> None:
    assert LATEST == "0.9.1" and VERSIONS[0] == "0.8.0"
    assert normalize_version("0.9") == "0.9.1"
    assert normalize_version("v0.8.1") == "0.8.0"
    assert normalize_version("0.9.0") == "0.9.0"
    with pytest.raises(ConfigError, match="0.8.x, 0.9.x"):
        normalize_version("0.7.1")
    names = flag_names()
    assert "actor_rollout_ref.rollout.max_num_seqs" in names
    assert "actor_rollout_ref.actor.megatron.grad_offload" in names  # from 0.9.0's megatron table
