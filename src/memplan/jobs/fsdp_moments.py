"""One FSDP rank's pass, moment by moment: the model's own tensors and FSDP's buffers aligned in time.

A phase's peak is the largest *moment*, not the sum of each side's worst: FSDP's largest buffers (the
root unsharded, a reduce-scatter input) and the model's (the logits, the saved activations) are alive
together only at some moments. The moments, in the order a pass runs them:

forward (a log-prob pass, or a training micro-step's forward):
    layers   the stack's own peak (memory/transient.py, no LM head)      + FSDP's worst layer compute moment
    gather   what the stack keeps (no layer temporaries)                  + FSDP's worst layer all-gather moment
    head     saved tensors + last hidden state + the logits               + root unsharded, last layer's
                                                                            all-gather held (``head_moment``)
    after    saved tensors + entropy / log-prob temporaries from logits   + only what does not reshard
backward:
    loss     saved tensors + the log-probs' and entropy's backward        + only what does not reshard
    LM head  saved tensors + logits' gradient + hidden-state gradient     + root again, last layer prefetched,
                                                                            the head's weight gradient
    prefetch what the stack keeps + hidden-state gradient                 + the next unit's all-gather issued
    layers   the stack's backward peak                                    + FSDP's worst layer compute moment
    reduce   what the stack keeps + hidden-state gradient                 + FSDP's worst layer reduce moment
    root     the hidden-state gradient (+ a tied embedding's two addends) + FSDP's root moments
    (each reduce also once its gradients are copied in: the reduce-scatter output beside the input)

Sharded gradients (FSDP2) exist from each unit's reduce-scatter to the optimizer step: with one micro-batch
per step the loss and LM-head moments have none and the layer and root moments the layers' (the root's
comes at its own reduce); with gradient accumulation all of them, from the second micro-batch on.

Formulas are in memory/ (fsdp_transient.py, transient.py, logits.py); this module only aligns them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from memplan.dtypes import bytes_for
from memplan.memory import activations as act
from memplan.memory.activations import ActivationConfig
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.memory.fsdp import FsdpSharding, FsdpUnit, FsdpVersion, sharded_grads
from memplan.memory.fsdp_transient import (
    adam_step_temporaries, after_forward_moment, backward_moments as fsdp_backward_moments,
    backward_start_moment, forward_moments, head_moment, is_lm_head, no_sync_grads, prefetch_moments,
    reduce_output_moment,
)
from memplan.memory.logits import Head, LogProbImpl, PackedHead, lm_head_weight_grad_bytes, packed_head_moments
from memplan.memory.transient import (
    BackwardStage, HeadConfig, backward_moments, forward_only_terms, saved_through_backward, training_transients,
)
from memplan.model.spec import ModelSpec
from memplan.sources import code

_HF = act.hf_source("llama", "LlamaForCausalLM.forward (last hidden state; its gradient)")
_VALUE = HeadConfig(head=Head.VALUE)
#: FSDP terms that mark a unit's reduce moment; the model's terms that belong to the layer being backwarded.
_REDUCE = ("reduce_scatter_input", "grad_reduce_cast")
_LAYER_OWN = ("activations.recomputed", "activations.current_layer")


def _total(terms: Sequence[Term]) -> int:
    return sum(t.bytes for t in terms)


def _worst(moments: Sequence[Sequence[Term]]) -> list[Term]:
    return list(max(moments, key=_total, default=[]))


def _hidden(spec: ModelSpec, cfg: ActivationConfig, role: str, phase: Phase, name: str, category: Category) -> Term:
    """One [N, h] tensor in the compute dtype (the last hidden state, or its gradient)."""
    return Term(path=f"{role}.{name}", bytes=bytes_for(act.num_tokens(cfg) * spec.hidden_size, cfg.compute_dtype),
                category=category, device=Device.GPU, source=_HF, phase=phase)


def head_of(spec: ModelSpec, cfg: ActivationConfig, *, role: str, phase: Phase, impl: LogProbImpl, entropy: bool,
            entropy_chunk: int | None, fused: bool) -> PackedHead:
    """The LM head's moments for the pass ``cfg`` describes (trained when ``cfg.trainable``)."""
    return packed_head_moments(spec, act.num_tokens(cfg), role=role, phase=phase, impl=impl, entropy=entropy,
                               entropy_chunk=entropy_chunk, fused=fused, trained=cfg.trainable)


