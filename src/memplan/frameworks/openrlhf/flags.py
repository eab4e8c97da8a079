"""OpenRLHF's command-line flags: every argparse flag of each entry script, per version.

The tables are data (``data/flags_<tag>.toml``), read off the ``parser.add_argument`` calls in
``openrlhf/cli/<script>.py`` at three pinned commits:

=========  ==========  ==========================================  ===============================
version    tag         commit                                      spelling
=========  ==========  ==========================================  ===============================
``0.8``    v0.8.5      5974dfe8bded77e90dcdb92f08f3bdba31972ff2    flat; ``--bf16``, ``--flash_attn``
``0.9``    v0.9.5      c0e2ee2473cd115863630599cc3d51917d4b7c3e    flat; ``--param_dtype``
``0.11``   v0.11.0     3c3be6234e0cb353e76bb8019947db9dfe99fca7    dotted (``--ds.zero_stage``)
=========  ==========  ==========================================  ===============================

Every flag has a *canonical key*: the legacy flat argparse dest (``zero_stage``,
``micro_train_batch_size``, ``actor_num_gpus_per_node``). A 0.11 dotted flag carries the key of
the legacy flag it renamed (commit ed62d0e2, "dotted config hierarchy"); a flag that only 0.11
has gets its dotted dest with dots made underscores (``critic.optim`` -> ``critic_optim``).
One legacy flag sets two keys: ``--ref_reward_offload`` (0.11 split it into ``--ref.offload``
and ``--reward.offload``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any

from memplan.errors import ConfigError
from memplan.frameworks.openrlhf.bounds import check_flag_value

SCRIPTS: tuple[str, ...] = (
    "train_sft", "train_rm", "train_dpo", "train_kto", "train_prm", "train_kd", "train_ppo_ray",
)
"""Entry scripts memplan reads (``openrlhf.cli.<script>``)."""

VERSIONS: tuple[str, ...] = ("0.8", "0.9", "0.11")
"""OpenRLHF versions with a flag table, oldest first."""

LATEST = "0.11"
"""The version assumed when none is given."""

VERSION_OPTION = "--openrlhf-version"
"""memplan's option that names the version (where version errors point)."""

_TABLE_FILES = {"0.8": "flags_v0.8.5.toml", "0.9": "flags_v0.9.5.toml", "0.11": "flags_v0.11.0.toml"}

# Release tags whose flags and memory-relevant defaults match a table (checked tag by tag against
# the argparse code). Tags between two tables are refused with the reason, see version_of_tag.
_TAG_RANGES: tuple[tuple[tuple[int, ...], tuple[int, ...], str], ...] = (
    ((0, 8, 0), (0, 8, 9, 1), "0.8"),
    ((0, 9, 2), (0, 9, 7), "0.9"),
    ((0, 10, 2), (0, 11, 0), "0.11"),
)
_BETWEEN = {
    ((0, 8, 10), (0, 9, 1, 1)): "has --attn_implementation but still --bf16 (between the 0.8 and 0.9 tables)",
    ((0, 9, 8), (0, 10, 1, 2)): ("has flat flags but --max_new_tokens, max_len 2048 and (from 0.10.0) micro "
                                 "batch 1 (between the 0.9 and 0.11 tables)"),
}

