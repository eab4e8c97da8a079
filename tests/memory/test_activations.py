"""Saved activations and the forward/backward transient composition, checked by hand and by trace.

Hand arithmetic is written out per token (bytes per token per layer) and then multiplied; the
coefficients come from the module docstrings of memplan.memory.activations / transient.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memplan.errors import ConfigError
from memplan.memory.activations import AttnImpl
from memplan.memory import activations as act
from memplan.memory import transient as tr
from memplan.memory.activations import ActivationConfig, LinearModule
from memplan.memory.breakdown import Category, Phase
from memplan.memory.logits import Head, LogProbImpl
from memplan.model import load_model_spec

LLAMA2 = load_model_spec("llama-2-7b")   # h 4096, f 11008, 32 heads, 32 kv heads, head_dim 128, V 32000
LLAMA3 = load_model_spec("llama-3-8b")   # h 4096, f 14336, 32 heads, 8 kv heads, V 128256
MIXTRAL = load_model_spec("mixtral-8x7b")  # E 8, k 2, f' 14336
GEMMA2 = load_model_spec("gemma-2-9b")   # h 3584, f 14336, 16 heads, 8 kv, head_dim 256, 4 norms, tied
PHI3 = load_model_spec("phi-3-mini")     # h 3072, fused qkv, 32 heads of 96


def cfg(**kw: object) -> ActivationConfig:
    base = dict(micro_batch_size=1, seq_len=4096, attn_impl=AttnImpl.SDPA)
    return ActivationConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_num_tokens_ring() -> None:
    # 2 × 4097 = 8194 tokens over 4 ring ranks: ceil(8194 / 4) = 2049
    assert act.num_tokens(cfg(micro_batch_size=2, seq_len=4097, ring_size=4, packing=True,
                              attn_impl=AttnImpl.FLASH_ATTENTION_2)) == 2049


def test_packing_with_eager_is_rejected() -> None:
    with pytest.raises(ConfigError, match="attn_impl"):
        cfg(packing=True, attn_impl=AttnImpl.EAGER)


def test_llama_layer_by_hand() -> None:
    # per token, full fine-tuning, SDPA (bytes):
    #   2 RMSNorms × (4h fp32 input + 4 rsqrt + 2h normed + 2h output) = 2 × (16384 + 4 + 8192 + 8192) = 65544
    #   attention: 2·4096 q + 2·4096 k + 2·4096 v + 2·4096 out + 4·32 lse        = 32896
    #   MLP: gate, act, up, product: 4 × 2 × 11008                               = 88064
    layer = act.layer_saved(LLAMA2, cfg(), 0)
    assert (layer.norms, layer.attention, layer.mlp, layer.scores, layer.lora) == (
        65544 * 4096, 32896 * 4096, 88064 * 4096, 0, 0)
    assert layer.total == 186504 * 4096 == 763_920_384


def test_llama3_gqa_keeps_kv_width() -> None:
    # SDPA uses enable_gqa (no mask): k and v at 8 × 128 = 1024 wide
    # 2·4096 + 2·1024 + 2·1024 + 2·4096 + 4·32 = 20608 per token
    assert act.attention_saved_bytes(LLAMA3, cfg()) == 20608 * 4096
    # eager repeats k and v to 32 heads: 2·4096 × 4 (q, k, v, o_proj input) = 32768 per token
    assert act.attention_saved_bytes(LLAMA3, cfg(attn_impl=AttnImpl.EAGER)) == 32768 * 4096


def test_eager_scores_by_hand() -> None:
    # S = B·H·T² = 1 · 32 · 2048² = 134,217,728; fp32 softmax (4) + bf16 probs (2) = 6 bytes each
    assert act.eager_scores_saved_bytes(LLAMA2, cfg(seq_len=2048, attn_impl=AttnImpl.EAGER), 0) == 805_306_368
    assert act.eager_scores_saved_bytes(LLAMA2, cfg(seq_len=2048), 0) == 0


def test_eager_mask() -> None:
    # [B, 1, T, T] bf16: 2 · 2048² · 2 = 16,777,216; Gemma 2 has full and sliding layers: two masks
    eager = cfg(micro_batch_size=2, seq_len=2048, attn_impl=AttnImpl.EAGER)
    assert tr.attention_mask_bytes(LLAMA2, eager) == 16_777_216
    assert tr.attention_mask_bytes(GEMMA2, cfg(seq_len=1024, attn_impl=AttnImpl.EAGER)) == 2 * 1024 * 1024 * 2


def test_lora_layer_by_hand() -> None:
    # frozen base: RMSNorm weights frozen (no normed copy): 2 × (4h + 4 + 2h) = 2 × 24580 = 49160
    # attention and MLP as full FT (32896 + 88064); 7 adapters × r 16 × 2 B = 224
    layer = act.layer_saved(LLAMA2, cfg(lora_rank=16), 0)
    assert layer.total == (49160 + 32896 + 88064 + 224) * 4096
    # LoRA on q and v only: down_proj frozen, so the product is not kept (-2f); the MLP input is
    # not kept by gate/up either (-2h on the post-attention norm); 2 adapters
    qv = act.layer_saved(LLAMA2, cfg(lora_rank=16, lora_targets=frozenset({LinearModule.Q_PROJ,
                                                                           LinearModule.V_PROJ})), 0)
    assert qv.mlp == 3 * 2 * 11008 * 4096
    assert qv.norms == (24580 + 16388) * 4096
    assert qv.lora == 2 * 16 * 2 * 4096


def test_lora_keeps_embedding_output() -> None:
    # enable_input_require_grads: the embedding output is a leaf kept by AccumulateGrad: N·h·2
    assert act.embedding_output_bytes(LLAMA2, cfg(lora_rank=8)) == 4096 * 4096 * 2
    assert act.embedding_output_bytes(LLAMA2, cfg()) == 0
    assert act.embedding_output_bytes(LLAMA2, cfg(lora_rank=8, gradient_checkpointing=True)) == 0


def test_phi3_fused_v() -> None:
    # v is a view of the fused qkv output, which stays whole: 3072 + 3072 + 3072 wide
    # (3072 q + 3072 k + 9216 qkv + 3072 out) × 2 + 4 · 32 lse = 36992 per token
    assert act.attention_saved_bytes(PHI3, cfg()) == 36992 * 4096


def test_gemma2_layer_by_hand() -> None:
    # Gemma RMSNorm keeps x in fp32 (4h), rsqrt (4) and, trained, the fp32 normed product (4h);
    # input and pre-FF norms' outputs are kept by the next linears (2h); the post norms' are not:
    # (10h + 4) + (8h + 4) + (10h + 4) + (8h + 4) = 36h + 16 = 129040 per token
    assert act.norms_saved_bytes(GEMMA2, cfg(seq_len=1024, attn_impl=AttnImpl.EAGER), 0) == 129040 * 1024
    # eager with attention soft-capping: fp32 softmax 4 + probs 2 + tanh output 2 = 8 bytes per S
    s = 16 * 1024 * 1024
    assert act.eager_scores_saved_bytes(GEMMA2, cfg(seq_len=1024, attn_impl=AttnImpl.EAGER), 0) == 8 * s


def test_mixtral_moe_by_hand() -> None:
    # router: 4·8 (fp32 softmax) + 8·2 (top-k ids) + 4·2 + 4 (renormalised weights, their sum) = 60
    # experts per routed copy (k = 2): gathered input h + gate_up 2f' + act f' + product f' + down h
    #   = 2·4096 + 4·14336 = 65536 elements × 2 B × 2 copies = 262144
    # + fp32 weight per copy (4·2) + 3 int64 permutations per copy (3·8·2)
    assert act.moe_saved_bytes(MIXTRAL, cfg(seq_len=1024)) == (60 + 262144 + 8 + 48) * 1024


def test_checkpointing_keeps_layer_inputs() -> None:
    # each checkpointed layer keeps its input: N·h·2 = 4096 · 4096 · 2, 32 layers
    assert act.stack_saved_bytes(LLAMA2, cfg(gradient_checkpointing=True)) == 32 * 4096 * 4096 * 2
    assert act.stack_saved_bytes(LLAMA2, cfg()) == 32 * 763_920_384


def test_autotp_splits_heads_and_mlp_not_norms() -> None:
    one, two = act.layer_saved(LLAMA2, cfg(), 0), act.layer_saved(LLAMA2, cfg(ds_tp_size=2), 0)
    assert two.norms == one.norms
    assert two.attention * 2 == one.attention
    assert two.mlp * 2 == one.mlp


def test_frozen_model_keeps_nothing() -> None:
    frozen = cfg(trainable=False)
    assert act.layer_saved(LLAMA2, frozen, 0).total == 0
    assert act.stack_saved_bytes(LLAMA2, frozen) == 0


SPECS = [LLAMA2, LLAMA3, MIXTRAL, GEMMA2, PHI3, load_model_spec("qwen3-8b")]


@settings(max_examples=60, deadline=None)
@given(spec=st.sampled_from(SPECS), batch=st.integers(1, 8), seq=st.integers(16, 8192),
       attn=st.sampled_from([AttnImpl.SDPA, AttnImpl.EAGER, AttnImpl.FLASH_ATTENTION_2]),
       lora=st.sampled_from([0, 8, 64]), impl=st.sampled_from(list(LogProbImpl)),
       head=st.sampled_from(list(Head)))
def test_checkpointing_never_raises_activations(spec, batch, seq, attn, lora, impl, head) -> None:
    base = ActivationConfig(micro_batch_size=batch, seq_len=seq, attn_impl=attn, lora_rank=lora)
    ckpt = replace(base, gradient_checkpointing=True)
    assert act.stack_saved_bytes(spec, ckpt) <= act.stack_saved_bytes(spec, base)
    hc = tr.HeadConfig(head=head, logprob_impl=impl)
    plain, checkpointed = tr.training_transients(spec, base, hc), tr.training_transients(spec, ckpt, hc)
    for phase in (Phase.FORWARD, Phase.BACKWARD):
        assert tr.total(checkpointed[phase]) <= tr.total(plain[phase])


def test_phase_terms_are_tagged_and_named() -> None:
    phases = tr.training_transients(LLAMA3, cfg(), tr.HeadConfig())
    for phase, terms in phases.items():
        assert all(t.phase == phase for t in terms)
    paths = {t.path for t in phases[Phase.BACKWARD]}
    assert {"policy.activations.layers", "policy.logits.fp32", "policy.loss.logprob_grad"} <= paths
    assert all(t.category in (Category.ACTIVATION, Category.TEMP) for t in phases[Phase.BACKWARD])


def test_llama3_sft_backward_by_hand() -> None:
    # Llama-3-8B, B 1, T 4096, SDPA/flash, GPU log-probs (flash-attn Triton CE):
    #   per layer per token: norms 65544 + attention 20608 + MLP 8·14336 = 200840
    #   layers 32 · 200840 · 4096 = 26,324,500,480
    #   rotary cos+sin 2·128·2 per token = 512 · 4096 = 2,097,152
    #   final norm 32772 per token = 134,234,112
    #   fp32 logits 4 · 128256 · 4096 = 2,101,346,304
    #   loss backward: fp32 dlogits + its bf16 cast = 6 · 128256 · 4096 = 3,152,019,456
    phases = tr.training_transients(LLAMA3, cfg(), tr.HeadConfig())
    assert tr.total(phases[Phase.BACKWARD]) == (26_324_500_480 + 2_097_152 + 134_234_112
                                                + 2_101_346_304 + 3_152_019_456)
    # forward peak: the same resident set + the bf16 logits at the cast (2 · 128256 · 4096)
    assert tr.total(phases[Phase.FORWARD]) == (26_324_500_480 + 2_097_152 + 134_234_112
                                               + 2_101_346_304 + 1_050_673_152)


def test_held_output_adds_previous_logits() -> None:
    held = tr.training_transients(LLAMA3, cfg(), tr.HeadConfig(holds_output=True))
    plain = tr.training_transients(LLAMA3, cfg(), tr.HeadConfig())
    assert tr.total(held[Phase.FORWARD]) - tr.total(plain[Phase.FORWARD]) == 2_101_346_304
    assert tr.total(held[Phase.OPTIMIZER_STEP]) == 2_101_346_304
    assert tr.total(plain[Phase.OPTIMIZER_STEP]) == 0


def test_dpo_reference_rides_on_policy() -> None:
    # DPO: the reference's no-grad forward runs while the policy's forward-end tensors are alive;
    # at the reference's cast its bf16 + fp32 logits (6·V per token) exceed the policy's own bf16 (2·V)
    c = cfg(micro_batch_size=2, seq_len=1024)
    phases = tr.micro_step_transients(LLAMA2, c, tr.HeadConfig(), reference_role="reference")
    paths = {t.path for t in phases[Phase.FORWARD]}
    assert {"policy.activations.layers", "policy.logits.fp32", "reference.logits.fp32",
            "reference.logits.bf16"} <= paths
    solo = tr.training_transients(LLAMA2, c, tr.HeadConfig())
    # difference: reference 6·V·N instead of the policy's 2·V·N → 4 · 32000 · 2048
    assert tr.total(phases[Phase.FORWARD]) - tr.total(solo[Phase.FORWARD]) == 4 * 32000 * 2048


def test_forward_only_is_the_logits_moment_for_big_vocab() -> None:
    # no grad: bf16 + fp32 logits at the cast: 6 · 128256 · 4096
    terms = tr.forward_only_terms(LLAMA3, cfg(trainable=False))
    assert tr.total(terms) == 6 * 128256 * 4096
    assert all(t.phase == Phase.MAKE_EXPERIENCE for t in terms)


def test_mixtral_backward_has_expert_weight_grad() -> None:
    # at N = 1024 the gate_up expert weight gradient E · 2f' · h · 2 = 1,879,048,192 B dominates
    terms = tr.backward_terms(MIXTRAL, cfg(seq_len=1024), tr.HeadConfig(), "policy")
    temp = next(t for t in terms if t.path == "policy.backward.layer_temp")
    assert temp.bytes == 8 * 2 * 14336 * 4096 * 2 - 2 * 1024 * 2 * 14336 * 2


def _probe():
    path = Path(__file__).resolve().parents[2] / "scripts" / "probe_activations.py"
    spec = importlib.util.spec_from_file_location("probe_activations", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.tracing
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llama-gc", "tiny-mixtral"])
def test_tracing_small_models(name: str) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    probe = _probe()
    case = next(c for c in probe.quick_cases() if c.name == name)
    for moment, predicted, traced, err in probe.compare(case):
        assert abs(err) < 5.0, f"{name} {moment}: predicted {predicted}, traced {traced}"
