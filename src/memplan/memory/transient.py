"""Forward and backward transient memory of one model's micro-step, as phase-tagged terms.

A phase's peak is the largest of a few *moments*, each the set of tensors alive at one instant:

    FORWARD   logits:   everything kept for backward + fp32 logits + the bf16 logits at the cast
              scores:   (eager) the last layer's attention, softmax input next to its fp32 output
              recompute:(checkpointing) one layer's forward with nothing kept but its temporaries
    BACKWARD  loss:     forward end + the log-prob gradients
              lm_head:  forward end + bf16 logit gradient + the V × h weight gradient in flight
              final norm: forward end + the RMSNorm backward's fp32 temporaries
              layer i:  what layers < i keep (or their checkpoints) + layer i's activations
                        (recomputed under checkpointing) + its input gradient + its worst stage
                        (gradients of the MLP, a weight gradient in flight, eager softmax backward)
              embedding: the embedding's V × h gradient (three with tied embeddings, at their sum)

The terms of the winning moment are returned with the phase; their sum is the phase's peak of
activation + temp bytes (what MemTracker reports as ACT + TEMP with gradients handed off). Weight
gradients appear as TEMP while autograd holds them, before ZeRO's hook takes them.

GPU vs a CPU trace: users run flash_attention_2 and flash-attn's Triton cross-entropy
(``LogProbImpl.FLASH_ATTN_TRITON``); a CPU trace runs SDPA's CPU flash kernel (the same saved
tensors as flash-attn, except that flash-attn unpads padded batches: +2·qd per token, see
activations.attention_saved_bytes) and the torch log-prob fallback (``TORCH_CHUNKED``: 3 fp32
[N, V] at its backward peak instead of 1.5). Pass the matching ``HeadConfig`` to predict either.
What neither counts: caching-allocator rounding and fragmentation, kernel workspaces (cuBLAS,
flash-attn's internal buffers, the fallback's logsumexp temporaries inside the kernel).
Paths: ``{role}.activations.*``, ``{role}.logits.*``, ``{role}.loss.*``, ``{role}.backward.*``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from functools import lru_cache

from memplan.dtypes import bytes_for
from memplan.memory.activations import AttnImpl
from memplan.memory import activations as act
from memplan.memory import logits as lg
from memplan.memory.activations import ActivationConfig, LinearModule
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.memory.logits import Head, LogProbImpl
from memplan.model.spec import ModelSpec
from memplan.sources import Source

#: RMSNorm backward holds about four fp32 [N, h] tensors at once (grad cast to fp32, grad of the
#: normalised input, ``pow`` backward, the sum) — measured by scripts/probe_activations.py.
NORM_BACKWARD_FP32_COPIES = 4
#: Eager attention backward at ``_softmax_backward_data``: fp32 gradient of the probabilities (4S)
#: and the fp32 gradient of the scores (4S), after the kept bf16 probabilities (2S) are freed.
EAGER_BACKWARD_SCORE_BYTES = 6
#: Eager attention forward at ``softmax``: its compute-dtype input (2S) next to the kept output.
EAGER_FORWARD_SCORE_INPUT_BYTES = 2
#: Eager forward without keeping (checkpointed or no-grad): scaled scores + masked scores or the
#: softmax input (2S), fp32 softmax (4S) → at most 6 bytes per score element.
EAGER_NOSAVE_SCORE_BYTES = 6
#: Without grad, the embeddings (``inputs_embeds``, referenced by ``LlamaModel.forward``) and the
#: running layer's input (the loop variable) stay alive while a layer computes.
FORWARD_ONLY_HIDDEN_COPIES = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class HeadConfig:
    """What the model computes on top of the decoder stack, and how."""

    head: Head = Head.LM
    """LM head (log-probs) or value head."""
    logprob_impl: LogProbImpl = LogProbImpl.FLASH_ATTN_TRITON
    """GPU flash-attn cross-entropy, or the torch fallback a CPU trace runs."""
    entropy: bool = False
    """RL actor with ``entropy_coef`` set: softmax over the fp32 logits."""
    kd: bool = False
    """KD student: teacher logits and the KD loss's fp32 tensors."""
    holds_output: bool = False
    """The trainer's loop variable keeps ``output`` (fp32 logits) until the next micro-step's model
    call returns: SFT (``sft_trainer.py`` ``per_token_log_probs, output = self.model(...)``) and KD
    (v0.9.5 ``output = self.model(...)``); DPO, RM and the PPO actor release it on return."""
    output_until_step: bool = False
    """``output`` (fp32 logits, and the entropy's graph) lives through the optimizer step and is released
    before the next micro-step: the PPO actor's ``training_step`` binds it and returns after
    ``optimizer_step`` (openrlhf/trainer/ray/ppo_actor.py@3c3be62 ``training_step``)."""
    entropy_in_loss: bool = False
    """The entropy coefficient is non-zero: the entropy is part of the loss, so its graph is backwarded (and
    freed); with coefficient 0 it is computed, never backwarded, and its softmax stays with ``output``."""


