"""Vocabulary-sized tensors: logits, the fp32 copy OpenRLHF makes, log-prob and loss temporaries.

Read from OpenRLHF/OpenRLHF@3c3be62 (main, version 0.11.0, 2026-08-13): ``openrlhf/models/actor.py``
(``Actor.forward``: ``output["logits"] = output["logits"].to(torch.float32)``, then
``log_probs_from_logits``), ``openrlhf/models/utils.py`` (``log_probs_from_logits``,
``_logsumexp_by_chunk``, ``compute_entropy``), ``openrlhf/models/model.py`` (value head),
``openrlhf/trainer/{sft,dpo,rm}_trainer.py``; KD and KTO from tag v0.9.5 (c0e2ee2), where they
were last shipped (``openrlhf/models/loss.py::KDLoss``, ``trainer/kd_trainer.py``).

Symbols: N tokens on this device, V vocabulary, h hidden size. "u" below is one fp32 [N, V] tensor.

Timeline of one trained causal-LM micro-step (what is alive when):

    forward end of the LM head:  bf16 logits (2·N·V) → fp32 copy (4·N·V); the bf16 one is freed
                                 once the dict entry is replaced; the fp32 copy stays alive through
                                 backward (saved by the cross-entropy, and the trainer keeps ``output``)
    log-prob backward, GPU:      flash-attn's Triton ``cross_entropy_loss`` allocates dlogits
                                 (``torch.empty_like``, fp32) and the ``.to(fp32)`` backward casts it
                                 to bf16: + 4·N·V + 2·N·V at the cast
    log-prob backward, fallback: gather and each logsumexp chunk's slice each produce a full fp32
                                 [N, V] gradient and autograd sums them out of place: + 3u at the sum
    LM-head backward:            bf16 gradient (2·N·V) + the weight gradient V × h in flight
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from memplan.dtypes import DType, bytes_for
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.model.spec import ModelSpec
from memplan.sources import Source, code

OPENRLHF = "OpenRLHF/OpenRLHF"
#: main at version 0.11.0 (2026-08-13); flag names and trainers as in reference/openrlhf.md §0.
OPENRLHF_COMMIT = "3c3be6234e0cb353e76bb8019947db9dfe99fca7"
#: last tag with train_kd / train_kto / train_prm.
OPENRLHF_LEGACY_TAG = "v0.9.5"
FLASH_ATTN_CE = "Dao-AILab/flash-attention:flash_attn/ops/triton/cross_entropy.py@058ad35"
#: OpenRLHF casts the LM logits to fp32 (PR #634).
LOGITS_FP32 = DType.FP32
#: Fallback path: gather backward (zeros + scatter_add), each chunk's ``slice_backward`` and the
#: out-of-place accumulation of the two leave three fp32 [N, V] tensors alive at the sum.
TORCH_CHUNKED_BACKWARD_COPIES = 3
#: KD loss (v0.9.5 ``KDLoss.forward``) at ``masked_fill``: teacher probs, student log-probs, their
#: product and the filled copy are fp32 [N, V]; ``isinf`` keeps a bool mask; GPTLMLoss's
#: ``log_softmax`` output and the teacher's fp32 logits stay alive too (fp32 copies, see kd_terms).
KD_FP32_COPIES_AT_PEAK = 6
KD_BOOL_MASKS = 1


class LogProbImpl(StrEnum):
    """How ``log_probs_from_logits`` runs for fp32 logits."""

    FLASH_ATTN_TRITON = "flash_attn_triton"
    """flash-attn installed (every GPU install of OpenRLHF): fused Triton cross-entropy, no V-wide
    temporary in forward, one fp32 dlogits in backward."""
    TORCH_CHUNKED = "torch_chunked"
    """ImportError fallback (a CPU trace): gather + logsumexp over 1024-row chunks (OpenRLHF); verl's
    ``logprobs_from_logits_v2``, row by row (:func:`packed_head_moments`)."""


class Head(StrEnum):
    """What sits on top of the decoder stack."""

    LM = "lm"
    """Causal-LM head → fp32 logits → per-token log-probs (SFT, DPO, KTO, PPO actor, reference)."""
    VALUE = "value"
    """``Linear(hidden, 1)`` value head (reward model, critic): no vocabulary tensor."""


def openrlhf_source(path: str, detail: str, *, legacy: bool = False) -> Source:
    """Citation of an OpenRLHF file at the commit memplan read."""
    ref = OPENRLHF_LEGACY_TAG if legacy else OPENRLHF_COMMIT[:7]
    return code(f"{OPENRLHF}:{path}@{ref}", detail)


def logits_bytes(spec: ModelSpec, num_tokens: int, dtype: DType) -> int:
    """One [N, V] tensor of ``dtype``: the LM-head output (compute dtype) or its fp32 copy.

        bytes = N · V · size(dtype)

    Source: openrlhf_source("openrlhf/models/actor.py", "Actor.forward: .to(torch.float32)").
    Checked by: tests/memory/test_logits.py::test_fp32_logits_llama3_8b
    """
    return bytes_for(num_tokens * spec.vocab_size, dtype)


def softcap_saved_bytes(spec: ModelSpec, num_tokens: int, dtype: DType, *, trained: bool) -> int:
    """Gemma 2 final-logit soft-capping ``tanh(logits / c) * c``: ``tanh`` keeps its output.

    Source: huggingface/transformers:src/transformers/models/gemma2/modeling_gemma2.py@v5.24.0
    (``Gemma2ForCausalLM.forward``).
    Checked by: tests/memory/test_logits.py::test_gemma2_softcap
    """
    if spec.final_logit_softcapping is None or not trained:
        return 0
    return logits_bytes(spec, num_tokens, dtype)


def softcap_forward_temp_bytes(spec: ModelSpec, num_tokens: int, dtype: DType) -> int:
    """Extra [N, V] tensor alive at the fp32 cast with soft-capping: the ``tanh`` output next to the
    capped logits (both in the compute dtype); counted only when not already kept for backward."""
    if spec.final_logit_softcapping is None:
        return 0
    return logits_bytes(spec, num_tokens, dtype)


def logprob_backward_bytes(spec: ModelSpec, num_tokens: int, impl: LogProbImpl, dtype: DType) -> int:
    """Gradient tensors of the log-prob computation alive at its worst moment (beyond the fp32 logits).

        flash-attn Triton CE:  4·N·V (fp32 dlogits) + 2·N·V (its bf16 cast by the .to backward)
        torch fallback:        3 × 4·N·V (see TORCH_CHUNKED_BACKWARD_COPIES)

    Source: FLASH_ATTN_CE (``CrossEntropyLoss.backward``: ``dlogits = torch.empty_like(logits)``,
    ``inplace_backward=False`` as OpenRLHF calls it); openrlhf_source("openrlhf/models/utils.py",
    "log_probs_from_logits, _logsumexp_by_chunk").
    Assumes: the fallback's logsumexp kernel temporaries (chunk × V) are not counted (they sit below
    the dispatcher and a trace does not see them either).
    Checked by: tests/memory/test_logits.py::test_logprob_backward_by_hand; tracing test
    """
    fp32 = logits_bytes(spec, num_tokens, LOGITS_FP32)
    if impl == LogProbImpl.TORCH_CHUNKED:
        return TORCH_CHUNKED_BACKWARD_COPIES * fp32
    return fp32 + logits_bytes(spec, num_tokens, dtype)


def lm_head_weight_grad_bytes(spec: ModelSpec, dtype: DType, *, trained: bool) -> int:
    """The LM head's weight gradient V × h, allocated by its backward before the optimizer's hook
    takes it (ZeRO copies it into a bucket): a transient in the weight dtype.

    Source: torch ``linear`` backward (``mm``); deepspeed runtime/zero/stage_1_and_2.py@v0.19.8
    (``reduce_ready_partitions_and_remove_grads`` after the gradient exists).
    Checked by: tracing test (the trace tags it TEMP until the gradient hook runs)
    """
    if not trained:
        return 0
    return bytes_for(spec.vocab_size * spec.hidden_size, dtype)


def entropy_bytes(spec: ModelSpec, num_tokens: int) -> int:
    """``compute_entropy`` (``entropy_coef`` set): ``softmax(logits)`` over the fp32 logits, another
    fp32 [N, V] (kept for backward when trained).

    Source: openrlhf_source("openrlhf/models/utils.py", "compute_entropy").
    Assumes: ``torch.compile`` fuses ``pd * logits`` but keeps ``pd`` (the trace runs it eagerly).
    Checked by: tests/memory/test_logits.py::test_entropy; validation/traced_rl/rl-llama-3-8b-grpo-actor-entropy-*
    """
    return logits_bytes(spec, num_tokens, LOGITS_FP32)


#: fp32 [N, V] tensors the entropy's backward adds at its peak next to the kept softmax: the gradients of
#: ``pd * logits`` with respect to each factor (eager autograd; traced: validation/traced_rl/
#: rl-llama-3-8b-grpo-actor-entropy1e-3-s2048-b1.json holds three [N, V] more than without entropy).
ENTROPY_BACKWARD_FP32_COPIES = 2


def entropy_backward_bytes(spec: ModelSpec, num_tokens: int) -> int:
    """``compute_entropy``'s backward (entropy coefficient non-zero): two fp32 [N, V] gradients next to the
    saved softmax.

    Source: openrlhf_source("openrlhf/models/utils.py", "compute_entropy"); torch autograd of ``mul``/``softmax``.
    Assumes: eager autograd; on a GPU ``torch.compile`` may fuse part of it (not measured).
    Checked by: validation/traced_rl/rl-llama-3-8b-grpo-actor-entropy1e-3-s2048-b1.json (training_transient)
    """
    return ENTROPY_BACKWARD_FP32_COPIES * logits_bytes(spec, num_tokens, LOGITS_FP32)


def kd_loss_bytes(spec: ModelSpec, num_tokens: int) -> int:
    """KD (v0.9.5) vocabulary tensors at the KD loss's ``masked_fill``, next to the student's fp32
    logits: GPTLMLoss's log_softmax output, the teacher's fp32 logits, teacher probs, student
    log-probs, their product and its filled copy (6 fp32) plus the ``isinf`` mask (bool).

    Source: openrlhf_source("openrlhf/models/loss.py", "KDLoss.forward, GPTLMLoss.forward", legacy=True);
    openrlhf_source("openrlhf/trainer/kd_trainer.py", "fit", legacy=True).
    Assumes: the backward never exceeds this moment (its chain frees the product before the
    log_softmax gradient).
    Checked by: tests/memory/test_logits.py::test_kd_by_hand; validation/traced/llama-2-7b-kd-s2048-b2-ckpt.json
    (forward transient at this moment, to 0.01 %)
    """
    fp32 = logits_bytes(spec, num_tokens, LOGITS_FP32)
    return KD_FP32_COPIES_AT_PEAK * fp32 + KD_BOOL_MASKS * logits_bytes(spec, num_tokens, DType.BOOL)


def value_head_bytes(num_tokens: int, dtype: DType) -> int:
    """Values [N] from ``Linear(hidden, 1)``: the reward/critic head's only output.

    Source: openrlhf_source("openrlhf/models/model.py", "_get_reward_model.forward").
    Checked by: tests/memory/test_logits.py::test_value_head_is_tiny
    """
    return bytes_for(num_tokens, dtype)


#: Bytes per logit of the non-chunked entropy's temporaries over the bf16 logits at its peak: the softmax
#: ``pd`` (2) and either ``logsumexp``'s internal ``self - maxes`` (2; its ``exp`` is in place) or the product
#: ``pd * logits`` (2), all in the logits' dtype (verl-project/verl verl/utils/torch_functional.py@v0.9.1
#: ``entropy_from_logits`` L231-245; pytorch/pytorch aten/src/ATen/native/ReduceOps.cpp@v2.11.0
#: ``logsumexp_out_impl``: ``at::sum_out(result, at::exp(self - maxes))``, one temporary as profiled with
#: ``torch.profiler(profile_memory=True)``: ``aten::sub`` allocates N·V·2, ``exp`` none). verl's docs give
#: ``tokens × V × (4 + 2 + 1)`` (docs/perf/perf_tuning.rst@v0.9.1 L237-249), a rule for fp32 logits.
ENTROPY_FULL_BYTES_PER_LOGIT = 4
#: Bytes per logit of the entropy's backward beside the logits' gradient, when it is in the loss: three bf16
#: [N, V] tensors at once (``mul``'s two gradients, ``grad·logits`` and ``grad·pd``, then the softmax's and
#: logsumexp's backward outputs as they accumulate); pytorch/pytorch tools/autograd/derivatives.yaml@v2.11.0
#: (``mul``, ``_softmax``, ``logsumexp``); measured with scripts/probe_verl_head.py (7 N·V·2 at the peak with the
#: logits, the softmax and the log-probs' gradient).
ENTROPY_BACKWARD_BYTES_PER_LOGIT = 6
#: Bytes per logit of one chunk of the chunked entropy: the chunk's fp32 copy, its fp32 softmax and their fp32
#: product (verl-project/verl verl/utils/torch_functional.py@v0.9.1 ``entropy_from_logits_with_chunking``
#: L264-269: ``.float()``, ``softmax``, ``pd_chunk * logits_chunk``).
ENTROPY_CHUNK_BYTES_PER_LOGIT = 12
#: Tokens per chunk of the fused (hidden-state) log-prob/entropy path (verl-project/verl
#: verl/utils/experimental/torch_functional.py@v0.9.1 L98-160).
FUSED_CHUNK_TOKENS = 512
#: Bytes per logit of the bf16 logits under autocast, and of each [N, V] tensor derived from them in bf16.
BF16_LOGIT = 2


@dataclass(frozen=True, slots=True)
class PackedHead:
    """The LM head's tensors at each moment of one pass over a packed row (terms of one moment sum)."""

    at_head: tuple[Term, ...]
    """As the LM head's matmul returns, inside the model's forward: the logits."""
    after: tuple[Term, ...]
    """After the model returns: the entropy and then the log-probs computed from the logits (their worst)."""
    backward: tuple[Term, ...]
    """The loss's and log-probs' backward, before the LM head's (trained passes; else empty)."""


