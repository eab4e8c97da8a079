"""The fake engine: a full-size OpenRLHF step under FakeTensorMode, measured by MemTracker.

Recipe from /work/shared/reference/tracing.md §1: build on ``meta``, swap every parameter and buffer for
a fake cpu tensor (tied weights kept), register the models with the tracker before entering it, guard
frozen parameters, ``reset_mod_stats()`` between iterations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from memplan.tracing.build import PARAM_DTYPES, BuiltModels, build_models, swap_to_fake, unique_params
from memplan.tracing.config import NUM_ITERATIONS, TraceRequest
from memplan.tracing.precision import EMULATION_NOTE, EmulatedMixedPrecisionAdam
from memplan.tracing.result import RankMeasurement, TraceResult
from memplan.tracing.steps import STEPS, StepContext
from memplan.tracing.track import PhaseTracker

#: How a fake-engine trace differs from OpenRLHF on GPUs (see steps.py for the details).
FAKE_NOTES = (
    "log-probs via OpenRLHF's torch fallback (gather + logsumexp in 1024-row chunks); GPU installs use "
    "flash-attn's Triton cross_entropy_loss, which keeps no extra vocab-wide tensor in the forward",
    "the all-ones attention mask is not passed to the HF model under fake tensors (HF takes the same causal "
    "path it takes for an all-ones mask on GPU)",
    "MemTracker counts tensor storages exactly (no 512 B rounding on cpu); caching-allocator reserve, "
    "fragmentation, CUDA context, NCCL and cuBLAS workspaces are not included",
    "gradient accumulation 1: every iteration ends with an optimizer step",
)

Progress = Callable[[str], None]


def _notes(request: TraceRequest) -> tuple[str, ...]:
    notes = list(FAKE_NOTES)
    if request.attn_implementation.traced is not request.attn_implementation:
        notes.append("flash_attention_2 traced as sdpa (CPU flash kernel: output + logsumexp saved, no s x s scores)")
    if request.zero_stage:
        notes.append(f"zero_stage {request.zero_stage} at world size 1 partitions nothing; DeepSpeed's buckets for "
                     "this stage are not emulated (see the deepspeed-cpu engine)")
    if request.method.value in ("sft", "prm", "kd"):
        notes.append("as in OpenRLHF's trainer loop, the model output (fp32 logits; for kd also teacher_logits) stays "
                     "bound to a loop variable through backward, the optimizer step and the next iteration's forward")
    if request.method.value == "kto":
        notes.append("as in OpenRLHF, policy_returns keeps the unmatched-half KL log-probs, used only detached, "
                     "so that forward's autograd graph stays alive through backward, the optimizer step and the next forward")
    if request.packing_samples:
        notes.append("packing: the micro-batch is one row of micro_train_batch_size x max_len tokens with "
                     "restarting positions; attention runs causal over the whole row (same memory as varlen flash)")
    return tuple(notes)


def count_models(built: BuiltModels, request: TraceRequest) -> dict[str, dict[str, Any]]:
    """role -> name and parameter counts, counted from the built modules."""
    role = "reward" if request.method.value == "rm" else "policy"
    out = {role: _counts(built.policy, request.model)}
    if built.frozen is not None and request.second_model_role and request.ref_pretrain:
        out[request.second_model_role] = _counts(built.frozen, request.ref_pretrain)
    return out


def _counts(module: nn.Module, name: str) -> dict[str, Any]:
    params = unique_params(module)
    return {"name": name, "num_params": sum(p.numel() for p in params),
            "trainable_params": sum(p.numel() for p in params if p.requires_grad)}


@contextlib.contextmanager
def unpacked_batches(*, enabled: bool) -> Iterator[None]:
    """Tell transformers' mask builder the batch is not packed.

    Under fake tensors ``masking_utils.find_packed_sequence_indices`` cannot read ``position_ids`` and
    assumes packing, so HF builds a T × T mask, SDPA drops grouped-query attention (k/v repeated to every
    head) and the CPU kernel keeps a mask copy per layer; a real unpacked batch on a GPU gets none of this.
    Source: transformers v5.24.0 masking_utils.py ``find_packed_sequence_indices``. Restored on exit.
    """
    if not enabled:
        yield
        return
    from transformers import masking_utils

    original = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None  # type: ignore[assignment]
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


def run_fake(request: TraceRequest, progress: Progress, module_depth: int = 0) -> TraceResult:
    """Trace ``NUM_ITERATIONS`` iterations of ``request`` at full size; returns what was measured."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    start = time.monotonic()
    progress("building the model on the meta device")
    with torch.device("meta"):
        built = build_models(request)
    fake_mode = FakeTensorMode()
    memo: dict[int, nn.Parameter] = {}
    for module in (built.policy, built.frozen):
        if module is not None:
            swap_to_fake(module, fake_mode, PARAM_DTYPES[request.param_dtype], memo)
    tracker = PhaseTracker()
    models = [m for m in (built.policy, built.frozen) if m is not None]
    tracker.guard_frozen(p for m in models for p in m.parameters())
    with fake_mode, unpacked_batches(enabled=not request.packing_samples):
        tracker.track_external(*models)
        measurement = _iterate(request, built, tracker, progress, module_depth)
    return TraceResult(request=request, ranks=(measurement,), models=count_models(built, request),
                       notes=_notes(request), emulated=(EMULATION_NOTE,), wall_seconds=time.monotonic() - start)


