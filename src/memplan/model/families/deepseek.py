"""DeepSeek-V2 and DeepSeek-V3: multi-head latent attention and MoE with shared experts.

MLA (arXiv:2405.04434 §2.1): queries through a rank-``q_lora_rank`` bottleneck (or a plain
``q_proj`` when it is null), keys and values from one ``kv_lora_rank`` latent plus a shared rotary
key of ``qk_rope_head_dim``. Layers ``< first_k_dense_replace`` have a dense MLP; the rest hold routed
experts plus ``n_shared_experts`` shared ones fused into one MLP of width
``moe_intermediate_size × n_shared_experts``.
Source: huggingface/transformers v5.24.0 ``models/deepseek_v2``, ``models/deepseek_v3``.
"""

from __future__ import annotations

from dataclasses import replace

from memplan.model.families.dense import build
from memplan.model.fields import MAX_COUNT, Fields
from memplan.model.spec import MlaSpec, ModelSpec, MoeSpec

#: transformers defaults (configuration_deepseek_v2.py / configuration_deepseek_v3.py, v5.24.0).
DEFAULTS = {
    "deepseek_v2": {"n_routed_experts": 64, "num_experts_per_tok": None, "moe_intermediate_size": 1407,
                    "n_shared_experts": 2, "first_k_dense_replace": 0, "q_lora_rank": 1536},
    "deepseek_v3": {"n_routed_experts": 256, "num_experts_per_tok": 8, "moe_intermediate_size": 2048,
                    "n_shared_experts": 1, "first_k_dense_replace": 3, "q_lora_rank": 1536},
}
#: MLA dimensions shared by both defaults.
MLA_DEFAULTS = {"kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128}


def _mla(fields: Fields, q_lora_default: int) -> MlaSpec:
    if "q_lora_rank" in fields._config:
        q_lora = fields.optional_int("q_lora_rank")
    else:
        q_lora = q_lora_default
    return MlaSpec(q_lora_rank=q_lora,
                   kv_lora_rank=fields.int("kv_lora_rank", MLA_DEFAULTS["kv_lora_rank"]),
                   qk_nope_head_dim=fields.int("qk_nope_head_dim", MLA_DEFAULTS["qk_nope_head_dim"]),
                   qk_rope_head_dim=fields.int("qk_rope_head_dim", MLA_DEFAULTS["qk_rope_head_dim"]),
                   v_head_dim=fields.int("v_head_dim", MLA_DEFAULTS["v_head_dim"]))


def _deepseek(fields: Fields, name: str, model_type: str) -> ModelSpec:
    defaults = DEFAULTS[model_type]
    attention_bias = fields.bool("attention_bias", False)
    mlp_bias = fields.bool("mlp_bias", False) if model_type == "deepseek_v2" else False
    mla = _mla(fields, defaults["q_lora_rank"])
    spec = build(fields, name, model_type=model_type, qkv_bias=attention_bias, out_bias=attention_bias,
                 mlp_bias=mlp_bias, default_head_dim=mla.qk_nope_head_dim + mla.qk_rope_head_dim)
    # MLA expands the latent to one key/value per query head; the config's num_key_value_heads is unused.
    spec = replace(spec, num_key_value_heads=spec.num_attention_heads,
                   head_dim=mla.qk_nope_head_dim + mla.qk_rope_head_dim)
    experts = fields.int("n_routed_experts", defaults["n_routed_experts"], limit=MAX_COUNT)
    top_k = fields.int("num_experts_per_tok", defaults["num_experts_per_tok"], limit=experts)
    moe_width = fields.int("moe_intermediate_size", defaults["moe_intermediate_size"])
    shared = fields.int("n_shared_experts", defaults["n_shared_experts"], limit=MAX_COUNT, minimum=0)
    first_dense = fields.int("first_k_dense_replace", defaults["first_k_dense_replace"], limit=MAX_COUNT,
                             minimum=0)
    notes = list(spec.notes)
    freq = fields.int("moe_layer_freq", 1, limit=MAX_COUNT)
    if freq != 1:
        notes.append(f"moe_layer_freq={freq} is ignored, as transformers' DeepSeek code ignores it "
                     "(every layer from first_k_dense_replace on is MoE)")
    moe = MoeSpec(num_experts=experts, num_experts_per_tok=top_k, moe_intermediate_size=moe_width,
                  shared_expert_intermediate_size=moe_width * shared, shared_expert_gate=False,
                  router_bias_buffer=model_type == "deepseek_v3", mlp_bias=mlp_bias)
    return replace(spec, mla=mla, moe=moe, notes=tuple(notes),
                   moe_layers=tuple(range(first_dense, spec.num_hidden_layers)))


def deepseek_v2(fields: Fields, name: str) -> ModelSpec:
    """DeepSeek-V2 / V2-Lite (q_lora_rank null) / V2.5."""
    return _deepseek(fields, name, "deepseek_v2")


def deepseek_v3(fields: Fields, name: str) -> ModelSpec:
    """DeepSeek-V3 / R1: adds the router's ``e_score_correction_bias`` buffer."""
    return _deepseek(fields, name, "deepseek_v3")
