"""Gemma, Gemma 2, Gemma 3 (text): tied embeddings by default, head_dim 256 by default,
embedding scaled by sqrt(hidden) (no parameters), Gemma 2/3 with four norms per layer.

Source: huggingface/transformers v5.24.0 ``models/gemma*/configuration_gemma*.py`` and modeling files.
"""

from __future__ import annotations

from dataclasses import replace

from memplan.model.families.common import layer_types
from memplan.model.families.dense import build, sliding_window_field
from memplan.model.fields import Fields
from memplan.model.spec import AttentionType, ModelSpec

#: ``GemmaConfig.head_dim`` / ``Gemma2Config.head_dim`` / ``Gemma3TextConfig.head_dim`` default.
GEMMA_DEFAULT_HEAD_DIM = 256
#: ``Gemma2Config.sliding_window`` and ``Gemma3TextConfig.sliding_window`` default.
GEMMA_DEFAULT_SLIDING_WINDOW = 4096
#: Gemma 2 soft-capping defaults (``attn_logit_softcapping`` 50.0, ``final_logit_softcapping`` 30.0).
GEMMA2_DEFAULT_ATTN_SOFTCAP = 50.0
GEMMA2_DEFAULT_FINAL_SOFTCAP = 30.0
#: Gemma 3 ``sliding_window_pattern`` default: every 6th layer attends globally.
GEMMA3_DEFAULT_SLIDING_PATTERN = 6


def _gemma_common(fields: Fields, name: str, model_type: str, *, qk_norm: bool,
                  sliding: int | None, types: tuple[AttentionType, ...] | None) -> ModelSpec:
    bias = fields.bool("attention_bias", False)
    spec = build(fields, name, model_type=model_type, qkv_bias=bias, out_bias=bias, mlp_bias=False,
                 qk_norm=qk_norm, default_head_dim=GEMMA_DEFAULT_HEAD_DIM, sliding_window=sliding, types=types)
    act = fields.str("hidden_activation", fields.str("hidden_act", "gelu_pytorch_tanh"))
    return replace(spec, tie_word_embeddings=fields.bool("tie_word_embeddings", True), hidden_act=act,
                   max_position_embeddings=fields.int("max_position_embeddings", 8192))


def gemma(fields: Fields, name: str) -> ModelSpec:
    """Gemma 1: two norms per layer, full attention."""
    return _gemma_common(fields, name, "gemma", qk_norm=False, sliding=None, types=None)


def gemma2(fields: Fields, name: str) -> ModelSpec:
    """Gemma 2: four norms, alternating sliding (even layers) and full attention, logit soft-capping."""
    layers = fields.int("num_hidden_layers")
    window = sliding_window_field(fields, GEMMA_DEFAULT_SLIDING_WINDOW)
    default = tuple(AttentionType.SLIDING if (i + 1) % 2 else AttentionType.FULL for i in range(layers))
    spec = _gemma_common(fields, name, "gemma2", qk_norm=False, sliding=window,
                         types=layer_types(fields, layers, default))
    attn_cap = fields.optional_float("attn_logit_softcapping") if "attn_logit_softcapping" in fields._config \
        else GEMMA2_DEFAULT_ATTN_SOFTCAP
    final_cap = fields.optional_float("final_logit_softcapping") if "final_logit_softcapping" in fields._config \
        else GEMMA2_DEFAULT_FINAL_SOFTCAP
    return replace(spec, norms_per_layer=4, attn_logit_softcapping=attn_cap, final_logit_softcapping=final_cap)


def gemma3_text(fields: Fields, name: str) -> ModelSpec:
    """Gemma 3 text: four norms, q/k norms, 5 sliding layers to 1 global (``sliding_window_pattern``)."""
    layers = fields.int("num_hidden_layers")
    window = sliding_window_field(fields, GEMMA_DEFAULT_SLIDING_WINDOW)
    pattern = fields.int("sliding_window_pattern", GEMMA3_DEFAULT_SLIDING_PATTERN)
    default = tuple(AttentionType.SLIDING if (i + 1) % pattern else AttentionType.FULL for i in range(layers))
    spec = _gemma_common(fields, name, "gemma3_text", qk_norm=True, sliding=window,
                         types=layer_types(fields, layers, default))
    return replace(spec, norms_per_layer=4,
                   attn_logit_softcapping=fields.optional_float("attn_logit_softcapping"),
                   final_logit_softcapping=fields.optional_float("final_logit_softcapping"),
                   max_position_embeddings=fields.int("max_position_embeddings", 131072))