MEMORY_KEYS: frozenset[str] = frozenset({
    # placement and world size (openrlhf.md §1.1 "Placement and resources")
    "actor_num_nodes", "actor_num_gpus_per_node", "critic_num_nodes", "critic_num_gpus_per_node",
    "ref_num_nodes", "ref_num_gpus_per_node", "reward_num_nodes", "reward_num_gpus_per_node",
    "colocate_actor_ref", "colocate_critic_reward", "colocate_all_models",
    "vllm_num_engines", "vllm_tensor_parallel_size", "vllm_gpu_memory_utilization", "vllm_enable_sleep",
    "deepspeed_enable_sleep", "enforce_eager", "enable_prefix_caching", "vllm_sync_backend",
    "async_train", "async_queue_size", "partial_rollout", "ring_attn_size", "ring_head_stride",
    "ds_tensor_parallel_size",
    # which models exist and what they are (§3)
    "pretrain", "reward_pretrain", "critic_pretrain", "ref_pretrain", "teacher_model",
    "remote_rm_url", "agent_func_path", "advantage_estimator", "init_kl_coef", "enable_ema",
    # DeepSpeed / model (§1.1 "DeepSpeed / model", §1.2)
    "zero_stage", "bf16", "param_dtype", "adam_offload", "zpg", "grad_accum_dtype", "overlap_comm",
    "gradient_checkpointing", "gradient_checkpointing_use_reentrant", "flash_attn", "attn_implementation",
    "experts_implementation", "packing_samples", "use_dynamic_batch", "train_max_tokens_per_gpu",
    "rollout_max_tokens_per_gpu", "use_liger_kernel", "load_in_4bit", "lora_rank", "target_modules",
    "ref_offload", "reward_offload", "teacher_offload", "actor_init_on_gpu", "deepcompile",
    "freeze_visual_encoder", "optim", "critic_optim",
    # batch and sequence (§1.1 "Batch and sequence", §1.2)
    "micro_train_batch_size", "micro_rollout_batch_size", "rollout_batch_size", "vllm_generate_batch_size",
    "n_samples_per_prompt", "prompt_max_len", "generate_max_len", "max_len", "entropy_loss_coef",
    "ptx_coef", "max_images_per_prompt",
    # saves: the HF state dict and DeepSpeed checkpoints on the host (frameworks/openrlhf/saves.py)
    "save_steps", "save_hf_ckpt", "disable_ds_ckpt", "save_value_network",
})
"""Canonical keys whose value changes GPU or host memory (openrlhf.md §1-§6). The rest are accepted
and ignored (learning rates, logging, checkpoint paths, dataset keys, loss coefficients, ...)."""


class FlagKind(StrEnum):
    """How argparse reads a flag."""

    INT = "int"
    """``type=int``: one integer (``int(text)``)."""
    FLOAT = "float"
    """``type=float``: one float (``float(text)``)."""
    STR = "str"
    """``type=str``: one string, kept as typed."""
    CHOICE = "choice"
    """``type=str, choices=[...]``: one of a fixed set of strings."""
    STORE_TRUE = "store_true"
    """No value; present means True."""
    STORE_FALSE = "store_false"
    """No value; present means False."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FlagSpec:
    """One argparse flag of one entry script in one OpenRLHF version."""

    option: str
    """The option string as typed (``--zero_stage``, ``--ds.zero_stage``)."""
    key: str
    """memplan's canonical key (the legacy flat dest)."""
    also: tuple[str, ...]
    """Further keys the flag sets to the same value (only ``--ref_reward_offload``)."""
    kind: FlagKind
    """How the value is read."""
    nargs: int | str | None
    """argparse ``nargs`` (``2``, ``"*"``) or None for one value; values are then tuples."""
    choices: tuple[str, ...]
    """Allowed values for CHOICE flags, else empty."""
    default: Any
    """OpenRLHF's default (argparse's, before any post-parse fix-ups; None when unset)."""
    default_expr: str | None
    """The default's source when it is not a literal (a timestamped run name), else None."""
    version: str
    """Table version (``0.8``, ``0.9``, ``0.11``)."""
    line: int
    """Line of the ``add_argument`` call in ``openrlhf/cli/<script>.py`` at the table's commit."""

    @property
    def keys(self) -> tuple[str, ...]:
        """Every canonical key this flag sets."""
        return (self.key, *self.also)

    @property
    def takes_value(self) -> bool:
        """Whether the flag reads a value (all but store_true/store_false)."""
        return self.kind not in (FlagKind.STORE_TRUE, FlagKind.STORE_FALSE)

    @property
    def memory(self) -> bool:
        """Whether the flag changes memory (see MEMORY_KEYS)."""
        return any(k in MEMORY_KEYS for k in self.keys)

    @property
    def dotted(self) -> bool:
        """Whether this is a 0.11 dotted spelling."""
        return "." in self.option


