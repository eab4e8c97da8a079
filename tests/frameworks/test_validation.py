"""The one validation layer: the bounds table covers every memory flag, and each rule matches its source.

Expected limits come from the sources the bounds cite (DeepSpeed 0.19.8's ZeroStageEnum and batch
assertion, vLLM's CacheConfig and heads rule, OpenRLHF's ``> 0`` switches), written out by hand here.
"""

from __future__ import annotations

import math

import pytest

from memplan.errors import ConfigError
from memplan.frameworks.openrlhf.bounds import (
    BOUNDS,
    MAX_GPUS,
    MAX_GPUS_PER_NODE,
    MAX_LORA_RANK,
    MAX_TOKENS,
    check_flag_value,
)
from memplan.frameworks.openrlhf.command import read_flag_value
from memplan.frameworks.openrlhf.flags import MEMORY_KEYS, VERSIONS, FlagKind, load_table, scripts_of


def _numeric_memory_flags() -> list[tuple[str, str, str]]:
    """(script, version, option) of every INT/FLOAT flag that sets a memory key, in every table."""
    return [(script, version, spec.option) for version in VERSIONS for script in scripts_of(version)
            for spec in load_table(script, version).flags
            if spec.kind in (FlagKind.INT, FlagKind.FLOAT) and any(k in MEMORY_KEYS for k in spec.keys)]


def test_every_numeric_memory_flag_of_every_table_is_bounded() -> None:
    flags = _numeric_memory_flags()
    assert len(flags) > 100  # 7 scripts × 3 versions, dozens of numeric flags each
    unbounded = sorted({(option, key) for script, version, option in flags
                        for key in load_table(script, version).by_option[option].keys if key not in BOUNDS})
    assert unbounded == []


def test_every_bound_says_where_it_comes_from() -> None:
    assert all(bound.source for bound in BOUNDS.values())


@pytest.mark.parametrize(("script", "version", "option"), _numeric_memory_flags())
def test_every_numeric_memory_flag_refuses_nan_and_huge_values(script: str, version: str, option: str) -> None:
    spec = load_table(script, version).by_option[option]
    hostile = ["nan", "inf", "-inf"] if spec.kind is FlagKind.FLOAT else ["1" + "0" * 12, "-1" + "0" * 12]
    for text in hostile:
        with pytest.raises(ConfigError) as caught:
            read_flag_value(script, option, text)
        assert caught.value.location == option


@pytest.mark.parametrize(("key", "good", "bad"), [
    # DeepSpeed ZeroStageEnum: disabled=0, optimizer_states=1, gradients=2, weights=3
    ("zero_stage", [0, 3], [-1, 4, 7]),
    # DeepSpeed zero_hpz_partition_size: Field(1, ge=0)
    ("zpg", [0, 1, 8], [-1]),
    # OpenRLHF applies LoRA when lora_rank > 0; 0 is its default (off)
    ("lora_rank", [0, 8, MAX_LORA_RANK], [-8, MAX_LORA_RANK + 1]),
    # vLLM CacheConfig.gpu_memory_utilization: gt=0, le=1
    ("vllm_gpu_memory_utilization", [0.05, 1.0], [0.0, -0.5, 1.01, math.nan, math.inf]),
    # train_ppo_ray creates engines only for vllm_num_engines > 0; None/0 = no vLLM
    ("vllm_num_engines", [0, 4], [-1, MAX_GPUS + 1]),
    ("vllm_tensor_parallel_size", [1, 8], [0, -2]),
    # DeepSpeed asserts micro batch > 0 and train batch > 0
    ("micro_train_batch_size", [1, 16], [0, -1]),
    ("train_batch_size", [1, 128], [0, -4]),
    ("max_len", [1, 4096, MAX_TOKENS], [0, -1, 10**12]),
    ("actor_num_gpus_per_node", [1, 8, MAX_GPUS_PER_NODE], [0, MAX_GPUS_PER_NODE + 1, 10**9]),
    ("actor_num_nodes", [1, 1024], [0, 10**7]),
    ("init_kl_coef", [0.0, 0.01, -0.5], [math.nan, math.inf, -math.inf]),
    # DeepSpeed DtypeEnum spellings, int8 refused by engine.py
    ("grad_accum_dtype", ["fp32", "bf16", "float16", "torch.bfloat16"], ["bogus", "int8", "", "BF16"]),
    # memplan models these three (jobs.options.AttnImpl); transformers' names are case-sensitive
    ("attn_implementation", ["flash_attention_2", "sdpa", "eager"], ["flash_attention_3", "SDPA", ""]),
])
def test_bounds_follow_their_sources(key: str, good: list, bad: list) -> None:
    for value in good:
        assert check_flag_value(key, value, f"--{key}") == value
    for value in bad:
        with pytest.raises(ConfigError) as caught:
            check_flag_value(key, value, f"--{key}")
        assert caught.value.location == f"--{key}"


def test_a_dotted_flag_is_named_as_typed() -> None:
    with pytest.raises(ConfigError, match=r"^--ds\.zpg: must be between 0 and"):
        read_flag_value("train_sft", "--ds.zpg", "-1")


def test_library_values_are_checked_too() -> None:
    from memplan.frameworks.openrlhf import resolve_values

    with pytest.raises(ConfigError, match="^lora_rank: must be between 0 and 65536"):
        resolve_values(("train_sft", {"lora_rank": -8}), "0.11")


def test_reader_entry_point_types_then_bounds() -> None:
    assert read_flag_value("train_ppo_ray", "--vllm_gpu_memory_utilization", "0.5") == 0.5
    assert read_flag_value("train_sft", "--gradient_checkpointing", None) is True
    with pytest.raises(ConfigError, match="^--max_len: expected an integer, got '1e12'"):
        read_flag_value("train_sft", "--max_len", "1e12")
    with pytest.raises(ConfigError, match="^--nope: not a flag of openrlhf.cli.train_sft"):
        read_flag_value("train_sft", "--nope", "1")
