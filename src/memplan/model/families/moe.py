"""Mixture-of-experts families with standard attention: Mixtral, Qwen2-MoE, Qwen3-MoE.

transformers v5 fuses each layer's experts into one module holding two 3-D parameters
(``gate_up_proj`` [E, 2f, h] and ``down_proj`` [E, h, f]); the router is a bias-free [E, h] weight.
Source: huggingface/transformers v5.24.0 ``models/{mixtral,qwen2_moe,qwen3_moe}/``.
"""

from __future__ import annotations

from dataclasses import replace

from memplan.model.families.dense import QWEN3_DEFAULT_HEAD_DIM, build, sliding_window_field
from memplan.model.fields import MAX_COUNT, Fields
from memplan.model.spec import ModelSpec, MoeSpec


def qwen_moe_layers(fields: Fields, num_layers: int, num_experts: int) -> tuple[int, ...]:
    """Layers with the sparse block: not in ``mlp_only_layers`` and ``(i + 1) % decoder_sparse_step == 0``
    (``Qwen2MoeDecoderLayer.__init__``)."""
    step = fields.int("decoder_sparse_step", 1, limit=MAX_COUNT)
    dense_only = set(fields.int_list("mlp_only_layers"))
    if num_experts == 0:
        return ()
    return tuple(i for i in range(num_layers) if i not in dense_only and (i + 1) % step == 0)


def mixtral(fields: Fields, name: str) -> ModelSpec:
    """Mixtral: every layer is sparse; experts use ``intermediate_size``."""
    spec = build(fields, name, model_type="mixtral", qkv_bias=False, out_bias=False, mlp_bias=False,
                 sliding_window=sliding_window_field(fields, None))
    experts = fields.int("num_local_experts", 8, limit=MAX_COUNT)
    moe = MoeSpec(num_experts=experts,
                  num_experts_per_tok=fields.int("num_experts_per_tok", 2, limit=experts),
                  moe_intermediate_size=spec.intermediate_size, shared_expert_intermediate_size=0,
                  shared_expert_gate=False, router_bias_buffer=False, mlp_bias=False)
    return replace(spec, moe=moe, moe_layers=tuple(range(spec.num_hidden_layers)))


def qwen2_moe(fields: Fields, name: str) -> ModelSpec:
    """Qwen2-MoE / Qwen1.5-MoE: routed experts plus a gated shared expert; q/k/v bias (``qkv_bias``)."""
    bias = fields.bool("qkv_bias", True)
    spec = build(fields, name, model_type="qwen2_moe", qkv_bias=bias, out_bias=False, mlp_bias=False)
    experts = fields.int("num_experts", 60, limit=MAX_COUNT, minimum=0)
    moe = MoeSpec(num_experts=experts,
                  num_experts_per_tok=fields.int("num_experts_per_tok", 4, limit=max(experts, 1)),
                  moe_intermediate_size=fields.int("moe_intermediate_size", 1408),
                  shared_expert_intermediate_size=fields.int("shared_expert_intermediate_size", 5632),
                  shared_expert_gate=True, router_bias_buffer=False, mlp_bias=False)
    return replace(spec, moe=moe, moe_layers=qwen_moe_layers(fields, spec.num_hidden_layers, experts))


def qwen3_moe(fields: Fields, name: str) -> ModelSpec:
    """Qwen3-MoE: routed experts only (no shared expert), q/k norms, ``attention_bias``."""
    bias = fields.bool("attention_bias", False)
    spec = build(fields, name, model_type="qwen3_moe", qkv_bias=bias, out_bias=bias, mlp_bias=False,
                 qk_norm=True)
    experts = fields.int("num_experts", 128, limit=MAX_COUNT, minimum=0)
    moe = MoeSpec(num_experts=experts,
                  num_experts_per_tok=fields.int("num_experts_per_tok", 8, limit=max(experts, 1)),
                  moe_intermediate_size=fields.int("moe_intermediate_size", 768),
                  shared_expert_intermediate_size=0, shared_expert_gate=False, router_bias_buffer=False,
                  mlp_bias=False)
    return replace(spec, moe=moe, moe_layers=qwen_moe_layers(fields, spec.num_hidden_layers, experts))


__all__ = ["mixtral", "qwen2_moe", "qwen3_moe", "QWEN3_DEFAULT_HEAD_DIM"]