@dataclass(frozen=True, slots=True, kw_only=True)
class FlagTable:
    """All flags of one entry script in one OpenRLHF version."""

    script: str
    """Entry script (``train_sft``)."""
    version: str
    """Table version (``0.8``, ``0.9``, ``0.11``)."""
    tag: str
    """Release tag the table was read from."""
    commit: str
    """Commit the table was read from."""
    flags: tuple[FlagSpec, ...]
    """Every flag, in source order."""
    by_option: Mapping[str, FlagSpec]
    """Flag by option string."""
    by_key: Mapping[str, tuple[FlagSpec, ...]]
    """Flags that set a canonical key (a store_true/store_false pair shares one key)."""

    def default(self, key: str) -> Any:
        """OpenRLHF's default for ``key`` (KeyError when the script has no such key)."""
        return self.by_key[key][0].default

    def keys(self) -> frozenset[str]:
        """Every canonical key of this script and version."""
        return frozenset(self.by_key)


def normalize_version(text: str | None) -> str:
    """``0.8``/``0.9``/``0.11`` from a version or tag (``0.11.0``, ``v0.9.5``, ``latest``, ``main``)."""
    if text is None:
        return LATEST
    cleaned = text.strip().lower().removeprefix("v")
    if not cleaned:
        raise ConfigError(VERSION_OPTION, f"empty: give one of {', '.join(VERSIONS)}, a release tag or latest")
    if cleaned in ("latest", "main"):
        return LATEST
    if cleaned in VERSIONS:
        return cleaned
    return version_of_tag(cleaned)


def version_of_tag(tag: str) -> str:
    """The table version of an exact release tag (``0.9.5``, ``0.8.9.post1``)."""
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(?:\.post(\d+))?", tag)
    if match is None:
        raise ConfigError(VERSION_OPTION, f"expected one of {', '.join(VERSIONS)} or a release tag, "
                          f"got {tag!r}")
    number = tuple(int(g) for g in match.groups() if g is not None)
    for low, high, version in _TAG_RANGES:
        if low <= number <= high:
            return version
    for (low, high), reason in _BETWEEN.items():
        if low <= number <= high:
            raise ConfigError(VERSION_OPTION, f"v{tag} {reason}; pass 0.8, 0.9 or 0.11 instead")
    raise ConfigError(VERSION_OPTION, f"no flag table for OpenRLHF v{tag} (tables: v0.8.5, v0.9.5, v0.11.0)")


def scripts_of(version: str) -> tuple[str, ...]:
    """Entry scripts present in ``version`` (0.11 removed train_kto, train_prm, train_kd)."""
    return tuple(s for s in SCRIPTS if s in _raw_table(version))


def newest_with_script(script: str) -> str | None:
    """The newest version that has ``script`` (``0.9`` for train_kto, train_prm and train_kd), else None."""
    return next((v for v in reversed(VERSIONS) if script in _raw_table(v)), None)


def load_table(script: str, version: str) -> FlagTable:
    """The flag table of ``script`` at ``version`` (ConfigError if the script does not exist there)."""
    version = normalize_version(version)
    return _load_table(script, version)


def table_source(version: str) -> tuple[str, str]:
    """(tag, commit) a version's tables were read from."""
    raw = _raw_table(normalize_version(version))
    return str(raw["tag"]), str(raw["commit"])


def tables_with(script: str) -> tuple[FlagTable, ...]:
    """The script's table in every version that has it, newest first."""
    return tuple(_load_table(script, v) for v in reversed(VERSIONS) if script in _raw_table(v))