def forward_pass(spec: ModelSpec, cfg: ActivationConfig, head: PackedHead | None, units: Sequence[FsdpUnit],
                 sharding: FsdpSharding | None, *, role: str, phase: Phase) -> list[Term]:
    """The worst moment of a forward (module docstring); ``head`` None: a value head (no [N, V] tensor);
    ``sharding`` None: the model alone, unsharded (no FSDP buffer)."""
    if cfg.trainable:
        body = list(training_transients(spec, cfg, _VALUE, role)[Phase.FORWARD])
        saved = list(saved_through_backward(spec, cfg, role, phase))
        hidden: list[Term] = []
    else:
        body = list(forward_only_terms(spec, cfg, _VALUE, role, phase=phase))
        saved = []
        hidden = [_hidden(spec, cfg, role, phase, "activations.last_hidden", Category.ACTIVATION)]
    fsdp = sharding is not None
    layer_moments = forward_moments(units, sharding, role=role, phase=phase) if fsdp else []
    gathering = [m for m in layer_moments if any(t.path.endswith("all_gather_held") for t in m)]
    computing = [m for m in layer_moments if m not in gathering]
    moments = [body + _worst(computing)]
    if gathering:  # a layer's all-gather, before it computes: the model holds only what it keeps
        moments.append([t for t in body if t.category != Category.TEMP] + _worst(gathering))
    if head is not None:
        at_head = head_moment(units, sharding, role=role, phase=phase) if fsdp else []
        after = after_forward_moment(units, sharding, role=role, phase=phase) if fsdp else []
        moments.append(saved + hidden + list(head.at_head) + at_head)
        moments.append(saved + list(head.after) + after)
    return [replace(t, phase=phase) for t in _worst(moments)]


def _grads(units: Sequence[FsdpUnit], sharding: FsdpSharding | None, *, role: str, phase: Phase,
           accumulating: bool, layers_only: bool) -> list[Term]:
    """The sharded gradients alive at a moment (module docstring)."""
    if sharding is None:
        return []
    if accumulating or sharding.version == FsdpVersion.FSDP1:
        return [sharded_grads(units, sharding, role=role, phase=phase)]
    if not layers_only:
        return []
    return [sharded_grads(units[:-1], sharding, role=role, phase=phase)] if len(units) > 1 else []


def _tied_addends(spec: ModelSpec, cfg: ActivationConfig, role: str, phase: Phase) -> list[Term]:
    """A tied embedding's LM-head and embedding gradients, alive while autograd sums them into the root's
    gradient at the end of backward (the sum is FSDP's unsharded root gradient).

    Source: memory/transient.py ``_embedding_grads`` (three V × h tensors at the sum, probed with
    scripts/probe_activations.py on gemma-2-9b).
    """
    if not (spec.tie_word_embeddings and cfg.trainable and cfg.lora_rank == 0):
        return []
    src = code("pytorch/pytorch:torch/csrc/autograd/input_buffer.cpp@v2.11.0",
               "AccumulateGrad input buffer: the two gradients of a tied weight summed out of place")
    return [Term(path=f"{role}.backward.tied_grad_addends", bytes=2 * bytes_for(spec.vocab_size * spec.hidden_size,
                                                                              cfg.compute_dtype),
                 category=Category.TEMP, device=Device.GPU, source=src, phase=phase)]


def _unit_model(unit: FsdpUnit, by_layer: dict[int, list[Term]], at_head: list[Term], grad_h: Term) -> list[Term]:
    """The model's own tensors while ``unit``'s backward runs: a decoder layer's moment, the LM head's, or (the
    input embedding, another unit) the incoming hidden-state gradient."""
    index = unit.name.rsplit(".", 1)[-1]
    if index.isdigit() and int(index) in by_layer:
        return by_layer[int(index)]
    return at_head if is_lm_head(unit) and at_head else [grad_h]


def _lm_head_grad(spec: ModelSpec, cfg: ActivationConfig, role: str, phase: Phase) -> list[Term]:
    """Without FSDP (whose root gradients count it): the LM head's weight gradient as its matmul returns it."""
    src = code("pytorch/pytorch:tools/autograd/derivatives.yaml@v2.11.0", "mm backward: the weight gradient V x h")
    nbytes = lm_head_weight_grad_bytes(spec, cfg.compute_dtype, trained=cfg.trainable and cfg.lora_rank == 0)
    return [Term(path=f"{role}.backward.lm_head_weight_grad", bytes=nbytes, category=Category.TEMP, device=Device.GPU,
                 source=src, phase=phase)]


