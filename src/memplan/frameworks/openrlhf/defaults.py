"""OpenRLHF's defaults and post-parse fix-ups, per entry script and version.

``resolve_values`` turns the flags a command gives into the complete set of values the entry
script runs with: every argparse default of that script and version (from the flag tables), then
the adjustments each ``openrlhf/cli/<script>.py`` makes right after ``parser.parse_args()`` (for
example ``--ring_attn_size > 1`` turns packing on, packing forces flash attention, the PPO critic
starts from the reward model). Each rule below names the file it follows; they are the same at
v0.8.5, v0.9.5 and v0.11.0 unless the rule says otherwise.

Version 0.8 has ``--bf16`` and ``--flash_attn`` where later versions have ``--param_dtype`` and
``--attn_implementation``; resolved values always carry ``param_dtype`` and
``attn_implementation``:

* ``param_dtype``: ``bf16``/``fp16`` (0.9+), and for 0.8 ``bf16`` with ``--bf16``, else ``auto``:
  the model loads with ``torch_dtype="auto"`` (the checkpoint's dtype) and DeepSpeed's bf16 is off
  (``openrlhf/models/actor.py`` and ``openrlhf/utils/deepspeed/deepspeed_utils.py`` at v0.8.5).
* ``attn_implementation``: for 0.8 ``flash_attention_2`` with ``--flash_attn``, else ``eager``
  (``Actor.__init__`` at v0.8.5: ``"flash_attention_2" if use_flash_attention_2 else "eager"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from memplan.errors import ConfigError
from memplan.frameworks.openrlhf.bounds import MAX_TOKENS
from memplan.frameworks.openrlhf.command import ParsedCommand
from memplan.frameworks.openrlhf.flags import check_value, load_table, normalize_version

LEGACY_DERIVED_KEYS: frozenset[str] = frozenset({"param_dtype", "attn_implementation"})
"""Keys resolve_values adds for 0.8, where no flag of that name exists."""

_LEGACY_DTYPE = {True: "bf16", False: "auto"}
_LEGACY_ATTN = {True: "flash_attention_2", False: "eager"}
_SINGLE_MODEL_SCRIPTS = ("train_sft", "train_rm", "train_dpo")
_PACKING_ATTN_SCRIPTS = ("train_sft", "train_rm", "train_dpo", "train_ppo_ray")

Values = dict[str, Any]


def resolve_values(command: ParsedCommand | tuple[str, Mapping[str, Any]], version: str | None = None) -> Values:
    """Every canonical key of the script at ``version`` with the value OpenRLHF would run with.

    ``version`` defaults to the command's version hint, else the latest. Keys the version does not
    have are left out (see ``foreign_keys``).
    """
    script, values, hint = _unpack(command)
    version = normalize_version(version if version is not None else hint)
    table = load_table(script, version)
    given = to_version_keys(values, version)
    resolved: Values = {key: table.default(key) for key in table.by_key}
    resolved.update({k: check_value(table.by_key[k][0], v) for k, v in given.items() if k in resolved})
    for rule in _RULES:
        rule(script, version, resolved)
    return resolved


def foreign_keys(command: ParsedCommand | tuple[str, Mapping[str, Any]], version: str | None = None) -> tuple[str, ...]:
    """Keys given that ``version`` has no flag for (OpenRLHF of that version would reject them)."""
    script, values, hint = _unpack(command)
    version = normalize_version(version if version is not None else hint)
    table = load_table(script, version)
    return tuple(k for k in to_version_keys(values, version) if k not in table.by_key)


def to_version_keys(values: Mapping[str, Any], version: str) -> Values:
    """``values`` with the bf16/flash_attn <-> param_dtype/attn_implementation keys of ``version``."""
    out = dict(values)
    if normalize_version(version) == "0.8":
        _to_legacy(out, "param_dtype", "bf16", _LEGACY_DTYPE)
        _to_legacy(out, "attn_implementation", "flash_attn", _LEGACY_ATTN)
        return out
    if out.pop("bf16", False) is True:
        out.setdefault("param_dtype", "bf16")
    if out.pop("flash_attn", False) is True:
        out.setdefault("attn_implementation", "flash_attention_2")
    return out


def _to_legacy(out: Values, new_key: str, old_key: str, mapping: dict[bool, str]) -> None:
    if new_key not in out:
        return
    value = out.pop(new_key)
    flags = [flag for flag, name in mapping.items() if name == value]
    if not flags:
        raise ConfigError(new_key, f"OpenRLHF 0.8 cannot express {value!r} (it has --{old_key}: "
                          f"{' or '.join(mapping.values())})")
    if old_key in out and out[old_key] != flags[0]:
        raise ConfigError(new_key, f"{value!r} contradicts {old_key}={out[old_key]!r}")
    out[old_key] = flags[0]


def _unpack(command: ParsedCommand | tuple[str, Mapping[str, Any]]) -> tuple[str, Mapping[str, Any], str | None]:
    if isinstance(command, ParsedCommand):
        return command.script, command.values, command.version_hint
    script, values = command
    return script, values, None


# ---- post-parse rules, in the order the entry scripts apply them ---------------------------------


def _dpo_reference(script: str, version: str, v: Values) -> None:
    """train_dpo.py: an empty ``ref_pretrain`` means the policy checkpoint."""
    if script == "train_dpo" and not v["ref_pretrain"]:
        v["ref_pretrain"] = v["pretrain"]


def _ring_attention(script: str, version: str, v: Values) -> None:
    """train_ppo_ray.py turns packing on for ring attention; train_sft/rm/dpo.py assert it."""
    if v.get("ring_attn_size", 1) <= 1 or v["packing_samples"]:
        return
    if script == "train_ppo_ray":
        v["packing_samples"] = True
    elif script in _SINGLE_MODEL_SCRIPTS:
        raise ConfigError("ring_attn_size", "ring attention needs packing_samples (OpenRLHF asserts this)")


def _dynamic_batch(script: str, version: str, v: Values) -> None:
    """train_ppo_ray.py (0.9+): dynamic batch turns packing on; rollout token budget = train budget."""
    if script != "train_ppo_ray" or not v.get("use_dynamic_batch"):
        return
    v["packing_samples"] = True
    if v["rollout_max_tokens_per_gpu"] is None:
        v["rollout_max_tokens_per_gpu"] = v["train_max_tokens_per_gpu"]


def _packing_attention(script: str, version: str, v: Values) -> None:
    """Packing forces flash attention (``--flash_attn`` at 0.8, flash_attention_2 from 0.9)."""
    if script not in _PACKING_ATTN_SCRIPTS or not v["packing_samples"]:
        return
    if version == "0.8":
        v["flash_attn"] = True
    elif "flash_attention" not in v["attn_implementation"]:
        v["attn_implementation"] = "flash_attention_2"


def _legacy_precision(script: str, version: str, v: Values) -> None:
    """0.8: derive param_dtype and attn_implementation from --bf16 and --flash_attn (module doc)."""
    if version == "0.8":
        v["param_dtype"] = _LEGACY_DTYPE[bool(v["bf16"])]
        v["attn_implementation"] = _LEGACY_ATTN[bool(v["flash_attn"])]


def _vllm_sleep(script: str, version: str, v: Values) -> None:
    """train_ppo_ray.py: vLLM sleep is turned off unless all models are colocated."""
    if script == "train_ppo_ray" and v["vllm_enable_sleep"] and not v["colocate_all_models"]:
        v["vllm_enable_sleep"] = False


def _reward_source(script: str, version: str, v: Values) -> None:
    """train_ppo_ray.py: an agent function replaces the reward model (remote_rm_url = "agent")."""
    if script == "train_ppo_ray" and v["agent_func_path"]:
        v["remote_rm_url"] = "agent"


def _critic_checkpoint(script: str, version: str, v: Values) -> None:
    """train_ppo_ray.py: no critic unless GAE; it starts from the reward model, or the actor with a remote RM."""
    if script != "train_ppo_ray":
        return
    if v["advantage_estimator"] != "gae":
        v["critic_pretrain"] = None
    elif v["critic_pretrain"] is None:
        if v["remote_rm_url"]:
            v["critic_pretrain"] = v["pretrain"]
        elif v["reward_pretrain"]:
            v["critic_pretrain"] = str(v["reward_pretrain"]).split(",")[0]


def _ppo_batches(script: str, version: str, v: Values) -> None:
    """train_ppo_ray.py: symmetric clip range; vLLM generate batch = rollout batch when unset."""
    if script != "train_ppo_ray":
        return
    if v["eps_clip_low_high"] is None:
        v["eps_clip_low_high"] = (v["eps_clip"], v["eps_clip"])
    if not v["vllm_generate_batch_size"]:
        v["vllm_generate_batch_size"] = v["rollout_batch_size"]


def _legacy_max_len(script: str, version: str, v: Values) -> None:
    """train_ppo_ray.py (0.8, 0.9): vLLM max_model_len = max_len or prompt_max_len + generate_max_len."""
    if script == "train_ppo_ray" and version in ("0.8", "0.9") and v["max_len"] is None:
        total = v["prompt_max_len"] + v["generate_max_len"]
        if total > MAX_TOKENS:
            raise ConfigError("prompt_max_len", f"prompt_max_len + generate_max_len = {total} tokens, more than the "
                                                f"longest sequence memplan accepts ({MAX_TOKENS})")
        v["max_len"] = total


_RULES: tuple[Callable[[str, str, Values], None], ...] = (
    _dpo_reference, _ring_attention, _dynamic_batch, _packing_attention, _legacy_precision,
    _vllm_sleep, _reward_source, _critic_checkpoint, _ppo_batches, _legacy_max_len,
)
