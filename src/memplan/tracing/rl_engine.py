"""The fake engine for one ``train_ppo_ray`` role: its full-size model under FakeTensorMode, measured by
MemTracker over ``NUM_ITERATIONS`` iterations of make-experience (+ training for the actor and critic).

Same recipe and precision emulation as the single-model fake engine (:mod:`memplan.tracing.fake_engine`):
build on ``meta``, swap in fake cpu tensors, guard frozen parameters, DeepSpeed's bf16 optimizer emulated
in torch for the trained roles (OpenRLHF's ``get_train_ds_config`` for the actor and critic, the eval
config without an optimizer for the reference and reward models; OpenRLHF/OpenRLHF@3c3be62,
``openrlhf/utils/deepspeed/deepspeed_utils.py``).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from memplan.tracing.build import PARAM_DTYPES, swap_to_fake, unique_params
from memplan.tracing.config import NUM_ITERATIONS
from memplan.tracing.fake_engine import FAKE_NOTES, Progress, unpacked_batches
from memplan.tracing.precision import EMULATION_NOTE, EmulatedMixedPrecisionAdam
from memplan.tracing.result import RankMeasurement, TraceResult
from memplan.tracing.rl_build import build_role_model
from memplan.tracing.rl_config import RlTraceRequest
from memplan.tracing.rl_steps import RL_NOTES, TRAINING_STEPS, RlContext, make_experience
from memplan.tracing.track import PhaseTracker

#: What a frozen role's trace emulates: nothing (no optimizer; DeepSpeed's eval engine holds the weights).
FROZEN_EMULATION_NOTE = ("frozen role (eval DeepSpeed config, no optimizer): weights in param_dtype only; "
                         "nothing emulated")


def _notes(request: RlTraceRequest) -> tuple[str, ...]:
    notes = [n for n in FAKE_NOTES if request.role.trained or not n.startswith("gradient accumulation")]
    notes += list(RL_NOTES)
    if request.attn_implementation.traced is not request.attn_implementation:
        notes.append("flash_attention_2 traced as sdpa (CPU flash kernel: output + logsumexp saved, no s x s scores)")
    if request.zero_stage and request.role.trained:
        notes.append(f"zero_stage {request.zero_stage} at world size 1 partitions nothing; DeepSpeed's buckets for "
                     "this stage are not emulated")
    if request.gradient_checkpointing and request.role.trained:
        notes.append("transformers' enable_input_require_grads hook (installed with checkpointing) acts only under grad "
                     "mode: in the no-grad make-experience forward the flag has no memory effect on a GPU, but the "
                     "tracer's backward hooks would keep the embedding output alive (rl_build.guard_input_require_grads)")
    if request.role.trained:
        notes.append("as in OpenRLHF's training_step, its locals (the model output, for the actor with the fp32 "
                     "logits) stay alive through backward and the optimizer step and are released on return")
    return tuple(notes)


def run_rl_fake(request: RlTraceRequest, progress: Progress, module_depth: int = 0) -> TraceResult:
    """Trace ``NUM_ITERATIONS`` iterations of one RL role at full size; returns what was measured."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    start = time.monotonic()
    progress(f"building the {request.role} model on the meta device")
    with torch.device("meta"):
        model, config = build_role_model(request)
    fake_mode = FakeTensorMode()
    swap_to_fake(model, fake_mode, PARAM_DTYPES[request.param_dtype], {})
    tracker = PhaseTracker()
    tracker.guard_frozen(model.parameters())
    with fake_mode, unpacked_batches(enabled=True):
        tracker.track_external(model)
        measurement = _iterate(request, model, config.vocab_size, tracker, progress, module_depth)
    models = {str(request.role): _counts(model, request.role_model)}
    emulated = (EMULATION_NOTE,) if request.role.trained else (FROZEN_EMULATION_NOTE,)
    return TraceResult(request=request, ranks=(measurement,), models=models, notes=_notes(request),
                       emulated=emulated, wall_seconds=time.monotonic() - start)


def _counts(module: nn.Module, name: str) -> dict[str, Any]:
    params = unique_params(module)
    return {"name": name, "num_params": sum(p.numel() for p in params),
            "trainable_params": sum(p.numel() for p in params if p.requires_grad)}


def _iterate(request: RlTraceRequest, model: nn.Module, vocab_size: int, tracker: PhaseTracker,
             progress: Progress, module_depth: int) -> RankMeasurement:
    states: dict[str, int] = {}
    modules: tuple[dict[str, Any], ...] = ()
    with tracker:
        resident = tracker.current_categories()
        states["param_bytes"], states["buffer_bytes"] = resident["param"], resident["buffer"]
        optimizer = None
        if request.role.trained:
            with tracker.category("optimizer"):
                optimizer = EmulatedMixedPrecisionAdam(model)
        grad_bytes: list[int] = []

        def backward(loss: torch.Tensor) -> None:
            loss.backward()
            grad_bytes.append(tracker.current_categories()["grad"])
            assert optimizer is not None
            states["grad_bytes_measured"] = sum(p.grad.numel() * p.grad.element_size()
                                                for p in optimizer.low if p.grad is not None)

        def set_phase(it: int, phase: str) -> None:
            progress(f"iteration {it}/{NUM_ITERATIONS}: {request.role} {phase.replace('_', ' ')}")
            tracker.set_phase(it, phase)

        def optimizer_step() -> None:
            assert optimizer is not None
            optimizer.step(lambda: tracker.category("grad"))

        ctx = RlContext(request=request, model=model, vocab_size=vocab_size, set_phase=set_phase, backward=backward,
                        optimizer_step=optimizer_step)
        train = TRAINING_STEPS.get(request.role)
        for it in range(1, NUM_ITERATIONS + 1):
            make_experience(ctx, it)
            if train is not None:
                train(ctx, it)
            tracker.set_phase(it, "end")
            if module_depth:
                roles = {id(m): str(request.role) for m in model.modules()}
                modules = tuple(tracker.module_rows(module_depth, roles))
            if it < NUM_ITERATIONS:
                tracker.reset_mod_stats()
        states.update(_model_states(request, model, optimizer, grad_bytes))
    iterations, transient = tracker.iteration_peaks()
    return RankMeasurement(rank=0, iterations=iterations, model_states=states, modules=modules,
                           transient_iterations=transient)


def _model_states(request: RlTraceRequest, model: nn.Module, optimizer: EmulatedMixedPrecisionAdam | None,
                  grad_bytes: list[int]) -> dict[str, int]:
    params = unique_params(model)
    role = str(request.role)
    states = {f"{role}_num_params": sum(p.numel() for p in params),
              f"{role}_param_bytes": sum(p.numel() * p.element_size() for p in params),
              "trainable_params": sum(p.numel() for p in params if p.requires_grad)}
    if optimizer is not None:
        states.update({"grad_bytes_tracked": grad_bytes[-1], "master_bytes": optimizer.master_bytes(),
                       "adam_moment_bytes": optimizer.adam_moment_bytes()})
    return states