def _iterate(request: TraceRequest, built: BuiltModels, tracker: PhaseTracker, progress: Progress,
             module_depth: int) -> RankMeasurement:
    states: dict[str, int] = {}
    with tracker:
        states["param_bytes"] = tracker.current_categories()["param"]
        with tracker.category("optimizer"):
            optimizer = EmulatedMixedPrecisionAdam(built.policy)
        grad_bytes: list[int] = []

        def backward(loss: torch.Tensor) -> None:
            loss.backward()
            grad_bytes.append(tracker.current_categories()["grad"])
            states["grad_bytes_measured"] = sum(p.grad.numel() * p.grad.element_size()
                                                for p in optimizer.low if p.grad is not None)

        def set_phase(it: int, phase: str) -> None:
            progress(f"iteration {it}/{NUM_ITERATIONS}: {phase.replace('_', ' ')}")
            tracker.set_phase(it, phase)

        ctx = StepContext(request=request, policy=built.policy, frozen=built.frozen,
                          vocab_size=built.policy_config.vocab_size, set_phase=set_phase, backward=backward,
                          optimizer_step=lambda: optimizer.step(lambda: tracker.category("grad")),
                          pass_attention_mask=False)
        carry: dict[str, Any] = {}
        step = STEPS[request.method]
        for it in range(1, NUM_ITERATIONS + 1):
            step(ctx, it, carry)
            tracker.set_phase(it, "end")
            modules = tuple(tracker.module_rows(module_depth, _roles(built, request))) if module_depth else ()
            if it < NUM_ITERATIONS:
                tracker.reset_mod_stats()
        states.update(_model_states(built, optimizer, grad_bytes[-1]))
    iterations, transient = tracker.iteration_peaks()
    return RankMeasurement(rank=0, iterations=iterations, model_states=states, modules=modules,
                           transient_iterations=transient)


def _roles(built: BuiltModels, request: TraceRequest) -> dict[int, str]:
    roles = {id(m): "policy" for m in built.policy.modules()}
    if built.frozen is not None:
        roles.update({id(m): request.second_model_role or "frozen" for m in built.frozen.modules()})
    return roles


def _model_states(built: BuiltModels, optimizer: EmulatedMixedPrecisionAdam, grad_tracked: int) -> dict[str, int]:
    params = unique_params(built.policy)
    return {
        "policy_num_params": sum(p.numel() for p in params),
        "policy_param_bytes": sum(p.numel() * p.element_size() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "grad_bytes_tracked": grad_tracked,
        "master_bytes": optimizer.master_bytes(),
        "adam_moment_bytes": optimizer.adam_moment_bytes(),
    }
