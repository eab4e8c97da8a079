"""Resolve a MODEL argument to a ModelSpec: a preset, a hub id, a config.json path or its directory.

Remote code is never executed: memplan reads ``config.json`` only and builds the architecture with
its own adapters.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

from memplan.errors import ConfigError, ModelNotFoundError
from memplan.model.families import adapt
from memplan.model.hub import read_hub_config
from memplan.model.presets import find_preset, preset_names
from memplan.model.spec import ModelSpec

#: Largest config.json accepted. Real ones are a few KB (DeepSeek-V3's is 1.7 KB); a bigger file is
#: not a model config, and reading it whole would be a denial of service.
MAX_CONFIG_BYTES = 1 << 20

#: Wrapper configs whose language model sits under ``text_config`` (multimodal checkpoints).
_TEXT_CONFIG_WRAPPERS = {"gemma3": "gemma3_text"}


def read_config_file(path: Path) -> dict[str, Any]:
    """Read and parse a config.json, with one-line errors for every way it can be wrong."""
    location = str(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ConfigError(location, f"cannot read: {exc.strerror or exc}") from None
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(location, f"is {size} bytes; a model config.json is a few KB (limit {MAX_CONFIG_BYTES})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(location, f"cannot read as UTF-8 text: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(location, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ConfigError(location, "invalid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(location, f"must hold a JSON object, got {type(data).__name__}")
    return data


def spec_from_config(config: dict[str, Any], *, name: str, location: str = "config.json") -> ModelSpec:
    """Build a ModelSpec from an already-parsed config dict."""
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in _TEXT_CONFIG_WRAPPERS and isinstance(config.get("text_config"), dict):
        inner = dict(config["text_config"])
        inner.setdefault("model_type", _TEXT_CONFIG_WRAPPERS[model_type])
        return adapt(inner, name, f"{location}: text_config")
    return adapt(config, name, location)


def _local_config_path(text: str) -> Path | None:
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # "~name" of a user this machine does not have (pathlib cannot expand it)
        raise ConfigError(text, "no such file (no user of that name to expand ~ for)") from None
    if path.is_dir():
        candidate = path / "config.json"
        if not candidate.is_file():
            raise ConfigError(str(path), "directory has no config.json")
        return candidate
    if path.is_file():
        return path
    if _exists(path):
        raise ConfigError(text, "is not a regular file (give a config.json file or its directory)")
    if text.endswith(".json") or os.sep in text and not _looks_like_hub_id(text):
        raise ConfigError(text, "no such file")
    return None


def _exists(path: Path) -> bool:
    """Whether something (a device, a pipe) is at ``path``; False for names the OS refuses (too long)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def load_model_spec(model: str) -> ModelSpec:
    """Resolve ``model`` (preset name, hub id, config.json path or directory) to a ModelSpec."""
    if not isinstance(model, str) or not model.strip():
        raise ConfigError("MODEL", "must name a preset, a hub id or a config.json path")
    from memplan.model.sandbox import active_sandbox  # serving web requests: no paths (model/sandbox.py)

    if (sandbox := active_sandbox()) is not None:
        return sandbox.load(model)
    local = _local_config_path(model)
    if local is not None:
        return spec_from_config(read_config_file(local), name=model, location=str(local))
    preset = find_preset(model)
    if preset is not None:
        return spec_from_config(preset.config(), name=preset.name, location=f"preset {preset.name}")
    if _looks_like_hub_id(model):
        return spec_from_config(read_hub_config(model), name=model, location=f"{model}/config.json")
    close = difflib.get_close_matches(model.lower(), preset_names(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `memplan models` lists the presets"
    raise ModelNotFoundError(model, f"unknown model{hint}")
