"""Checks between values that OpenRLHF, DeepSpeed or vLLM assert at start-up, named as the user typed them.

``bounds.check_flag_value`` judges one value at a time; the rules here need several values, the world
size, or the model. They run on a run the user states in full (``estimate``, ``check``), before any
memory is computed; the planner, which chooses the world itself, does not run ``check_run``.
Each message names the flag as typed (``ParsedCommand.options``), or, for a flag left at its default,
its spelling in the version's table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from memplan.errors import ConfigError
from memplan.frameworks.openrlhf.bounds import MAX_GPUS, MAX_GPUS_PER_NODE, check_count
from memplan.frameworks.openrlhf.flags import load_table
from memplan.frameworks.openrlhf.job import DEFAULT_GPUS_PER_NODE
from memplan.frameworks.openrlhf.rl_job import rl_roles
from memplan.memory.vllm import weight_bytes_per_rank
from memplan.model.spec import ModelSpec

#: The RL roles trained or scored by a DeepSpeed engine of their own GPU group (train_ppo_ray).
RL_GROUPS = ("actor", "critic", "ref", "reward")


def check_world_options(*, gpus: int | None, nodes: int | None, gpus_per_node: int | None) -> None:
    """``estimate``'s ``--gpus``, ``--nodes`` and ``--gpus-per-node`` within bounds.MAX_GPUS(_PER_NODE)."""
    check_count("--gpus", gpus, 1, MAX_GPUS)
    check_count("--nodes", nodes, 1, MAX_GPUS)
    check_count("--gpus-per-node", gpus_per_node, 1, MAX_GPUS_PER_NODE)
    per_node = gpus_per_node or DEFAULT_GPUS_PER_NODE
    if nodes is not None and nodes * per_node > MAX_GPUS:
        raise ConfigError("--nodes", f"{nodes} nodes × {per_node} GPUs is more than {MAX_GPUS} GPUs")


class Names:
    """The flag a canonical key was typed as, else its spelling in the script's table for the version."""

    def __init__(self, script: str, version: str, typed: Mapping[str, str]) -> None:
        self._table = load_table(script, version)
        self._typed = typed

    def typed_keys(self) -> frozenset[str]:
        """Keys the user gave a flag for."""
        return frozenset(self._typed)

    def __call__(self, key: str) -> str:
        if key in self._typed:
            return self._typed[key]
        specs = self._table.by_key.get(key, ())
        return specs[0].option if specs else f"--{key}"


def check_run(script: str, values: Mapping[str, Any], *, world: tuple[int, int], names: Names,
              world_name: str) -> None:
    """Cross-flag rules of a fully stated run; ``world`` is (nodes, GPUs per node) of a single-model run."""
    if script == "train_ppo_ray":
        groups = _rl_groups(values)
        engines = int(values.get("vllm_num_engines") or 0)
        sizes = {names(f"{role}_num_nodes"): n for role, n in groups}
        sizes[names("vllm_num_engines")] = engines * int(values.get("vllm_tensor_parallel_size") or 1)
        if sum(sizes.values()) > MAX_GPUS:
            raise ConfigError(max(sizes, key=lambda k: sizes[k]),
                              f"the run asks for {sum(sizes.values())} GPUs in all; at most {MAX_GPUS}")
        for role, size in groups:
            check_batch_divides(values, size, names, f"the {size} GPUs of {names(role + '_num_nodes')} × "
                                                     f"{names(role + '_num_gpus_per_node')}")
        return
    nodes, per_node = world
    if nodes * per_node > MAX_GPUS:
        raise ConfigError(world_name, f"{nodes} nodes × {per_node} GPUs is more than {MAX_GPUS} GPUs")
    check_batch_divides(values, nodes * per_node, names, f"{nodes * per_node} GPUs")


