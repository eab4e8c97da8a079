"""Dense decoder families: Llama (2, 3, 3.1, 3.2), Mistral, Qwen2/2.5, Qwen3, Phi-3.

Source: huggingface/transformers v5.24.0, ``models/<family>/configuration_<family>.py`` (defaults)
and ``modeling_<family>.py`` (modules and biases).
"""

from __future__ import annotations

from memplan.model.families.common import core_dims, head_dim, layer_types, uniform
from memplan.model.fields import Fields
from memplan.model.spec import AttentionType, ModelSpec

#: transformers ``MistralConfig.sliding_window`` default (configuration_mistral.py, v5.24.0).
MISTRAL_DEFAULT_SLIDING_WINDOW = 4096
#: transformers ``Qwen3Config.head_dim`` default (configuration_qwen3.py, v5.24.0).
QWEN3_DEFAULT_HEAD_DIM = 128


def sliding_window_field(fields: Fields, default: int | None) -> int | None:
    """``sliding_window``: an explicit ``null`` means none; an absent key takes the family default."""
    if "sliding_window" in fields._config:
        return fields.optional_int("sliding_window")
    return default


def build(fields: Fields, name: str, *, model_type: str, qkv_bias: bool, out_bias: bool, mlp_bias: bool,
          qk_norm: bool = False, fused: bool = False, default_head_dim: int | None = None,
          sliding_window: int | None = None, types: tuple[AttentionType, ...] | None = None) -> ModelSpec:
    """A dense decoder from the fields every family shares, with the family's own quirks as arguments."""
    dims = core_dims(fields, model_type)
    layers = dims["num_hidden_layers"]
    rope_type, rope_factor = fields.rope_scaling()
    default_types = types if types is not None else uniform(
        AttentionType.SLIDING if sliding_window else AttentionType.FULL, layers)
    return ModelSpec(
        name=name,
        model_type=model_type,
        **dims,
        intermediate_size=fields.int("intermediate_size"),
        head_dim=head_dim(fields, dims["hidden_size"], dims["num_attention_heads"], default_head_dim),
        tie_word_embeddings=fields.bool("tie_word_embeddings", False),
        attention_bias=qkv_bias,
        attention_out_bias=out_bias,
        mlp_bias=mlp_bias,
        qk_norm=qk_norm,
        norms_per_layer=2,
        fused_qkv=fused,
        hidden_act=fields.str("hidden_act", "silu"),
        max_position_embeddings=fields.int("max_position_embeddings", 4096),
        layer_types=layer_types(fields, layers, default_types),
        sliding_window=sliding_window,
        rope_scaling_type=rope_type,
        rope_scaling_factor=rope_factor,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        torch_dtype=fields.dtype(),
        mla=None,
        moe=None,
        moe_layers=(),
    )


def llama(fields: Fields, name: str) -> ModelSpec:
    """Llama 2/3/3.1/3.2: ``attention_bias`` on q, k, v and o; ``mlp_bias``; llama3 rope scaling."""
    bias = fields.bool("attention_bias", False)
    return build(fields, name, model_type="llama", qkv_bias=bias, out_bias=bias,
                 mlp_bias=fields.bool("mlp_bias", False))


def mistral(fields: Fields, name: str) -> ModelSpec:
    """Mistral: no biases; every layer slides when ``sliding_window`` is set (default 4096)."""
    window = sliding_window_field(fields, MISTRAL_DEFAULT_SLIDING_WINDOW)
    return build(fields, name, model_type="mistral", qkv_bias=False, out_bias=False, mlp_bias=False,
                 sliding_window=window)


def qwen2(fields: Fields, name: str) -> ModelSpec:
    """Qwen2/2.5: bias on q, k, v (hard-coded), none on o or the MLP; sliding only with
    ``use_sliding_window``, from layer ``max_window_layers`` on."""
    layers = fields.int("num_hidden_layers")
    window = None
    types = uniform(AttentionType.FULL, layers)
    if fields.bool("use_sliding_window", False):
        window = sliding_window_field(fields, 4096)
        start = fields.int("max_window_layers", 28, minimum=0)
        if window:
            types = tuple(AttentionType.SLIDING if i >= start else AttentionType.FULL for i in range(layers))
    return build(fields, name, model_type="qwen2", qkv_bias=True, out_bias=False, mlp_bias=False,
                 sliding_window=window, types=types)


def qwen3(fields: Fields, name: str) -> ModelSpec:
    """Qwen3: q/k RMSNorm over the head dim; ``attention_bias`` on q, k, v and o; head_dim default 128."""
    bias = fields.bool("attention_bias", False)
    return build(fields, name, model_type="qwen3", qkv_bias=bias, out_bias=bias, mlp_bias=False,
                 qk_norm=True, default_head_dim=QWEN3_DEFAULT_HEAD_DIM)


def phi3(fields: Fields, name: str) -> ModelSpec:
    """Phi-3: fused ``qkv_proj`` and ``gate_up_proj`` without biases; optional sliding window."""
    window = sliding_window_field(fields, None)
    return build(fields, name, model_type="phi3", qkv_bias=False, out_bias=False, mlp_bias=False,
                 fused=True, sliding_window=window)
