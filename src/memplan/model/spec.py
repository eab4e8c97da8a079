"""ModelSpec: the architecture of a causal language model, in Hugging Face field names.

A ModelSpec is built once from a ``config.json`` by a family adapter (``model/families``) with every
default resolved, so nothing downstream reads a config dict or guesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from memplan.dtypes import DType


class AttentionType(StrEnum):
    """Which attention a layer runs."""

    FULL = "full_attention"
    """Causal attention over the whole sequence."""
    SLIDING = "sliding_attention"
    """Causal attention limited to ``sliding_window`` previous tokens."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MlaSpec:
    """DeepSeek multi-head latent attention (arXiv:2405.04434, §2.1)."""

    q_lora_rank: int | None
    """Rank of the query down-projection; ``None`` means a plain ``q_proj``."""
    kv_lora_rank: int
    """Rank of the joint key/value latent (what the KV cache stores)."""
    qk_nope_head_dim: int
    """Per-head query/key dimension without rotary embedding."""
    qk_rope_head_dim: int
    """Per-head query/key dimension carrying the decoupled rotary embedding."""
    v_head_dim: int
    """Per-head value dimension."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MoeSpec:
    """A mixture-of-experts MLP block as transformers builds it (experts fused into 3-D tensors)."""

    num_experts: int
    """Routed experts per MoE layer."""
    num_experts_per_tok: int
    """Experts each token is routed to (top-k)."""
    moe_intermediate_size: int
    """Intermediate width of one routed expert."""
    shared_expert_intermediate_size: int
    """Intermediate width of the always-on shared expert MLP; 0 without one."""
    shared_expert_gate: bool
    """Qwen2-MoE's ``Linear(hidden, 1)`` gate on the shared expert."""
    router_bias_buffer: bool
    """DeepSeek-V3's ``e_score_correction_bias`` buffer (fp32, ``num_experts``)."""
    mlp_bias: bool
    """Bias on the shared-expert projections (DeepSeek-V2 ``mlp_bias``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """The resolved architecture of one causal LM."""

    name: str
    """Display name (preset name, hub id or path)."""
    model_type: str
    """Hugging Face ``model_type``."""
    hidden_size: int
    """Model width h."""
    intermediate_size: int
    """Dense MLP width f (dense layers of MoE models too)."""
    num_hidden_layers: int
    """Decoder layers L."""
    num_attention_heads: int
    """Query heads."""
    num_key_value_heads: int
    """Key/value heads (grouped-query attention when fewer than query heads)."""
    head_dim: int
    """Per-head dimension of queries and keys (and values, except MLA)."""
    vocab_size: int
    """Vocabulary V: rows of the embedding and of the LM head."""
    tie_word_embeddings: bool
    """LM head shares the embedding matrix."""
    attention_bias: bool
    """Bias on the q/k/v projections."""
    attention_out_bias: bool
    """Bias on the output projection."""
    mlp_bias: bool
    """Bias on the dense MLP projections."""
    qk_norm: bool
    """RMSNorm over the head dim of queries and keys (Qwen3, Gemma 3)."""
    norms_per_layer: int
    """RMSNorms around attention and MLP per layer (2; Gemma 2/3 have 4)."""
    fused_qkv: bool
    """One ``qkv_proj`` and one ``gate_up_proj`` (Phi-3) instead of separate projections."""
    hidden_act: str
    """MLP activation (``silu`` → SwiGLU, ``gelu_pytorch_tanh`` → GeGLU)."""
    max_position_embeddings: int
    """Longest context the config declares."""
    layer_types: tuple[AttentionType, ...]
    """Attention type of every layer (full or sliding)."""
    sliding_window: int | None
    """Window of sliding-attention layers; ``None`` when no layer slides."""
    rope_scaling_type: str | None
    """``rope_scaling.rope_type`` (llama3, yarn, linear, dynamic...); ``None`` for plain RoPE."""
    rope_scaling_factor: float | None
    """``rope_scaling.factor``."""
    attn_logit_softcapping: float | None
    """Gemma 2 tanh soft-capping of attention scores (forces eager-style score tensors)."""
    final_logit_softcapping: float | None
    """Gemma 2 tanh soft-capping of the output logits (an extra vocab-sized temporary)."""
    torch_dtype: DType | None
    """Checkpoint dtype the config declares."""
    mla: MlaSpec | None
    """Multi-head latent attention (DeepSeek), else ``None`` for standard (grouped-query) attention."""
    moe: MoeSpec | None
    """The MoE block, else ``None`` for a dense model."""
    moe_layers: tuple[int, ...]
    """Indices of the layers whose MLP is the MoE block."""
    notes: tuple[str, ...] = ()
    """What the adapter ignored or assumed (unknown keys, remote-code hints)."""

    @property
    def is_moe(self) -> bool:
        """True when some layer routes tokens to experts."""
        return self.moe is not None and bool(self.moe_layers)

    @property
    def q_dim(self) -> int:
        """Width of all query heads together (``num_attention_heads × head_dim``; MLA: qk head dim)."""
        if self.mla is not None:
            return self.num_attention_heads * (self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim)
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of all key (or value) heads together (``num_key_value_heads × head_dim``)."""
        return self.num_key_value_heads * self.head_dim