def backward_pass(spec: ModelSpec, cfg: ActivationConfig, head: PackedHead | None, units: Sequence[FsdpUnit],
                  sharding: FsdpSharding | None, *, role: str, accumulating: bool) -> list[Term]:
    """The worst moment of a training micro-step's backward (module docstring); ``sharding`` None: the model
    alone (its gradients are not counted)."""
    phase = Phase.BACKWARD
    saved = list(saved_through_backward(spec, cfg, role, phase))
    grad_h = _hidden(spec, cfg, role, phase, "backward.grad_hidden", Category.TEMP)
    fsdp = fsdp_backward_moments(units, sharding, role=role, phase=phase) if sharding is not None else [[], []]
    layer_fsdp, root_fsdp = fsdp[:-2] or [[]], fsdp[-2:]
    walk = backward_moments(spec, cfg, _VALUE, role, phase)
    by_layer = {i: list(terms) for terms, (stage, i) in walk if stage == BackwardStage.LAYER}
    layer_grads = _grads(units, sharding, role=role, phase=phase, accumulating=accumulating, layers_only=True)
    early_grads = _grads(units, sharding, role=role, phase=phase, accumulating=accumulating, layers_only=False)
    moments = [list(terms) + early_grads for terms, (stage, _) in walk if stage == BackwardStage.NORM]
    # the logits' gradient: its own tensor, or (flash-attn in place) the logits' storage
    logits_grad = [] if head is None else [t for t in head.backward if t.path.endswith("logits.grad")] or [
        t for t in head.backward if t.path.endswith("logits.bf16")]
    at_head = saved + logits_grad + [grad_h]
    non_root = list(units[:-1]) if sharding is not None else []
    head_unit = bool(non_root) and is_lm_head(non_root[-1])
    prefetching = prefetch_moments(units, sharding, role=role, phase=phase) if sharding is not None else []
    if sharding is not None and len(layer_fsdp) == 2 * len(non_root):
        for k, unit in enumerate(reversed(non_root)):  # each unit's backward, then its reduce-scatter
            done = non_root[len(non_root) - k:]
            grads = layer_grads if accumulating else (
                [sharded_grads(done, sharding, role=role, phase=phase)] if done else [])
            model = _unit_model(unit, by_layer, at_head if head is not None else [], grad_h)
            resting = [t for t in model if t.category != Category.TEMP and not t.path.endswith(_LAYER_OWN)]
            if prefetching[k]:  # its pre-backward gathers the next unit before its own backward computes
                moments.append(resting + [grad_h] + prefetching[k] + grads)
            moments.append(model + layer_fsdp[2 * k] + grads)
            moments.append(resting + [grad_h] + layer_fsdp[2 * k + 1] + grads)
            moments.append(resting + [grad_h] + grads + reduce_output_moment(layer_fsdp[2 * k + 1], unit, sharding,
                                                                              role=role, phase=phase))
    else:  # no FSDP (or units FSDP walks differently): the worst of each side
        moments.append(_worst(list(by_layer.values())) + _worst(layer_fsdp) + layer_grads)
    for root in root_fsdp:
        moments.append([grad_h] + root + layer_grads)
    moments[-2] += _tied_addends(spec, cfg, role, phase)
    if sharding is not None:
        moments.append([grad_h] + layer_grads + reduce_output_moment(root_fsdp[-1], units[-1], sharding, role=role,
                                                                     phase=phase))
    if head is not None:
        after = after_forward_moment(units, sharding, role=role, phase=phase) if sharding is not None else []
        moments.append(saved + list(head.backward) + after + early_grads)
        if not head_unit:  # the LM head in the root: its backward with the root unsharded again
            start = backward_start_moment(units, sharding, role=role, phase=phase) if sharding is not None else []
            moments.append(at_head + (start or _lm_head_grad(spec, cfg, role, phase)) + early_grads)
    no_sync = no_sync_grads(units, sharding, role=role, phase=phase) if sharding is not None else []
    return [replace(t, phase=phase) for t in _worst(moments)] + no_sync


def optimizer_step(units: Sequence[FsdpUnit], sharding: FsdpSharding, *, role: str) -> list[Term]:
    """The optimizer step: every sharded gradient and AdamW's temporaries."""
    phase = Phase.OPTIMIZER_STEP
    return [sharded_grads(units, sharding, role=role, phase=phase),
            *adam_step_temporaries(units, sharding, role=role, phase=phase)]