@cache
def _load_table(script: str, version: str) -> FlagTable:
    raw = _raw_table(version)
    if script not in raw or script not in SCRIPTS:
        present = ", ".join(scripts_of(version))
        newest = newest_with_script(script) if script in SCRIPTS else None
        where = f"; OpenRLHF {newest} has it (--openrlhf-version {newest})" if newest else ""
        raise ConfigError("script", f"openrlhf.cli.{script} is not an entry script of OpenRLHF {version} "
                          f"(it has {present}){where}")
    flags = tuple(_flag_spec(entry, version) for entry in raw[script]["flags"])
    by_key: dict[str, tuple[FlagSpec, ...]] = {}
    for spec in flags:
        for key in spec.keys:
            by_key[key] = (*by_key.get(key, ()), spec)
    return FlagTable(script=script, version=version, tag=str(raw["tag"]), commit=str(raw["commit"]),
                     flags=flags, by_option=MappingProxyType({f.option: f for f in flags}),
                     by_key=MappingProxyType(by_key))


def _flag_spec(entry: dict[str, Any], version: str) -> FlagSpec:
    kind = FlagKind(entry["kind"])
    default = entry.get("default")
    if kind is FlagKind.STORE_FALSE:
        default = True if default is None else default
    return FlagSpec(option=entry["flag"], key=entry["key"], also=tuple(entry.get("also", ())), kind=kind,
                    nargs=entry.get("nargs"), choices=tuple(entry.get("choices", ())),
                    default=tuple(default) if isinstance(default, list) else default,
                    default_expr=entry.get("default_expr"), version=version, line=int(entry["line"]))


@cache
def _raw_table(version: str) -> dict[str, Any]:
    text = resources.files(__package__).joinpath("data", _TABLE_FILES[version]).read_text(encoding="utf-8")
    return tomllib.loads(text)


def check_value(spec: FlagSpec, value: Any, location: str | None = None) -> Any:
    """``value`` if it fits ``spec`` and the key's bounds (lists become tuples), else ConfigError.

    The error names ``location`` (the flag as typed), or the canonical key when None. Bounds, finiteness
    and allowed spellings come from ``bounds.BOUNDS``: this is the one check every value passes.
    """
    where = location or spec.key
    if value is None or spec.kind in (FlagKind.STORE_TRUE, FlagKind.STORE_FALSE):
        if value is not None and not isinstance(value, bool):
            raise ConfigError(where, f"expected true or false, got {value!r}")
        return value
    if spec.nargs is None:
        checked = _check_scalar(spec, value, where)
    elif isinstance(value, str) and spec.nargs == "*":
        checked = value
    elif not isinstance(value, (list, tuple)):
        raise ConfigError(where, f"expected a list of values, got {value!r}")
    elif isinstance(spec.nargs, int) and len(value) != spec.nargs:
        raise ConfigError(where, f"expected {spec.nargs} values, got {len(value)}")
    else:
        checked = tuple(_check_scalar(spec, item, where) for item in value)
    for key in spec.keys:
        check_flag_value(key, checked, where)
    return checked


def _check_scalar(spec: FlagSpec, value: Any, where: str) -> Any:
    if spec.kind is FlagKind.INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"expected an integer, got {value!r}")
        return value
    if spec.kind is FlagKind.FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(where, f"expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(where, f"expected a string, got {value!r}")
    if spec.kind is FlagKind.CHOICE and value not in spec.choices:
        raise ConfigError(where, f"expected one of {', '.join(spec.choices)}, got {value!r}")
    return value


def flag_names() -> tuple[frozenset[str], frozenset[str]]:
    """Every spelling of an OpenRLHF flag, for the test that keeps them out of the framework-neutral code:
    (options as typed, ``--ds.zero_stage`` and ``--zero_stage``; multi-word keys, ``zero_stage``). A
    single-word key (``seed``) is too common a word to count on its own; its ``--seed`` form is an option."""
    options: set[str] = set()
    keys: set[str] = set()
    for version in VERSIONS:
        for script in scripts_of(version):
            for spec in load_table(script, version).flags:
                options.add(spec.option)
                bare = spec.option.lstrip("-")
                keys.update(k for k in (*spec.keys, bare) if "_" in k)
                options.update(f"--{k}" for k in spec.keys)
    return frozenset(options), frozenset(keys)
