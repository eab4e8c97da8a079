"""One adapter per model family: config.json dict → ModelSpec, with each family's defaults.

Defaults are those of transformers' ``configuration_<family>.py`` (huggingface/transformers v5.24.0),
the code memplan's parameter counts are checked against. An unknown ``model_type`` is rejected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memplan.errors import UnsupportedModelError
from memplan.model.families import deepseek, dense, gemma, moe
from memplan.model.fields import Fields
from memplan.model.spec import ModelSpec

Adapter = Callable[[Fields, str], ModelSpec]

ADAPTERS: dict[str, Adapter] = {
    "llama": dense.llama,
    "mistral": dense.mistral,
    "qwen2": dense.qwen2,
    "qwen3": dense.qwen3,
    "phi3": dense.phi3,
    "gemma": gemma.gemma,
    "gemma2": gemma.gemma2,
    "gemma3_text": gemma.gemma3_text,
    "mixtral": moe.mixtral,
    "qwen2_moe": moe.qwen2_moe,
    "qwen3_moe": moe.qwen3_moe,
    "deepseek_v2": deepseek.deepseek_v2,
    "deepseek_v3": deepseek.deepseek_v3,
}


def supported_model_types() -> tuple[str, ...]:
    """The ``model_type`` values memplan reads."""
    return tuple(sorted(ADAPTERS))


def adapt(config: dict[str, Any], name: str, location: str) -> ModelSpec:
    """Build the ModelSpec of ``config`` with its family's adapter."""
    fields = Fields(config, location)
    model_type = fields.raw("model_type")
    if model_type is None:
        raise UnsupportedModelError(f"{location}: model_type", "required field is missing")
    if not isinstance(model_type, str):
        raise UnsupportedModelError(f"{location}: model_type", f"must be a string, got {model_type!r}")
    adapter = ADAPTERS.get(model_type)
    if adapter is None:
        hint = ""
        if config.get("auto_map"):
            hint = (" This config names its own modeling code (auto_map), which memplan never executes;"
                    " only architectures built into transformers are supported.")
        raise UnsupportedModelError(
            f"{location}: model_type",
            f"unsupported architecture {model_type!r}; supported: {', '.join(supported_model_types())}.{hint}",
        )
    return adapter(fields, name)
