"""Live cross-check: memplan's parameter counts against transformers building the model on the meta device.

Counts every synthetic config under tests/data/synthetic/ and a few small presets, so a change in
memplan's adapters (or a transformers upgrade) shows up without regenerating
validation/exact/param_counts.json. Meta tensors hold no storage: the whole file runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from memplan.model import largest_layer_params, load_model_spec, num_params, param_tree, spec_from_config
from memplan.model.presets import load_presets

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.tracing

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC = sorted((REPO / "tests" / "data" / "synthetic").glob("*.json"))
#: Small presets recounted live when bundled (the rest are covered by the stored counts).
SMALL_PRESETS = ("qwen2.5-0.5b", "qwen3-0.6b", "llama-3.2-1b", "gemma-2-2b", "gemma-3-1b", "phi-3-mini",
                 "qwen1.5-moe-a2.7b", "deepseek-v2-lite")
#: Multimodal wrappers memplan reads as their text model (memplan.model.loader).
TEXT_CONFIG_WRAPPERS = {"gemma3": "gemma3_text"}


def _transformers_counts(config: dict[str, Any]) -> tuple[int, int, int]:
    """(parameters, DeepSpeed's largest layer, persistent buffer elements) of the meta-device model."""
    if config.get("model_type") in TEXT_CONFIG_WRAPPERS and isinstance(config.get("text_config"), dict):
        config = {"model_type": TEXT_CONFIG_WRAPPERS[config["model_type"]], **config["text_config"]}
    hf_config = transformers.AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config, trust_remote_code=False)
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    buffers = sum(b.numel() for m in model.modules() for name, b in m._buffers.items()
                  if b is not None and name not in m._non_persistent_buffers_set)
    return total, largest, buffers


@pytest.mark.parametrize("path", SYNTHETIC, ids=lambda p: p.stem)
def test_synthetic_config_matches_transformers(path: Path) -> None:
    config = json.loads(path.read_text(encoding="utf-8"))
    spec = spec_from_config(config, name=path.stem, location=str(path))
    assert (num_params(spec), largest_layer_params(spec), param_tree(spec).num_buffer_elements) == \
        _transformers_counts(config)


@pytest.mark.parametrize("name", [p.name for p in load_presets() if p.name in SMALL_PRESETS])
def test_small_preset_matches_transformers(name: str) -> None:
    preset = next(p for p in load_presets() if p.name == name)
    spec = load_model_spec(name)
    assert (num_params(spec), largest_layer_params(spec), param_tree(spec).num_buffer_elements) == \
        _transformers_counts(preset.config())
