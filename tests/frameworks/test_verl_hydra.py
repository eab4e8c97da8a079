"""Hydra overrides over verl's defaults: the grammar, struct-mode rules and interpolations.

The rules are Hydra 1.3's (``hydra/_internal/config_loader_impl.py``, ``_apply_overrides_to_config``) and
OmegaConf 2.3's resolvers; each case states the outcome Hydra gives for the same override.
"""

from __future__ import annotations

import math

import pytest

from memplan.errors import ConfigError
from memplan.frameworks.verl.defaults import load_table
from memplan.frameworks.verl.hydra import OverrideKind, Unresolved, apply_overrides, parse_override, parse_value


@pytest.mark.parametrize(("text", "value"), [
    ("null", None), ("NULL", None), ("true", True), ("False", False), ("16", 16), ("1_024", 1024),
    ("1e-6", 1e-6), ("0.5", 0.5), ("-3", -3), ("[1,2]", [1, 2]), ("['a', \"b\"]", ["a", "b"]),
    ('["model","optimizer","extra"]', ["model", "optimizer", "extra"]), ("[]", []),
    ("{a: 1, b: [x]}", {"a": 1, "b": ["x"]}), ("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B"),
    ("'a,b'", "a,b"), ("${oc.env:HOME,/root}", "${oc.env:HOME,/root}"), ("", ""),
])
def test_values(text: str, value: object) -> None:
    assert parse_value(text, "k", top=True) == value


def test_inf_and_nan_are_floats() -> None:
    assert math.isinf(parse_value("inf", "k")) and math.isnan(parse_value("nan", "k"))


def test_sweep_is_refused() -> None:
    with pytest.raises(ConfigError, match="sweep"):
        parse_override("trainer.logger=console,wandb")


def test_prefixes() -> None:
    assert parse_override("+a.b=1").kind is OverrideKind.ADD
    assert parse_override("++a.b=1").kind is OverrideKind.FORCE_ADD
    delete = parse_override("~a.b")
    assert (delete.kind, delete.has_value, delete.typed) == (OverrideKind.DELETE, False, "~a.b")
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("data.train_batch_size")


def _apply(*words: str, environment: dict[str, str] | None = None):
    return apply_overrides(load_table("0.9.1"), [parse_override(w) for w in words], environment)


def test_plain_override_of_a_missing_key_is_refused_naming_it() -> None:
    # Hydra: "Could not override 'data.max_len'. To append to your config use +data.max_len=4"
    with pytest.raises(ConfigError) as error:
        _apply("data.max_len=4")
    assert error.value.location == "data.max_len"
    assert "+data.max_len=" in error.value.message and "0.9.1" in error.value.message


def test_plus_of_an_existing_key_is_refused() -> None:
    # Hydra: "Could not append to config. An item is already at 'data.train_batch_size'."
    with pytest.raises(ConfigError) as error:
        _apply("+data.train_batch_size=8")
    assert error.value.location == "+data.train_batch_size"


def test_plus_of_a_null_key_and_double_plus() -> None:
    config = _apply("+actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "++data.train_batch_size=8",
                    "++data.brand_new=1")
    assert config.get("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu") == 2
    assert (config.get("data.train_batch_size"), config.get("data.brand_new")) == (8, 1)


def test_keys_under_an_empty_section_need_plus() -> None:
    with pytest.raises(ConfigError):
        _apply("actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes=1")
    config = _apply("+actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes=1")
    assert config.section("actor_rollout_ref.rollout.engine_kwargs.vllm") == {"kv_cache_memory_bytes": 1}


def test_delete() -> None:
    config = _apply("~trainer.logger")
    assert not config.has("trainer.logger")
    with pytest.raises(ConfigError, match="cannot delete"):
        _apply("~trainer.no_such_key")
    with pytest.raises(ConfigError, match="not 'other'"):
        _apply("~trainer.project_name=other")  # its value is verl_examples
    # ~key=value with the right value deletes (Hydra compares the value first)
    assert not _apply("~trainer.project_name=verl_examples").has("trainer.project_name")


def test_interpolations_follow_the_final_config() -> None:
    config = _apply("actor_rollout_ref.actor.ppo_max_token_len_per_gpu=9000", "actor_rollout_ref.rollout.n=8")
    # rollout.log_prob_max_token_len_per_gpu: ${oc.select:actor_rollout_ref.actor.ppo_max_token_len_per_gpu,16384}
    assert config.get("actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu") == 9000
    assert config.get("critic.rollout_n") == 8
    # critic.forward_max_token_len_per_gpu: ${.ppo_max_token_len_per_gpu} (relative) -> 32768
    assert config.get("critic.forward_max_token_len_per_gpu") == 32768
    # trainer.default_local_dir: checkpoints/${trainer.project_name}/${trainer.experiment_name}
    assert config.get("trainer.default_local_dir") == "checkpoints/verl_examples/gsm8k"


def test_user_interpolation_and_env() -> None:
    config = _apply("critic.ppo_max_token_len_per_gpu=${actor_rollout_ref.actor.ppo_max_token_len_per_gpu}",
                    "data.train_batch_size=${oc.env:BS,64}", "data.max_prompt_length=${oc.env:PL}",
                    environment={"PL": "1024"})
    assert config.get("critic.ppo_max_token_len_per_gpu") == 16384
    assert config.get("data.train_batch_size") == 64
    assert config.get("data.max_prompt_length") == "1024"  # oc.env yields a string, as OmegaConf's does
    assert isinstance(_apply("data.max_prompt_length=${oc.env:UNSET}").get("data.max_prompt_length"), Unresolved)


def test_interpolation_cycle_ends() -> None:
    with pytest.raises(ConfigError, match="nest more than"):
        _apply("data.train_batch_size=${data.max_prompt_length}",
               "data.max_prompt_length=${data.train_batch_size}").get("data.train_batch_size")