def _src(detail: str) -> Source:
    return act.hf_source("llama", detail)


def _t(path: str, nbytes: int, phase: Phase, source: Source, category: Category = Category.ACTIVATION) -> Term:
    return Term(path=path, bytes=nbytes, category=category, device=Device.GPU, source=source, phase=phase)


def _peak(moments: list[list[Term]]) -> tuple[Term, ...]:
    best = max(moments, key=lambda terms: sum(t.bytes for t in terms))
    return tuple(t for t in best if t.bytes > 0)


def attention_mask_bytes(spec: ModelSpec, cfg: ActivationConfig) -> int:
    """Eager attention's additive mask [B, 1, T, T] in the compute dtype, one per attention type
    (full, sliding). SDPA without padding and flash-attn build none.

    Source: huggingface/transformers:src/transformers/masking_utils.py@v5.24.0 (``eager_mask``).
    Checked by: tests/memory/test_activations.py::test_eager_mask
    """
    if cfg.attn_impl != AttnImpl.EAGER:
        return 0
    kinds = len(set(spec.layer_types)) if spec.layer_types else 1
    return kinds * bytes_for(cfg.micro_batch_size * cfg.seq_len * cfg.seq_len, cfg.compute_dtype)


def _resident_end(spec: ModelSpec, cfg: ActivationConfig, head: HeadConfig, role: str, phase: Phase,
                  *, layers: bool = True) -> list[Term]:
    """Tensors kept from the end of forward through backward, except the decoder layers' own."""
    n, dt = act.num_tokens(cfg), cfg.compute_dtype
    lm = head.head == Head.LM
    head_trained = cfg.trainable and (cfg.lora_rank == 0 if lm else True)
    terms = [
        _t(f"{role}.activations.rotary", act.rotary_saved_bytes(spec, cfg), phase,
           _src("LlamaRotaryEmbedding.forward")),
        _t(f"{role}.activations.final_norm", act.final_norm_saved_bytes(spec, cfg, head_trained=head_trained),
           phase, _src("LlamaModel.forward (norm)")),
    ]
    terms.append(_t(f"{role}.activations.embedding_output", act.embedding_output_bytes(spec, cfg), phase,
                    act.hf_source("llama", "LlamaModel.forward (embed_tokens, input require grads)")))
    if layers:
        terms.insert(0, _t(f"{role}.activations.layers", act.stack_saved_bytes(spec, cfg), phase,
                           _src("LlamaDecoderLayer.forward")))
    if cfg.gradient_checkpointing:
        terms.append(_t(f"{role}.activations.attention_mask", attention_mask_bytes(spec, cfg), phase,
                        _src("GradientCheckpointingLayer.__call__ (mask held by the checkpoint)")))
    if lm:
        fp32_src = lg.openrlhf_source("openrlhf/models/actor.py", "Actor.forward")
        terms.append(_t(f"{role}.logits.fp32", lg.logits_bytes(spec, n, lg.LOGITS_FP32), phase, fp32_src,
                        Category.TEMP))
        terms.append(_t(f"{role}.logits.softcap", lg.softcap_saved_bytes(spec, n, dt, trained=cfg.trainable),
                        phase, fp32_src, Category.TEMP))
        if head.entropy:
            terms.append(_t(f"{role}.loss.entropy", lg.entropy_bytes(spec, n), phase,
                            lg.openrlhf_source("openrlhf/models/utils.py", "compute_entropy"), Category.TEMP))
    else:
        terms.append(_t(f"{role}.logits.values", lg.value_head_bytes(n, dt), phase,
                        lg.openrlhf_source("openrlhf/models/model.py", "value head"), Category.TEMP))
    return terms