def packed_head_moments(spec: ModelSpec, num_tokens: int, *, role: str, phase: Phase, impl: LogProbImpl,
                        entropy: bool, entropy_chunk: int | None, fused: bool, trained: bool) -> PackedHead:
    """The LM head's tensors at its moments for one packed row of ``N`` = ``num_tokens`` tokens when the head
    runs under autocast (bf16 logits, no fp32 copy). verl computes the entropy first, then the log-probs.

        logits:   N·V·2 from the LM head on (none with the fused kernels: one chunk of
                  FUSED_CHUNK_TOKENS rows in fp32, ENTROPY_CHUNK_BYTES_PER_LOGIT per logit, at every moment)
        entropy:  N·V·ENTROPY_FULL_BYTES_PER_LOGIT while it runs (chunked: min(N, chunk)·V·12); with
                  grad, its softmax N·V·2 stays saved for the backward
        log-probs, flash-attn's Triton cross-entropy (FLASH_ATTN_TRITON): fp32 math in the kernel, no [N, V]
                  tensor; it saves the logits, and its backward writes their gradient into them
                  (``inplace_backward``, verl's choice without entropy) or into a new N·V·2
        log-probs, ``logprobs_from_logits_v2`` (TORCH_CHUNKED: no flash-attn, or VERL_DISABLE_FLASH_ATTN_CE=1):
                  bf16 logits go row by row through ``log_softmax``, which saves only its output (N·V·2 in
                  all: the logits are freed after forward unless the entropy keeps them); its backward holds
                  every row's gradient until ``unbind``'s backward stacks them: 2 · N·V·2
        entropy in the loss (``trained and entropy``): its product keeps the logits and its softmax; its
                  backward N·V·ENTROPY_BACKWARD_BYTES_PER_LOGIT beside the logits' gradient N·V·2

    Source: verl-project/verl verl/workers/engine/fsdp/transformer_impl.py@v0.9.1 L1382-1430 (``logits_rmpad``
    from the HF head under autocast; entropy, then ``logprobs_from_logits`` with ``inplace_backward`` unless
    the entropy is computed); Dao-AILab/flash-attention flash_attn/ops/triton/cross_entropy.py@v2.8.3
    ``CrossEntropyLoss.backward`` (``dlogits = logits if inplace_backward else torch.empty_like(logits)``);
    verl/utils/torch_functional.py
    @v0.9.1 L73-107 (flash-attn cross-entropy unless ``VERL_DISABLE_FLASH_ATTN_CE``, else
    ``logprobs_from_logits_v2``), L173-210 (row-wise ``log_softmax`` for bf16), L231-270 (entropy, chunked
    entropy); pytorch/pytorch tools/autograd/derivatives.yaml@v2.11.0 (``unbind``: ``stack`` of the row
    gradients; ``_log_softmax`` saves its result); reference/verl.md §4.
    Assumes: temperature 1 (no scaled copy of the logits); a bf16 compute dtype; ``entropy`` with ``trained``
    means the entropy is in the loss (its graph is kept).
    """
    src = code("verl-project/verl:verl/workers/engine/fsdp/transformer_impl.py@v0.9.1",
               "logits_rmpad under autocast, entropy then log-probs from them L1382-1430")
    v = spec.vocab_size
    nv = num_tokens * v

    def t(name: str, nbytes: int, category: Category = Category.TEMP) -> Term:
        return Term(path=f"{role}.{name}", bytes=nbytes, category=category, device=Device.GPU, source=src,
                    phase=phase)

    if fused:
        chunk = (t("logits.fused_chunk", min(num_tokens, FUSED_CHUNK_TOKENS) * v * ENTROPY_CHUNK_BYTES_PER_LOGIT),)
        return PackedHead(at_head=(), after=chunk, backward=chunk if trained else ())
    logits = t("logits.bf16", nv * BF16_LOGIT, Category.ACTIVATION)
    torch_path = impl == LogProbImpl.TORCH_CHUNKED
    moments: list[tuple[Term, ...]] = [(logits,)]
    saved: list[Term] = []
    if entropy:
        per = (min(num_tokens, entropy_chunk) * v * ENTROPY_CHUNK_BYTES_PER_LOGIT if entropy_chunk
               else nv * ENTROPY_FULL_BYTES_PER_LOGIT)
        moments.append((logits, t("logits.entropy", per)))
        if trained and not entropy_chunk:
            saved.append(t("logits.entropy_softmax_saved", nv * BF16_LOGIT, Category.ACTIVATION))
    if trained and torch_path:
        saved.append(t("logits.log_softmax_saved", nv * BF16_LOGIT, Category.ACTIVATION))
    moments.append((logits, *saved))
    after = max(moments, key=lambda ts: sum(x.bytes for x in ts))
    if not trained:
        return PackedHead(at_head=(logits,), after=after, backward=())
    # The logits outlive the forward only if a backward needs them: flash-attn's kernel saves them (and with
    # ``inplace_backward``, verl's choice without entropy, writes their gradient into them); the entropy's
    # product saves them; ``log_softmax`` saves only its output.
    kept = [x for x in saved if x.path.endswith("entropy_softmax_saved")]
    if not torch_path or entropy:
        kept.insert(0, logits)
    grads = [] if not torch_path and not entropy else [t("logits.grad", nv * BF16_LOGIT)]
    if torch_path:
        grads.append(t("logits.row_grads", nv * BF16_LOGIT))
    if entropy:
        grads.append(t("logits.entropy_grad", nv * ENTROPY_BACKWARD_BYTES_PER_LOGIT if not entropy_chunk
                       else min(num_tokens, entropy_chunk) * v * ENTROPY_CHUNK_BYTES_PER_LOGIT))
    return PackedHead(at_head=(logits,), after=after, backward=(*kept, *grads))