def _rl_groups(values: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(role, GPUs) of each DeepSpeed group train_ppo_ray builds (rl_job.rl_roles decides which exist)."""
    present = {str(r) for r in rl_roles(values)}
    return [(role, int(values[f"{role}_num_nodes"]) * int(values[f"{role}_num_gpus_per_node"]))
            for role in RL_GROUPS if role in present]


def check_batch_divides(values: Mapping[str, Any], world: int, names: Names, where: str) -> None:
    """DeepSpeed's batch assertion on the config OpenRLHF writes.

    OpenRLHF sets ``train_micro_batch_size_per_gpu = micro_train_batch_size`` and ``train_batch_size =
    train_batch_size × ring_attn_size × ds_tensor_parallel_size`` for every engine, trained or eval
    (openrlhf/utils/deepspeed/deepspeed.py@v0.11.0 L455-456 and L498-499; @v0.9.5 L284-285, L327-328).
    DeepSpeed then takes ``gradient_accumulation_steps = train_batch // micro // world`` and asserts it is
    > 0 and ``train_batch == micro × steps × world`` (deepspeed/runtime/config.py@0.19.8 L600-605, L620-623):
    the product must be a positive multiple of ``micro × world``. Not checked with ``--use_dynamic_batch``,
    where OpenRLHF sets the steps to 1 instead.
    """
    if values.get("use_dynamic_batch"):
        return
    batch, micro = values.get("train_batch_size"), values.get("micro_train_batch_size")
    if not isinstance(batch, int) or not isinstance(micro, int):
        return
    parallel = int(values.get("ring_attn_size") or 1) * int(values.get("ds_tensor_parallel_size") or 1)
    step = micro * world
    if (batch * parallel) % step == 0:
        return
    scaled = "" if parallel == 1 else f" × {parallel} (ring attention × DeepSpeed TP)"
    raise ConfigError(names("train_batch_size"),
                      f"{batch}{scaled} must be a multiple of {names('micro_train_batch_size')} {micro} × {where} "
                      f"= {step} (DeepSpeed asserts train_batch_size == micro batch × accumulation steps × world)")


def check_model(values: Mapping[str, Any], spec: ModelSpec, names: Names) -> None:
    """Rules that need the actor's architecture: vLLM's tensor-parallel split and its longest sequence.

    vLLM refuses an engine whose TP size does not divide the attention heads (``ModelConfig.
    verify_with_parallel_config``: "Total number of attention heads (H) must be divisible by tensor
    parallel size (T)", vllm/config/model.py), and asserts each split of its parallel layers (KV heads,
    MLP and expert widths: ``memory.vllm.weight_bytes_per_rank`` cites them). It also refuses ``max_model_len`` (OpenRLHF passes
    ``--max_len``, or prompt + generation lengths before 0.11) above the model's
    ``max_position_embeddings`` (``_get_and_verify_max_len``, unless VLLM_ALLOW_LONG_MAX_MODEL_LEN is
    set). Assumes: only plain and ``llama3`` RoPE are checked, where vLLM applies no scaling factor to
    ``max_position_embeddings``; other RoPE scalings are left unchecked.
    """
    engines = values.get("vllm_num_engines") or 0
    if not engines:
        return
    tp = int(values.get("vllm_tensor_parallel_size") or 1)
    heads = spec.num_attention_heads
    if heads % tp:
        raise ConfigError(names("vllm_tensor_parallel_size"),
                          f"{tp} does not divide the model's {heads} attention heads (vLLM requires it)")
    try:  # every other split vLLM asserts: KV heads, MLP and expert widths (memory.vllm cites each)
        weight_bytes_per_rank(spec, tp)
    except ConfigError as exc:
        raise ConfigError(names("vllm_tensor_parallel_size"), f"vLLM cannot split the model over {tp} GPUs: "
                                                              f"{exc.message}") from None
    max_len = values.get("max_len")
    limit = spec.max_position_embeddings
    if isinstance(max_len, int) and spec.rope_scaling_type in (None, "llama3") and limit and max_len > limit:
        key = "max_len" if "max_len" in names.typed_keys() else "generate_max_len"
        raise ConfigError(names(key), f"sequences of {max_len} tokens exceed the model's max_position_embeddings "
                                      f"{limit}; vLLM refuses such a max_model_len")
