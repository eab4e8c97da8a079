"""Saved activations of the decoder stack, as the Hugging Face modeling code creates them.

Every coefficient below was read from transformers v5.24.0 (``models/<family>/modeling_<family>.py``)
and PyTorch 2.13 autograd (which tensors each op saves for backward), and checked with
``scripts/probe_activations.py`` (FakeTensorMode + MemTracker on the real modeling code).

Symbols (per device, after ring-attention slicing and AutoTP sharding):

    N   tokens of one micro-batch on this device (micro_batch_size × seq_len / ring_size)
    B   sequences (1 when packed), T tokens per sequence
    h   hidden_size                 f   intermediate_size (f' = moe_intermediate_size)
    qd  query width  H × head_dim   kvd key (or value) width  KV × head_dim
    H   query heads                 KV  key/value heads        t  AutoTP degree
    E   routed experts              k   experts per token      r  LoRA rank
    S   B × H × T² attention-score elements (eager only)

What autograd keeps, op by op (the facts everything else is built from):
- ``Linear`` keeps its input only when its weight is trained (or a LoRA adapter reads the same
  input); a frozen base linear keeps nothing.
- ``LlamaRMSNorm.forward``: ``x.to(fp32)`` is kept by ``pow`` (4 B/elem), ``rsqrt`` keeps its fp32
  output (one per row), and ``weight * normed.to(dtype)`` keeps the normed copy only when the weight
  is trained. ``Gemma2RMSNorm`` keeps the normed copy in fp32 instead.
- Rotary ``q * cos + rotate_half(q) * sin`` keeps only cos/sin (shared by all layers).
- SDPA (flash / memory-efficient kernels) and flash-attn keep q, k, v, the output and an fp32
  logsumexp per head and token; the output is laid out [B, T, H, D], so ``o_proj`` reads the same
  storage. Eager attention keeps q, the repeated k and v, the fp32 softmax and its bf16 copy.
- SwiGLU/GeGLU ``down(act(gate(x)) * up(x))`` keeps gate, act, up and the product: 4 × f.
"""

from __future__ import annotations

from functools import lru_cache
from dataclasses import dataclass
from enum import StrEnum

from memplan.dtypes import DType, bytes_for
from memplan.errors import ConfigError
from memplan.model.spec import ModelSpec
from memplan.sources import Source, code


class AttnImpl(StrEnum):
    """Attention implementation of the Hugging Face model (``attn_implementation``)."""

    FLASH_ATTENTION_2 = "flash_attention_2"
    """flash-attn varlen kernels: saves output + logsumexp, no T×T matrix."""
    SDPA = "sdpa"
    """torch scaled_dot_product_attention (flash / memory-efficient backends on GPU)."""
    EAGER = "eager"
    """Explicit matmul + softmax: materialises B×H×T×T scores and probabilities."""


#: transformers release the coefficients were read from.
HF = "huggingface/transformers"
HF_VERSION = "v5.24.0"
#: RMSNorm keeps its input upcast to fp32 (``hidden_states.to(torch.float32)``) and fp32 rsqrt.
NORM_DTYPE = DType.FP32
#: Softmax of eager attention runs in fp32 (``softmax(..., dtype=torch.float32)``).
EAGER_SOFTMAX_DTYPE = DType.FP32
#: flash-attn / SDPA keep the row logsumexp in fp32, one per head and query token.
LSE_DTYPE = DType.FP32
#: Integer index tensors (top-k indices, permutations) are int64.
INDEX_DTYPE = DType.INT64
#: Mixtral's router runs in fp32 (``router_logits.float()``) and its top-k weights stay fp32.
ROUTER_DTYPE = DType.FP32
#: Families whose RMSNorm multiplies in fp32 by ``1 + weight`` (Gemma style).
GEMMA_NORM_FAMILIES = frozenset({"gemma", "gemma2", "gemma3_text"})
#: MoE families whose router renormalises the top-k weights (``norm_topk_prob``) by default and
#: whose top-k weights stay fp32 (Mixtral) or are cast to the model dtype (Qwen).
MOE_ROUTER_RENORMALISES = {"mixtral": True, "qwen3_moe": True, "qwen2_moe": False}
MOE_FP32_WEIGHTS = frozenset({"mixtral", "deepseek_v2", "deepseek_v3"})
#: DeepSeek routers run in fp32 on an fp32 copy of the hidden states, with group-limited top-k.
DEEPSEEK_ROUTER_FAMILIES = frozenset({"deepseek_v2", "deepseek_v3"})
#: ``n_group`` / ``topk_group`` of DeepSeek-V3's config (not in ModelSpec; a few bytes per token).
DEEPSEEK_N_GROUP = 8
DEEPSEEK_TOPK_GROUP = 4


