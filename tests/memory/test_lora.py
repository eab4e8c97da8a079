"""LoRA adapter sizes against hand computation."""

from __future__ import annotations

import pytest

from memplan.errors import ConfigError
from memplan.memory import lora
from memplan.model import load_model_spec, param_tree


def test_llama2_7b_all_linear_rank_16() -> None:
    tree = param_tree(load_model_spec("llama-2-7b"))
    # per layer, r = 16: q,k,v,o: 4 × 16·(4096+4096); gate, up: 2 × 16·(4096+11008); down: 16·(11008+4096)
    per_layer = 4 * 16 * (4096 + 4096) + 3 * 16 * (4096 + 11008)
    assert per_layer == 1_249_280
    assert lora.adapter_params(tree, ("all-linear",), 16) == 32 * per_layer  # 39,976,960 (peft prints the same)


def test_named_targets_and_suffix_match() -> None:
    tree = param_tree(load_model_spec("llama-2-7b"))
    # q_proj and v_proj only, r = 8: 32 layers × 2 × 8·(4096+4096) = 4,194,304 (the classic peft example)
    assert lora.adapter_params(tree, ("q_proj", "v_proj"), 8) == 4_194_304


def test_lm_head_never_in_all_linear() -> None:
    tree = param_tree(load_model_spec("llama-2-7b"))
    assert all(m.path != "lm_head" for m in lora.targeted_linears(tree, ("all-linear",)))


def test_no_match_is_an_error() -> None:
    tree = param_tree(load_model_spec("llama-2-7b"))
    with pytest.raises(ConfigError, match="lora.target_modules"):
        lora.adapter_params(tree, ("c_attn",), 8)