def saved_through_backward(spec: ModelSpec, cfg: ActivationConfig, role: str, phase: Phase) -> tuple[Term, ...]:
    """What a trained model without its LM head keeps from the end of forward into backward: the decoder
    layers' saved tensors (or checkpoints), the rotary tables, the final norm's input, the embedding output
    (and a checkpointed mask). The head's tensors are the caller's (memory/logits.py)."""
    return tuple(t for t in _resident_end(spec, cfg, HeadConfig(head=Head.VALUE), role, phase)
                 if not t.path.endswith("logits.values") and t.bytes > 0)


def _cast_moment(spec: ModelSpec, cfg: ActivationConfig, head: HeadConfig, role: str, phase: Phase) -> list[Term]:
    """The bf16 logits (and with Gemma soft-capping, the capped copy) alive at the fp32 cast."""
    if head.head != Head.LM:
        return []
    n, dt = act.num_tokens(cfg), cfg.compute_dtype
    src = lg.openrlhf_source("openrlhf/models/actor.py", "Actor.forward: logits.to(float32)")
    terms = [_t(f"{role}.logits.bf16", lg.logits_bytes(spec, n, dt), phase, src, Category.TEMP)]
    if not cfg.trainable:
        terms.append(_t(f"{role}.logits.softcap", lg.softcap_forward_temp_bytes(spec, n, dt), phase, src,
                        Category.TEMP))
    return terms