class LinearModule(StrEnum):
    """A linear layer of a decoder layer that LoRA can adapt (peft ``target_modules`` names)."""

    Q_PROJ = "q_proj"
    """Query projection (``qkv_proj`` in fused families)."""
    K_PROJ = "k_proj"
    """Key projection."""
    V_PROJ = "v_proj"
    """Value projection."""
    O_PROJ = "o_proj"
    """Attention output projection."""
    GATE_PROJ = "gate_proj"
    """MLP gate projection (``gate_up_proj`` in fused families; shared experts too)."""
    UP_PROJ = "up_proj"
    """MLP up projection."""
    DOWN_PROJ = "down_proj"
    """MLP down projection."""


#: peft ``target_modules="all-linear"`` (OpenRLHF's default): every ``nn.Linear`` but the LM head.
#: MoE experts are 3-D parameters, not ``nn.Linear``, and are not adapted.
ALL_LINEAR = frozenset(LinearModule)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivationConfig:
    """The resolved inputs of the activation formulas for one model's micro-step."""

    micro_batch_size: int
    """Sequences per forward (DPO/RM: already doubled for chosen + rejected)."""
    seq_len: int
    """Tokens per sequence (padded length; with packing, the tokens packed per sequence slot)."""
    attn_impl: AttnImpl
    """Attention implementation the Hugging Face model runs."""
    gradient_checkpointing: bool = False
    """HF non-reentrant checkpointing of every decoder layer."""
    packing: bool = False
    """Padding removed (samples packed): one row of micro_batch_size × seq_len tokens, varlen flash."""
    ring_size: int = 1
    """Ring attention degree: the sequence is split over this many ranks."""
    ds_tp_size: int = 1
    """Tensor-parallel degree (DeepSpeed AutoTP): attention heads and MLP width are split."""
    compute_dtype: DType = DType.BF16
    """Dtype of activations (the model's compute dtype)."""
    lora_rank: int = 0
    """LoRA rank; 0 means full fine-tuning (when ``trainable``)."""
    lora_targets: frozenset[LinearModule] = ALL_LINEAR
    """Linear layers carrying an adapter (ignored without LoRA)."""
    trainable: bool = True
    """False for a frozen model run without gradients (reference, reward, teacher, make-experience)."""

    def __post_init__(self) -> None:
        for name in ("micro_batch_size", "seq_len", "ring_size", "ds_tp_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"activations.{name}", "must be >= 1")
        if self.lora_rank < 0:
            raise ConfigError("activations.lora_rank", "must be >= 0")
        if (self.packing or self.ring_size > 1) and self.attn_impl == AttnImpl.EAGER:
            raise ConfigError("activations.attn_impl", "packing and ring attention need flash_attention_2")

    @property
    def lora(self) -> bool:
        """True when a LoRA adapter is trained over a frozen base."""
        return self.trainable and self.lora_rank > 0

    def saves_input(self, module: LinearModule) -> bool:
        """Whether autograd keeps this linear's input (trained weight or LoRA adapter)."""
        return self.trainable and (self.lora_rank == 0 or module in self.lora_targets)


def hf_source(family: str, detail: str) -> Source:
    """Citation of a modeling file of the installed transformers."""
    return code(f"{HF}:src/transformers/models/{family}/modeling_{family}.py@{HF_VERSION}", detail)


def num_tokens(cfg: ActivationConfig) -> int:
    """Tokens one device processes per micro-batch: N = ceil(B·T / ring_size).

    Source: OpenRLHF/OpenRLHF:openrlhf/models/ring_attn_utils.py@3c3be62 (``unpad_and_slice_tensor``
    pads the packed row to a multiple of the ring size and keeps this rank's slice).
    Checked by: tests/memory/test_activations.py::test_num_tokens_ring
    """
    total = cfg.micro_batch_size * cfg.seq_len
    return -(-total // cfg.ring_size)


def _rows(cfg: ActivationConfig) -> tuple[int, int]:
    """(B, T) of the attention score matrix (eager only, so never packed or ring-sliced)."""
    return cfg.micro_batch_size, cfg.seq_len


def _split(width: int, cfg: ActivationConfig) -> int:
    """Per-rank share of a tensor-parallel width (heads or MLP columns), AutoTP splits evenly."""
    return -(-width // cfg.ds_tp_size)


def _gemma_norm(spec: ModelSpec) -> bool:
    return spec.model_type in GEMMA_NORM_FAMILIES


def rmsnorm_saved_bytes(spec: ModelSpec, cfg: ActivationConfig, *, rows: int, width: int,
                        output_saved: bool, weight_trained: bool) -> int:
    """Bytes one RMSNorm over ``rows`` × ``width`` keeps for backward.

        Llama style: 4·rows·width (fp32 input) + 4·rows (rsqrt)
                     + 2·rows·width if the weight is trained (normed, compute dtype)
        Gemma style: the normed copy is fp32 (4·rows·width) instead
        + 2·rows·width when the next op keeps the output (a trained linear's input)

    Source: hf_source("llama", "LlamaRMSNorm.forward"); hf_source("gemma2", "Gemma2RMSNorm.forward").
    Assumes: autograd's ``mul`` keeps an operand only when the other one needs a gradient.
    Checked by: tests/memory/test_activations.py::test_llama_layer_by_hand
    """
    if not cfg.trainable:
        return 0
    numel = rows * width
    total = bytes_for(numel, NORM_DTYPE) + bytes_for(rows, NORM_DTYPE)
    if weight_trained:
        total += bytes_for(numel, NORM_DTYPE if _gemma_norm(spec) else cfg.compute_dtype)
    if output_saved:
        total += bytes_for(numel, cfg.compute_dtype)
    return total


def _full_finetune(cfg: ActivationConfig) -> bool:
    return cfg.trainable and cfg.lora_rank == 0


def attention_saved_bytes(spec: ModelSpec, cfg: ActivationConfig) -> int:
    """q/k/v/output (+ logsumexp, + q/k norms) one attention layer keeps, without the T² scores.

        flash/sdpa: N·(2·qd + 2·kvd (k) + 2·kvd (v) + 2·qd (out) + 4·H (lse))
        eager:      N·(2·qd (q) + 2·H·hd (k repeated) + 2·H·hd (v repeated) + 2·qd (o_proj input))
        fused qkv:  v is a view of the qkv output, which stays whole: 2·(qd + 2·kvd) instead of 2·kvd
        q/k norm:   RMSNorm over head_dim on N·H and N·KV rows (its output feeds rotary, not kept)
        AutoTP:     every width and head count / t

    Source: hf_source("llama", "LlamaAttention.forward, eager_attention_forward");
    ``integrations/sdpa_attention.py::sdpa_attention_forward`` (GQA via ``enable_gqa``, no repeat);
    hf_source("qwen3", "Qwen3Attention.forward (q_norm, k_norm)").
    Assumes: no padding in the batch (HF then passes no mask and SDPA keeps kv-width k/v). With
    flash_attention_2 and padded rows (B > 1, no packing) HF unpads q/k/v and pads the output back:
    one more 2·qd per token, added here. MLA (DeepSeek): see mla_attention_saved_bytes.
    Checked by: tests/memory/test_activations.py::test_llama_layer_by_hand, ::test_phi3_fused_v
    """
    if not cfg.trainable:
        return 0
    if spec.mla is not None:
        return mla_attention_saved_bytes(spec, cfg)
    n, dt = num_tokens(cfg), cfg.compute_dtype
    heads, kv_heads = _split(spec.num_attention_heads, cfg), _split(spec.num_key_value_heads, cfg)
    qd, kvd = _split(spec.q_dim, cfg), _split(spec.kv_dim, cfg)
    vd = _split(spec.num_key_value_heads * _v_head_dim(spec), cfg)
    if cfg.attn_impl == AttnImpl.EAGER:
        rep_k = heads * _qk_head_dim(spec) if kv_heads < heads else kvd
        rep_v = heads * _v_head_dim(spec) if kv_heads < heads else vd
        out_in = heads * _v_head_dim(spec) if cfg.saves_input(LinearModule.O_PROJ) else 0
        total = bytes_for(n * (qd + rep_k + rep_v + out_in), dt)
    else:
        v_store = qd + kvd + vd if spec.fused_qkv else vd
        out = heads * _v_head_dim(spec)
        total = bytes_for(n * (qd + kvd + v_store + out), dt) + bytes_for(n * heads, LSE_DTYPE)
        if cfg.attn_impl == AttnImpl.FLASH_ATTENTION_2 and cfg.micro_batch_size > 1 and not cfg.packing:
            total += bytes_for(n * out, dt)
    if spec.qk_norm:
        trained = _full_finetune(cfg)
        total += rmsnorm_saved_bytes(spec, cfg, rows=n * heads, width=spec.head_dim, output_saved=False,
                                     weight_trained=trained)
        total += rmsnorm_saved_bytes(spec, cfg, rows=n * kv_heads, width=spec.head_dim, output_saved=False,
                                     weight_trained=trained)
    return total


def mla_attention_saved_bytes(spec: ModelSpec, cfg: ActivationConfig) -> int:
    """DeepSeek multi-head latent attention (``DeepseekV3Attention.forward``, ``expand_kv``).

        q_a_layernorm over q_lora_rank (output kept by q_b_proj), kv_a_layernorm over kv_lora_rank
        (output kept by kv_b_proj); the kernel keeps query and key [N, H, nope + rope] (both new
        tensors: ``cat`` and ``new_empty`` + ``copy_``), the value, a view of kv_b_proj's output
        [N, H, nope + v] which stays whole, the output [N, H, v] and the fp32 logsumexp.
        Eager keeps fp32 softmax + bf16 probs (eager_scores_saved_bytes) and the o_proj input instead
        of the output and logsumexp.

    Source: hf_source("deepseek_v3", "DeepseekV3Attention.forward, expand_kv").
    Assumes: on CUDA, SDPA/flash run a fused kernel; a CPU trace with SDPA falls back to the math
    kernel (q/k and v head dims differ), which keeps fp32 q, k, v and the T² probabilities instead.
    Checked by: scripts/probe_activations.py (tiny-deepseek-eager; the norms and projections match
    the SDPA trace exactly, the kernel part does not, see above)
    """
    mla = spec.mla
    assert mla is not None
    n, dt = num_tokens(cfg), cfg.compute_dtype
    heads = _split(spec.num_attention_heads, cfg)
    qk = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    trained = _full_finetune(cfg)
    total = 0
    if mla.q_lora_rank is not None:
        total += rmsnorm_saved_bytes(spec, cfg, rows=n, width=mla.q_lora_rank, weight_trained=trained,
                                     output_saved=cfg.saves_input(LinearModule.Q_PROJ))
    total += rmsnorm_saved_bytes(spec, cfg, rows=n, width=mla.kv_lora_rank, weight_trained=trained,
                                 output_saved=cfg.saves_input(LinearModule.K_PROJ))
    value_store = heads * (mla.qk_nope_head_dim + mla.v_head_dim)
    if cfg.attn_impl == AttnImpl.EAGER:
        out_in = heads * mla.v_head_dim if cfg.saves_input(LinearModule.O_PROJ) else 0
        return total + bytes_for(n * (2 * heads * qk + value_store + out_in), dt)
    return (total + bytes_for(n * (2 * heads * qk + value_store + heads * mla.v_head_dim), dt)
            + bytes_for(n * heads, LSE_DTYPE))


def _qk_head_dim(spec: ModelSpec) -> int:
    return spec.q_dim // spec.num_attention_heads


def _v_head_dim(spec: ModelSpec) -> int:
    return spec.mla.v_head_dim if spec.mla is not None else spec.head_dim


def score_elements(spec: ModelSpec, cfg: ActivationConfig) -> int:
    """S = B·H·T²: elements of one layer's eager attention-score matrix on this device (H / t)."""
    b, t = _rows(cfg)
    return b * _split(spec.num_attention_heads, cfg) * t * t


def eager_scores_saved_bytes(spec: ModelSpec, cfg: ActivationConfig, layer_idx: int) -> int:
    """The T² tensors eager attention keeps: fp32 softmax + its bf16 copy (+ Gemma 2 tanh).

        bytes = S·(4 + 2) (+ 2·S with attention-logit soft-capping: ``tanh`` keeps its output)

    Dropout is 0 in every family here, so no mask is kept. Sliding-window layers still build the
    full T × T matrix (the window is a mask).
    Source: hf_source("llama", "eager_attention_forward"); hf_source("gemma2", "eager_attention_forward").
    Checked by: tests/memory/test_activations.py::test_eager_scores_by_hand
    """
    del layer_idx  # every layer's matrix is T × T, sliding or not
    if not cfg.trainable or cfg.attn_impl != AttnImpl.EAGER:
        return 0
    s = score_elements(spec, cfg)
    total = bytes_for(s, EAGER_SOFTMAX_DTYPE) + bytes_for(s, cfg.compute_dtype)
    if spec.attn_logit_softcapping is not None:
        total += bytes_for(s, cfg.compute_dtype)
    return total


def dense_mlp_saved_bytes(spec: ModelSpec, cfg: ActivationConfig, width: int | None = None) -> int:
    """A gated MLP ``down(act(gate(x)) * up(x))``: gate, act and up (+ product if down saves).

        bytes = N·(2f (gate, kept by act) + 2f (act) + 2f (up) + 2f (product, kept by down_proj))

    A fused ``gate_up_proj`` (Phi-3) keeps the whole 2f output, the same bytes.
    Source: hf_source("llama", "LlamaMLP.forward").
    Checked by: tests/memory/test_activations.py::test_llama_layer_by_hand
    """
    if not cfg.trainable:
        return 0
    f = _split(spec.intermediate_size if width is None else width, cfg)
    kept = 3 + (1 if cfg.saves_input(LinearModule.DOWN_PROJ) else 0)
    return bytes_for(num_tokens(cfg) * f * kept, cfg.compute_dtype)


def moe_saved_bytes(spec: ModelSpec, cfg: ActivationConfig) -> int:
    """Router and routed experts (``grouped_mm``, transformers' default experts implementation).

        router:  N·(4E (fp32 softmax) + 8k (top-k indices)) [+ N·(4k + 4) when renormalised]
        experts: N·k·(2h (gathered input) + 8f' (gate_up output 4f', act 2f', product 2f')
                      + 2h (down output, kept by the weighting mul) + 4 or 2 (its weight)
                      + 3 × 8 (sort permutation, gather index, inverse permutation))
        shared:  a dense MLP of the shared width + 2h (its output, kept by the gate mul) + 2 (gate)

    Source: hf_source("mixtral", "MixtralTopKRouter.forward, MixtralSparseMoeBlock.forward");
    ``integrations/moe.py::grouped_mm_experts_forward`` @v5.24.0; hf_source("qwen2_moe",
    "Qwen2MoeSparseMoeBlock.forward"); hf_source("deepseek_v3", "DeepseekV3TopkRouter.forward").
    Assumes: with LoRA the experts stay frozen (3-D parameters, not ``nn.Linear``), so their input and
    product are not kept; DeepSeek's sigmoid
    router with group-limited top-k is counted like a softmax router.
    Checked by: tests/memory/test_activations.py::test_mixtral_moe_by_hand
    """
    moe = spec.moe
    if moe is None or not cfg.trainable:
        return 0
    n, k, e, h = num_tokens(cfg), moe.num_experts_per_tok, moe.num_experts, spec.hidden_size
    dt = cfg.compute_dtype
    renorm = MOE_ROUTER_RENORMALISES.get(spec.model_type, True)
    weight_dt = ROUTER_DTYPE if spec.model_type in MOE_FP32_WEIGHTS else dt
    router = bytes_for(n * e, ROUTER_DTYPE) + bytes_for(n * k, INDEX_DTYPE)
    if renorm:
        router += bytes_for(n * k + n, ROUTER_DTYPE)
    if spec.model_type in DEEPSEEK_ROUTER_FAMILIES:
        # fp32 router input, group top-2 and group top-k indices, the group mask
        router += bytes_for(n * h, ROUTER_DTYPE) + bytes_for(n * e, DType.BOOL)
        router += bytes_for(n * (2 * DEEPSEEK_N_GROUP + DEEPSEEK_TOPK_GROUP), INDEX_DTYPE)
    fe = _split(moe.moe_intermediate_size, cfg)
    # gathered input and product are kept only for the (trained) expert weights' gradients
    kept = (h + fe if _full_finetune(cfg) else 0) + 3 * fe + h
    experts = bytes_for(n * k * kept, dt) + bytes_for(n * k, weight_dt) + bytes_for(3 * n * k, INDEX_DTYPE)
    shared = 0
    if moe.shared_expert_intermediate_size:
        shared = dense_mlp_saved_bytes(spec, cfg, moe.shared_expert_intermediate_size)
        if moe.shared_expert_gate:
            shared += bytes_for(n * h + n, dt)
    return router + experts + shared


def lora_saved_bytes(spec: ModelSpec, cfg: ActivationConfig, layer_idx: int) -> int:
    """What peft's LoRA adds: each adapter's ``lora_B`` keeps the A-output, N × r.

        bytes = 2·N·r per adapted linear (its input x is the base layer's input, kept once)

    Source: huggingface/peft:src/peft/tuners/lora/layer.py@v0.21.0 (``Linear.forward``:
    ``lora_B(lora_A(dropout(x))) * scaling``; dropout 0 is ``nn.Identity``).
    Assumes: LoRA dropout 0 (OpenRLHF's default; dropout > 0 keeps a mask and a copy of x);
    adapters in the model dtype (DeepSpeed casts every parameter to bf16).
    Checked by: tests/memory/test_activations.py::test_lora_layer_by_hand
    """
    if not cfg.lora:
        return 0
    targets = set(cfg.lora_targets)
    routed_only = spec.moe is None or not spec.moe.shared_expert_intermediate_size
    if spec.is_moe and layer_idx in spec.moe_layers and routed_only:
        targets -= {LinearModule.GATE_PROJ, LinearModule.UP_PROJ, LinearModule.DOWN_PROJ}
    if spec.fused_qkv:
        targets -= {LinearModule.K_PROJ, LinearModule.V_PROJ}
    return bytes_for(num_tokens(cfg) * cfg.lora_rank * len(targets), cfg.compute_dtype)


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerSaved:
    """Bytes one decoder layer keeps for backward, by module."""

    norms: int
    """The RMSNorms around attention and MLP (2, Gemma 2/3: 4)."""
    attention: int
    """q/k/v after rotary, output, logsumexp, q/k norms."""
    scores: int
    """Eager only: the T² softmax (fp32) and its copy."""
    mlp: int
    """Dense MLP or router + experts (+ shared expert)."""
    lora: int
    """LoRA A-outputs."""

    @property
    def total(self) -> int:
        """All bytes the layer keeps."""
        return self.norms + self.attention + self.scores + self.mlp + self.lora


def _mlp_reads_input(spec: ModelSpec, cfg: ActivationConfig, layer_idx: int) -> bool:
    if spec.is_moe and layer_idx in spec.moe_layers:
        return _full_finetune(cfg) or (cfg.lora and spec.moe is not None
                                       and spec.moe.shared_expert_intermediate_size > 0
                                       and bool(cfg.lora_targets & {LinearModule.GATE_PROJ, LinearModule.UP_PROJ}))
    return cfg.saves_input(LinearModule.GATE_PROJ) or cfg.saves_input(LinearModule.UP_PROJ)


def norms_saved_bytes(spec: ModelSpec, cfg: ActivationConfig, layer_idx: int) -> int:
    """The layer's RMSNorms: input norm (output read by q/k/v), post-attention norm (read by the MLP);
    Gemma 2/3 add post-attention and post-feedforward norms whose outputs only feed the residual add.

    Source: hf_source("llama", "LlamaDecoderLayer.forward"); hf_source("gemma2", "Gemma2DecoderLayer.forward").
    Checked by: tests/memory/test_activations.py::test_gemma2_layer_by_hand
    """
    n, h, trained = num_tokens(cfg), spec.hidden_size, _full_finetune(cfg)
    qkv_saves = any(cfg.saves_input(m) for m in (LinearModule.Q_PROJ, LinearModule.K_PROJ, LinearModule.V_PROJ))
    total = rmsnorm_saved_bytes(spec, cfg, rows=n, width=h, output_saved=qkv_saves, weight_trained=trained)
    total += rmsnorm_saved_bytes(spec, cfg, rows=n, width=h, output_saved=_mlp_reads_input(spec, cfg, layer_idx),
                                 weight_trained=trained)
    for _ in range(spec.norms_per_layer - 2):
        total += rmsnorm_saved_bytes(spec, cfg, rows=n, width=h, output_saved=False, weight_trained=trained)
    return total


@lru_cache(maxsize=4096)
def layer_saved(spec: ModelSpec, cfg: ActivationConfig, layer_idx: int) -> LayerSaved:
    """Everything decoder layer ``layer_idx`` keeps for backward when it is not checkpointed.

    Source: the functions above (one per module).
    Checked by: scripts/probe_activations.py (per-layer bytes = trace(L=2) − trace(L=1), exact for
    llama, qwen2, qwen3, mistral, mixtral, gemma2 shapes); tests/memory/test_activations.py
    """
    moe_layer = spec.is_moe and layer_idx in spec.moe_layers
    return LayerSaved(
        norms=norms_saved_bytes(spec, cfg, layer_idx),
        attention=attention_saved_bytes(spec, cfg),
        scores=eager_scores_saved_bytes(spec, cfg, layer_idx),
        mlp=moe_saved_bytes(spec, cfg) if moe_layer else dense_mlp_saved_bytes(spec, cfg),
        lora=lora_saved_bytes(spec, cfg, layer_idx),
    )


def checkpoint_bytes(spec: ModelSpec, cfg: ActivationConfig) -> int:
    """What a checkpointed layer keeps: its input hidden states, N × h in the compute dtype.

    Source: ``modeling_layers.py::GradientCheckpointingLayer.__call__`` @v5.24.0 with
    ``torch.utils.checkpoint(use_reentrant=False)``: the saved-tensor hooks store nothing; the
    inputs stay referenced for the recomputation.
    Checked by: tests/memory/test_activations.py::test_checkpointing_keeps_layer_inputs
    """
    if not cfg.trainable:
        return 0
    return bytes_for(num_tokens(cfg) * spec.hidden_size, cfg.compute_dtype)


def stack_saved_bytes(spec: ModelSpec, cfg: ActivationConfig) -> int:
    """All decoder layers at the end of forward: Σ layer_saved, or L × checkpoint with checkpointing.

    Checked by: tests/memory/test_activations.py::test_checkpointing_never_raises_activations
    """
    if cfg.gradient_checkpointing:
        return spec.num_hidden_layers * checkpoint_bytes(spec, cfg)
    return sum(layer_saved(spec, cfg, i).total for i in range(spec.num_hidden_layers))


def rotary_saved_bytes(spec: ModelSpec, cfg: ActivationConfig) -> int:
    """cos and sin [B, T, head_dim] in the compute dtype, computed once and kept by every layer.

    Source: hf_source("llama", "LlamaRotaryEmbedding.forward, apply_rotary_pos_emb").
    Checked by: scripts/probe_activations.py
    """
    if not cfg.trainable:
        return 0
    rope_dim = spec.mla.qk_rope_head_dim if spec.mla is not None else spec.head_dim
    return 2 * bytes_for(num_tokens(cfg) * rope_dim, cfg.compute_dtype)


def final_norm_saved_bytes(spec: ModelSpec, cfg: ActivationConfig, *, head_trained: bool) -> int:
    """The final RMSNorm; its output is kept by the LM head (or value head) when that head is trained.

    Source: hf_source("llama", "LlamaModel.forward (self.norm), LlamaForCausalLM.forward (lm_head)").
    Checked by: scripts/probe_activations.py
    """
    return rmsnorm_saved_bytes(spec, cfg, rows=num_tokens(cfg), width=spec.hidden_size,
                               output_saved=head_trained, weight_trained=_full_finetune(cfg))


def embedding_output_bytes(spec: ModelSpec, cfg: ActivationConfig) -> int:
    """With LoRA, OpenRLHF calls ``enable_input_require_grads``: a forward hook makes the embedding
    output a leaf that requires grad, so autograd's AccumulateGrad node keeps it (N × h) until the
    graph is freed; a fully trained or frozen model frees it after the first layer.

    Source: huggingface/transformers:src/transformers/modeling_utils.py@v5.24.0
    (``enable_input_require_grads``); OpenRLHF/OpenRLHF:openrlhf/models/actor.py@3c3be62 (LoRA branch).
    Checked by: scripts/probe_activations.py (tiny-llama-lora: constant N·h·2 offset at any depth)
    """
    if not cfg.lora or cfg.gradient_checkpointing:  # checkpointed: it is layer 0's checkpoint already
        return 0
    return bytes_for(num_tokens(cfg) * spec.hidden_size, cfg.compute_dtype)