def layer_forward_nosave_bytes(spec: ModelSpec, cfg: ActivationConfig, layer_idx: int) -> int:
    """Worst instant inside one layer's forward when nothing is kept (checkpointed or no-grad), beyond
    the layer's input (its checkpoint) and the embeddings, which the caller counts.

        MLP (at ``act * up``):  N·(h residual + h normed + 3f (act, up, product)) elements
        MoE (at ``act * up``):  N·(2h + k·(h gathered + 4f' (gate_up output, act, product)))
        eager (at ``softmax``): N·(2h + qd + 2·H·hd (repeated k, v)) elements + 6 bytes × S
    Source: hf_source("llama", "LlamaMLP.forward, eager_attention_forward, LlamaModel.forward").
    Checked by: scripts/probe_activations.py (checkpointed and forward-only cases)
    """
    n, h, dt = act.num_tokens(cfg), spec.hidden_size, cfg.compute_dtype
    f = -(-spec.intermediate_size // cfg.ds_tp_size)
    if spec.is_moe and layer_idx in spec.moe_layers and spec.moe is not None:
        fe = -(-spec.moe.moe_intermediate_size // cfg.ds_tp_size)
        mlp = bytes_for(n * (2 * h + spec.moe.num_experts_per_tok * (h + 4 * fe)), dt)
    else:
        mlp = bytes_for(n * (2 * h + 3 * f), dt)
    if cfg.attn_impl != AttnImpl.EAGER:
        return mlp
    heads = -(-spec.num_attention_heads // cfg.ds_tp_size)
    attn = bytes_for(n * (2 * h + spec.q_dim // cfg.ds_tp_size + 2 * heads * spec.head_dim), dt)
    return max(mlp, attn + EAGER_NOSAVE_SCORE_BYTES * act.score_elements(spec, cfg))


def weight_grad_bytes(rows: int, cols: int, cfg: ActivationConfig) -> int:
    """One weight gradient as autograd allocates it (the weight dtype), before ZeRO's hook takes it."""
    return bytes_for(rows * cols, cfg.compute_dtype)


def layer_backward_extra_bytes(spec: ModelSpec, cfg: ActivationConfig, layer_idx: int) -> int:
    """Worst stage of one layer's backward, above what is alive when it starts (all in bytes).

        dense down_proj:  2·N·f (gradient of the product) + h·f·2 (its weight gradient, full FT)
        dense act·up:     2·N·f·(3 − kept) (gradients of product, act and up; the product itself
                          is freed once down_proj's backward is done when it was kept)
        MoE down:         2·N·k·f' + E·h·f'·2 (the 3-D expert weight gradient, in one piece)
        MoE gate_up:      E·2f'·h·2 − 4·N·k·f' (its weight gradient; the expert outputs are freed)
        Gemma post-FF:    NORM_BACKWARD_FP32_COPIES × 4·N·h (the first stage of its layer)
        eager softmax:    6·S + 2·N·qd − (MLP, post-attention norms and LoRA halves, already freed)

    Source: torch autograd of hf_source("llama", "LlamaMLP.forward, eager_attention_forward");
    ``integrations/moe.py::grouped_mm_experts_forward`` @v5.24.0 (``_grouped_mm`` backward).
    Checked by: scripts/probe_activations.py (mixtral-8x7b, llama-2-7b-b1-s512, eager cases)
    """
    n, h, dt = act.num_tokens(cfg), spec.hidden_size, cfg.compute_dtype
    full = cfg.trainable and cfg.lora_rank == 0
    saved = act.layer_saved(spec, cfg, layer_idx)
    if spec.is_moe and layer_idx in spec.moe_layers and spec.moe is not None:
        fe = -(-spec.moe.moe_intermediate_size // cfg.ds_tp_size)
        k, e = spec.moe.num_experts_per_tok, spec.moe.num_experts
        stages = [bytes_for(2 * n * k * fe, dt)]
        if full:
            stages += [bytes_for(n * k * fe, dt) + weight_grad_bytes(e * h, fe, cfg),
                       weight_grad_bytes(e * 2 * fe, h, cfg) - bytes_for(2 * n * k * fe, dt)]
    else:
        f = -(-spec.intermediate_size // cfg.ds_tp_size)
        kept = 1 if cfg.saves_input(LinearModule.DOWN_PROJ) else 0
        stages = [bytes_for(n * (3 - kept) * f, dt)]
        if full:
            stages.append(bytes_for(n * f, dt) + weight_grad_bytes(h, f, cfg))
    if spec.norms_per_layer > 2:
        stages.append(NORM_BACKWARD_FP32_COPIES * bytes_for(n * h, act.NORM_DTYPE))
    if cfg.attn_impl == AttnImpl.EAGER:
        qd = spec.q_dim // cfg.ds_tp_size
        freed = saved.mlp + saved.norms // 2 + saved.lora // 2
        stages.append(EAGER_BACKWARD_SCORE_BYTES * act.score_elements(spec, cfg) + bytes_for(n * qd, dt) - freed)
    return max(stages)


def forward_terms(spec: ModelSpec, cfg: ActivationConfig, head: HeadConfig, role: str,
                  phase: Phase = Phase.FORWARD) -> tuple[Term, ...]:
    """Peak of a trained model's forward: the logits moment, or a layer's eager/recompute moment."""
    end = _resident_end(spec, cfg, head, role, phase)
    moments = [end + _cast_moment(spec, cfg, head, role, phase)]
    n, h = act.num_tokens(cfg), spec.hidden_size
    moments.append([t for t in end if not t.path.startswith(f"{role}.logits")] + [_t(
        f"{role}.activations.final_norm_temp",
        bytes_for(n * h, act.NORM_DTYPE) + FORWARD_ONLY_HIDDEN_COPIES * bytes_for(n * h, cfg.compute_dtype),
        phase, _src("LlamaRMSNorm.forward (fp32 product; embeddings and last layer output still referenced)"),
        Category.TEMP)])
    non_layer = [t for t in end if not t.path.endswith(("activations.layers", "logits.fp32", "logits.softcap",
                                                          "activations.final_norm", "loss.entropy"))]
    last = spec.num_hidden_layers - 1
    mask = _t(f"{role}.activations.attention_mask", attention_mask_bytes(spec, cfg), phase,
              _src("LlamaModel.forward (create_causal_mask)"))
    if cfg.gradient_checkpointing:
        kept = spec.num_hidden_layers * act.checkpoint_bytes(spec, cfg)
        moments.append(non_layer + [
            _t(f"{role}.activations.layers", kept, phase, _src("GradientCheckpointingLayer")),
            _t(f"{role}.activations.layer_forward", layer_forward_nosave_bytes(spec, cfg, last), phase,
               _src("LlamaDecoderLayer.forward (checkpointed: nothing kept)"), Category.TEMP),
        ] + ([] if any(t.path.endswith("attention_mask") for t in non_layer) else [mask]))
    elif cfg.attn_impl == AttnImpl.EAGER and cfg.trainable:
        saved = act.layer_saved(spec, cfg, last)
        before = act.stack_saved_bytes(spec, cfg) - saved.mlp - saved.norms // 2 - saved.lora // 2
        moments.append(non_layer + [
            _t(f"{role}.activations.layers", before, phase, _src("LlamaDecoderLayer.forward")),
            _t(f"{role}.activations.softmax_input",
               EAGER_FORWARD_SCORE_INPUT_BYTES * act.score_elements(spec, cfg), phase,
               _src("eager_attention_forward (softmax)"), Category.TEMP),
            mask,
        ])
    return _peak(moments)


def _layer_moment(spec: ModelSpec, cfg: ActivationConfig, role: str, phase: Phase, i: int,
                  non_layer: list[Term], saved: list[int], saved_below: list[int]) -> list[Term]:
    """Layer ``i``'s backward; ``saved[j]`` is layer j's saved bytes, ``saved_below[i]`` = Σ_{j<i} saved[j]."""
    n = act.num_tokens(cfg)
    saved_i = saved[i]
    if cfg.gradient_checkpointing:
        below = (i + 1) * act.checkpoint_bytes(spec, cfg)
    else:
        below = saved_below[i]
    src = _src("LlamaDecoderLayer.forward (its backward)")
    return non_layer + [
        _t(f"{role}.activations.layers", below, phase, src),
        _t(f"{role}.activations.recomputed" if cfg.gradient_checkpointing else f"{role}.activations.current_layer",
           saved_i, phase, src),
        _t(f"{role}.backward.grad_hidden", bytes_for(n * spec.hidden_size, cfg.compute_dtype), phase, src,
           Category.TEMP),
        _t(f"{role}.backward.layer_temp", layer_backward_extra_bytes(spec, cfg, i), phase, src, Category.TEMP),
    ]


def _embedding_grads(spec: ModelSpec, cfg: ActivationConfig, role: str, phase: Phase) -> tuple[Term | None, Term]:
    """(the tied LM-head gradient held until the embedding's arrives, the end-of-backward grads).

    With tied embeddings one AccumulateGrad node receives both gradients: autograd holds the LM
    head's V × h gradient through the whole backward and sums it with the embedding's at the end
    (three V × h tensors at the sum); untied, only the embedding's own gradient exists at the end.
    Source: torch autograd input buffers; hf_source("llama", "LlamaForCausalLM (tie_word_embeddings)").
    Checked by: scripts/probe_activations.py (gemma-2-9b-eager: tied, V = 256000)
    """
    full = cfg.trainable and cfg.lora_rank == 0
    one = weight_grad_bytes(spec.vocab_size, spec.hidden_size, cfg) if full else 0
    tied = spec.tie_word_embeddings and full
    src = _src("LlamaModel.embed_tokens (backward)")
    held = _t(f"{role}.backward.tied_lm_head_grad", one, phase, src, Category.TEMP) if tied else None
    end = _t(f"{role}.backward.embedding_grad", (3 if tied else 1) * one, phase, src, Category.TEMP)
    return held, end


class BackwardStage(StrEnum):
    """Where in backward a moment lies, in backward order (memory/grad_timeline.py counts the gradients
    hooked by each)."""

    LOSS = "loss"
    """The loss's and log-probs' backward: no parameter gradient yet."""
    LM_HEAD = "lm_head"
    """The LM head's matmul backward: its weight gradient in flight, its hook not yet run."""
    LM_HEAD_HOOK = "lm_head_hook"
    """The LM head's hook: the bf16 logit gradient freed, the weight gradient handed over."""
    NORM = "norm"
    """The final norm's backward."""
    LAYER = "layer"
    """One decoder layer's backward (with its index)."""
    EMBEDDING = "embedding"
    """The embedding's gradient, at the end."""


#: A moment's stage and, for ``LAYER``, the layer's index (0 otherwise).
Stage = tuple[BackwardStage, int]


@lru_cache(maxsize=128)
def backward_moments(spec: ModelSpec, cfg: ActivationConfig, head: HeadConfig, role: str,
                     phase: Phase = Phase.BACKWARD) -> tuple[tuple[tuple[Term, ...], Stage], ...]:
    """Every moment of a trained model's backward with the stage it belongs to: the loss, the LM head
    (weight gradient in flight; then its hook, the bf16 logit gradient freed), the final norm, each layer,
    the embedding. :func:`backward_terms` takes the largest. Cached: the planner asks for the same
    micro-step many times, and the gradient timeline walks the moments again."""
    n, h, dt = act.num_tokens(cfg), spec.hidden_size, cfg.compute_dtype
    end = _resident_end(spec, cfg, head, role, phase)
    moments: list[tuple[list[Term], Stage]] = []
    grad_h = _t(f"{role}.backward.grad_hidden", bytes_for(n * h, dt), phase, _src("LlamaForCausalLM"), Category.TEMP)
    held, emb_end = _embedding_grads(spec, cfg, role, phase) if head.head == Head.LM else (None, None)
    tied = [held] if held is not None else []
    if head.head == Head.LM:
        ce_src = lg.openrlhf_source("openrlhf/models/utils.py", "log_probs_from_logits (backward)")
        loss_terms = [_t(f"{role}.loss.logprob_grad", lg.logprob_backward_bytes(spec, n, head.logprob_impl, dt),
                         phase, ce_src, Category.TEMP)]
        if head.entropy and head.entropy_in_loss:
            loss_terms.append(_t(f"{role}.loss.entropy_grad", lg.entropy_backward_bytes(spec, n), phase,
                                 lg.openrlhf_source("openrlhf/models/utils.py", "compute_entropy (backward)"),
                                 Category.TEMP))
        moments.append((end + loss_terms, (BackwardStage.LOSS, 0)))
        # Past the loss's backward the fp32 logits (and soft-capping's saved tensors, the entropy) are
        # released unless the trainer's ``output`` still holds the logits (HeadConfig.holds_output).
        kept_entropy = head.entropy and not head.entropy_in_loss  # never backwarded: its softmax stays
        released = tuple(p for p in ("logits.fp32", "logits.softcap", "loss.entropy")
                         if not (p == "logits.fp32" and (head.holds_output or head.output_until_step))
                         and not (p == "loss.entropy" and kept_entropy))
        end = [t for t in end if not t.path.endswith(released)]
        head_trained = cfg.trainable and cfg.lora_rank == 0
        weight_grad = _t(f"{role}.backward.lm_head_weight_grad", lg.lm_head_weight_grad_bytes(
            spec, dt, trained=head_trained), phase, ce_src, Category.TEMP)
        moments.append((end + [_t(f"{role}.logits.bf16_grad", lg.logits_bytes(spec, n, dt), phase, ce_src,
                                  Category.TEMP), grad_h, weight_grad], (BackwardStage.LM_HEAD, 0)))
        if weight_grad.bytes and held is None:
            moments.append((end + [grad_h, weight_grad], (BackwardStage.LM_HEAD_HOOK, 0)))
    moments.append((end + tied + [_t(f"{role}.backward.norm_temp", NORM_BACKWARD_FP32_COPIES * bytes_for(
        n * h, act.NORM_DTYPE), phase, _src("LlamaRMSNorm (backward, with the incoming gradient)"), Category.TEMP)],
        (BackwardStage.NORM, 0)))
    non_layer = [t for t in end if not t.path.endswith(("activations.layers", "activations.final_norm",
                                                        "logits.softcap"))] + tied
    saved = [act.layer_saved(spec, cfg, j).total for j in range(spec.num_hidden_layers)]
    saved_below = [0]
    for value in saved:
        saved_below.append(saved_below[-1] + value)
    for i in reversed(range(spec.num_hidden_layers)):
        moments.append((_layer_moment(spec, cfg, role, phase, i, non_layer, saved, saved_below), (BackwardStage.LAYER, i)))
    if emb_end is not None:
        kept = [t for t in end if t.path.endswith(("logits.fp32", "loss.entropy", "activations.embedding_output"))]
        moments.append((kept + [grad_h, emb_end], (BackwardStage.EMBEDDING, 0)))
    return tuple((tuple(terms), stage) for terms, stage in moments)


@lru_cache(maxsize=128)
def backward_moment_bytes(spec: ModelSpec, cfg: ActivationConfig, head: HeadConfig, role: str,
                          phase: Phase = Phase.BACKWARD) -> tuple[int, ...]:
    """Bytes of each of :func:`backward_moments` (cached with them: a backward has a moment per layer)."""
    return tuple(sum(t.bytes for t in terms) for terms, _ in backward_moments(spec, cfg, head, role, phase))


def backward_terms(spec: ModelSpec, cfg: ActivationConfig, head: HeadConfig, role: str,
                   phase: Phase = Phase.BACKWARD) -> tuple[Term, ...]:
    """Peak of a trained model's backward: loss, LM head, final norm, a layer, or the embedding."""
    sizes = backward_moment_bytes(spec, cfg, head, role, phase)
    worst = max(range(len(sizes)), key=sizes.__getitem__)  # the first of equal moments, as _peak takes it
    return tuple(t for t in backward_moments(spec, cfg, head, role, phase)[worst][0] if t.bytes > 0)


def held_output_terms(spec: ModelSpec, cfg: ActivationConfig, head: HeadConfig, role: str,
                      phase: Phase) -> tuple[Term, ...]:
    """The previous micro-step's fp32 logits, still bound to the trainer's ``output`` variable during
    the next forward and through the optimizer step (``HeadConfig.holds_output``).

    Source: lg.openrlhf_source("openrlhf/trainer/sft_trainer.py", "SFTTrainer.fit loop").
    Checked by: scripts/probe_activations.py --references (validation/traced/*-sft-*: iteration 2
    forward and optimizer_step carry one fp32 [N, V] more than iteration 1)
    """
    if not (head.holds_output and head.head == Head.LM):
        return ()
    src = lg.openrlhf_source("openrlhf/trainer/sft_trainer.py", "fit: per_token_log_probs, output = self.model(...)")
    return (_t(f"{role}.logits.held_output", lg.logits_bytes(spec, act.num_tokens(cfg), lg.LOGITS_FP32), phase,
               src, Category.ACTIVATION),)


def training_transients(spec: ModelSpec, cfg: ActivationConfig, head: HeadConfig = HeadConfig(),
                        role: str = "policy") -> dict[Phase, tuple[Term, ...]]:
    """Transient terms of one trained model's micro-step in steady state (not the first step):
    {FORWARD: peak terms, BACKWARD: peak terms, OPTIMIZER_STEP: what the trainer still holds}.

    Checked by: tests/memory/test_activations.py::test_tracing_small_models (within 5 % of a trace)
    """
    if not cfg.trainable:
        raise ValueError("training_transients needs a trainable ActivationConfig")
    return {Phase.FORWARD: forward_terms(spec, cfg, head, role) + held_output_terms(spec, cfg, head, role,
                                                                                     Phase.FORWARD),
            Phase.BACKWARD: backward_terms(spec, cfg, head, role),
            Phase.OPTIMIZER_STEP: held_output_terms(spec, cfg, head, role, Phase.OPTIMIZER_STEP)
            + output_to_step_terms(spec, cfg, head, role)}


def output_to_step_terms(spec: ModelSpec, cfg: ActivationConfig, head: HeadConfig, role: str) -> tuple[Term, ...]:
    """What the PPO actor's ``output`` still holds while its optimizer steps (``HeadConfig.output_until_step``):
    the fp32 logits and, with an entropy coefficient of 0, the entropy's never-backwarded softmax.

    Source: openrlhf/trainer/ray/ppo_actor.py@3c3be62 ``training_step`` (``output`` bound before the loss,
    released when the method returns after ``optimizer_step``).
    Checked by: validation/traced_rl/rl-llama-3-8b-*-actor-*.json (optimizer_step_transient)
    """
    if not (head.output_until_step and head.head == Head.LM):
        return ()
    n, phase = act.num_tokens(cfg), Phase.OPTIMIZER_STEP
    src = lg.openrlhf_source("openrlhf/trainer/ray/ppo_actor.py", "training_step: output lives until return")
    terms = [_t(f"{role}.logits.held_output", lg.logits_bytes(spec, n, lg.LOGITS_FP32), phase, src, Category.ACTIVATION)]
    if head.entropy and not head.entropy_in_loss:
        terms.append(_t(f"{role}.loss.entropy", lg.entropy_bytes(spec, n), phase, src, Category.TEMP))
    return tuple(terms)


def forward_only_terms(spec: ModelSpec, cfg: ActivationConfig, head: HeadConfig = HeadConfig(),
                       role: str = "reference", phase: Phase = Phase.MAKE_EXPERIENCE) -> tuple[Term, ...]:
    """Peak of a no-grad forward (reference, reward, teacher, RL make-experience): the larger of the
    logits moment (last hidden + bf16 + fp32 logits) and one layer's temporaries.

    Checked by: scripts/probe_activations.py (forward-only case)
    """
    frozen = replace(cfg, trainable=False, gradient_checkpointing=False)
    n, dt = act.num_tokens(frozen), frozen.compute_dtype
    src = lg.openrlhf_source("openrlhf/models/actor.py", "Actor.forward under torch.no_grad")
    inputs = FORWARD_ONLY_HIDDEN_COPIES if spec.num_hidden_layers > 1 else 1
    moments = [[
        _t(f"{role}.activations.hidden", inputs * bytes_for(n * spec.hidden_size, dt), phase, src),
        _t(f"{role}.activations.rotary", act.rotary_saved_bytes(spec, replace(frozen, trainable=True)), phase, src),
        _t(f"{role}.activations.layer_forward", max(
            layer_forward_nosave_bytes(spec, frozen, i) for i in range(spec.num_hidden_layers)), phase, src,
            Category.TEMP),
        _t(f"{role}.activations.attention_mask", attention_mask_bytes(spec, frozen), phase, src)]]
    if head.head == Head.LM:
        moments.append([_t(f"{role}.logits.fp32", lg.logits_bytes(spec, n, lg.LOGITS_FP32), phase, src,
                           Category.TEMP)] + _cast_moment(spec, frozen, head, role, phase))
    return _peak(moments)


def micro_step_transients(spec: ModelSpec, cfg: ActivationConfig, head: HeadConfig = HeadConfig(), *,
                          role: str = "policy", reference_role: str | None = None,
                          teacher: ModelSpec | None = None) -> dict[Phase, tuple[Term, ...]]:
    """One micro-step of a trained model, with a frozen model run between its forward and backward.

    - SFT, RM, PPO actor/critic: ``training_transients``.
    - DPO / KTO (``reference_role``): the reference's forward runs on the same (doubled) batch while the
      policy's forward-end tensors are alive (dpo_trainer.py ``fit``: policy forward, then the
      reference under ``no_grad``, then backward).
    - KD (``teacher``, head.kd): the teacher's forward and the KD loss run before backward.
    Checked by: tests/memory/test_activations.py::test_dpo_reference_rides_on_policy
    """
    phases = training_transients(spec, cfg, head, role)
    frozen_spec = teacher if teacher is not None else spec
    frozen_role = reference_role or ("teacher" if teacher is not None else None)
    if frozen_role is None:
        return phases
    end = [t for t in _resident_end(spec, cfg, head, role, Phase.FORWARD)]
    extra = list(forward_only_terms(frozen_spec, cfg, HeadConfig(), frozen_role, Phase.FORWARD))
    if head.kd:
        n = act.num_tokens(cfg)
        extra = [_t(f"{role}.loss.kd", lg.kd_loss_bytes(spec, n), Phase.FORWARD, lg.openrlhf_source(
            "openrlhf/models/loss.py", "KDLoss.forward", legacy=True), Category.TEMP)]
    # The previous micro-step's output (held_output_terms) is released once this step's model call has
    # returned and been bound, before the frozen model runs: only this step's fp32 logits (``end``) stay.
    candidate = tuple(t for t in end + extra if t.bytes > 0)
    if sum(t.bytes for t in candidate) > sum(t.bytes for t in phases[Phase.FORWARD]):
        phases = {**phases, Phase.FORWARD: candidate}
    if head.kd and sum(t.bytes for t in candidate) > sum(t.bytes for t in phases[Phase.BACKWARD]):
        phases = {**phases, Phase.BACKWARD: tuple(replace(t, phase=Phase.BACKWARD) for t in candidate
                                                  if not t.path.endswith("held_output"))}
    return phases


def total(terms: tuple[Term, ...]) -> int:
    """Bytes of a moment."""
    return sum(t.bytes for t in terms)

