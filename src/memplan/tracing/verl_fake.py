"""verl's log-prob and policy-loss code at full size under FakeTensorMode (``--framework verl --engine fake``).

What runs from verl 0.9.1 itself (installed from PyPI without its GPU-only dependencies, see
``validation/verl_fake/README.md``): ``verl.utils.torch_functional.logprobs_from_logits`` (without flash-attn it
takes ``logprobs_from_logits_v2``), ``entropy_from_logits`` and ``verl.trainer.ppo.core_algos.
compute_policy_loss_vanilla`` (what ``verl/workers/utils/losses.py::ppo_loss`` calls for ``loss_mode``
vanilla, with ``agg_loss`` token-mean). Driving ``FSDPEngineWithLMHead.forward_step`` itself needs
``verl.workers.utils.losses``, which imports ``datasets`` (pyarrow, pandas) and the engine's TensorDict
micro-batching; that is not done here (``--engine fake-engine``, :mod:`memplan.tracing.verl_engine`, drives
it): the model forward is the Hugging Face model's, shaped as the engine's
remove-padding path feeds it (one packed row of micro_batch_size x (prompt + response) tokens, logits
flattened to (tokens, vocab), temperature 1 so no scaled copy: ``_scale_logits_by_temperature``).

Measured per phase with MemTracker (activation + temp): the log-prob forward (``compute_log_prob``, no grad)
and the actor update's forward and backward. Gradients are dropped as they are accumulated (FSDP hands
them to its reduce-scatter), so the transient is the computation's own. Parameters are bf16: the compute
copy FSDP2's ``MixedPrecisionPolicy(param_dtype=bf16)`` all-gathers; the stored fp32 shards, gradients
and optimizer states are the fsdp-cpu engine's subject, not this one's.
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from memplan.tracing.fsdp_request import FsdpRole, FsdpTraceRequest

#: Iterations per trace.
NUM_ITERATIONS = 2

#: Notes of every verl fake record.
VERL_FAKE_NOTES = (
    "verl code that ran: verl.utils.torch_functional.logprobs_from_logits (-> logprobs_from_logits_v2 without "
    "flash-attn), entropy_from_logits, verl.trainer.ppo.core_algos.compute_policy_loss_vanilla; the model "
    "forward is the Hugging Face model's in bf16 (FSDP2's compute dtype); FSDPEngineWithLMHead was not driven",
    "remove padding: one packed row of micro_batch_size x (prompt + response) tokens with positions 0..T-1; "
    "sdpa runs causal over the row (the CPU flash kernel keeps no T x T scores, like varlen flash-attn)",
    "GPU installs use flash-attn's Triton cross_entropy_loss for the log-probs (logprobs_from_logits_flash_attn): "
    "the torch path traced here keeps different temporaries",
    "gradients are dropped as they accumulate (FSDP reduce-scatters them); MemTracker counts storages exactly; "
    "no allocator reserve, CUDA context or NCCL buffers",
)


class _RayStub(types.ModuleType):
    """Stands in for ``ray``, which ``verl/__init__.py`` imports (via ``verl/protocol.py``) at module level;
    no code this trace runs calls it."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _RayAny


class _RayAny:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else _RayAny()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _RayAny()

    def __class_getitem__(cls, item: Any) -> Any:
        return cls


_RAY_MODULES = ("ray", "ray.util", "ray.util.placement_group", "ray.util.scheduling_strategies", "ray.actor",
                "ray.experimental", "ray.runtime_env", "ray._private")


def import_verl() -> tuple[Any, Any]:
    """``(verl.utils.torch_functional, verl.trainer.ppo.core_algos)``; ``ray`` stubbed when not installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        for name in _RAY_MODULES:
            stub = _RayStub(name)
            stub.__path__ = []  # type: ignore[attr-defined]
            sys.modules.setdefault(name, stub)
    import verl.trainer.ppo.core_algos as core_algos
    import verl.utils.torch_functional as verl_f

    return verl_f, core_algos


class _LossConfig(dict):  # type: ignore[type-arg]
    """The ``ActorConfig`` fields ``compute_policy_loss_vanilla`` reads (verl's defaults: clip_ratio 0.2,
    clip_ratio_c 3.0, token-mean over this micro-batch)."""

    clip_ratio = 0.2
    clip_ratio_low = None
    clip_ratio_high = None

    def __init__(self, num_tokens: int) -> None:
        super().__init__(clip_ratio_c=3.0)
        self.global_batch_info = {"dp_size": 1, "batch_num_tokens": num_tokens}


def _build(request: FsdpTraceRequest, fake_mode: Any) -> nn.Module:
    import transformers

    from memplan.tracing.build import hf_config, swap_to_fake
    from memplan.tracing.config import load_config_dict

    config = hf_config(load_config_dict(request.model), "sdpa")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    if request.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    swap_to_fake(model, fake_mode, torch.bfloat16, {})
    for param in model.parameters():
        param.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    return model


def _log_probs(verl_f: Any, model: nn.Module, input_ids: torch.Tensor, entropy: bool) -> tuple[Any, Any]:
    logits = model(input_ids=input_ids, use_cache=False).logits.squeeze(0)  # (tokens, vocab)
    labels = torch.roll(input_ids.squeeze(0), shifts=-1)
    ent = verl_f.entropy_from_logits(logits) if entropy else None
    return verl_f.logprobs_from_logits(logits=logits, labels=labels, inplace_backward=not entropy), ent


def _iterate(request: FsdpTraceRequest, model: nn.Module, tracker: Any, progress: Callable[[str], None]) -> None:
    verl_f, core_algos = import_verl()
    tokens = request.micro_batch_size * (request.prompt_length + request.response_length)
    for it in range(1, NUM_ITERATIONS + 1):
        input_ids = torch.randint(0, model.config.vocab_size, (1, tokens))
        progress(f"iteration {it}/{NUM_ITERATIONS}: log-prob forward")
        tracker.set_phase(it, "log_prob")
        with torch.no_grad():
            old, _ = _log_probs(verl_f, model, input_ids, request.entropy)
        if request.role is FsdpRole.ACTOR:
            progress(f"iteration {it}/{NUM_ITERATIONS}: actor update")
            tracker.set_phase(it, "forward")
            logp, ent = _log_probs(verl_f, model, input_ids, request.entropy)
            mask = torch.ones_like(logp)
            loss, _ = core_algos.compute_policy_loss_vanilla(
                old_log_prob=old, log_prob=logp, advantages=torch.randn(logp.shape), response_mask=mask,
                loss_agg_mode="token-mean", config=_LossConfig(tokens))
            if ent is not None:  # losses.py ppo_loss: policy_loss -= entropy_coeff * entropy_loss, even at 0
                loss = loss - 0.0 * ent.mean()
            del ent
            tracker.set_phase(it, "backward")
            loss.backward()
            del loss, logp
        del old
        tracker.set_phase(it, "end")
        tracker.reset_mod_stats()


def verl_version() -> str:
    """The installed verl's version."""
    from importlib.metadata import version

    return version("verl")


def run_verl_fake(request: FsdpTraceRequest, progress: Callable[[str], None]) -> dict[str, Any]:
    """Trace ``request`` at full size; the reference record without ``case`` and ``description``."""
    import platform

    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from memplan.tracing.fake_engine import unpacked_batches
    from memplan.tracing.fsdp_cpu import versions
    from memplan.tracing.track import PhaseTracker

    import_verl()
    start = time.monotonic()
    fake_mode = FakeTensorMode(shape_env=ShapeEnv())  # verl's loss calls .item() on its metrics
    progress("building the model on the meta device")
    model = _build(request, fake_mode)
    tracker = PhaseTracker()
    with fake_mode, unpacked_batches(enabled=True):
        tracker.track_external(model)
        with tracker:
            _iterate(request, model, tracker, progress)
    iterations, transient = tracker.iteration_peaks()
    rank = {"rank": 0, "iterations": {str(k): v for k, v in iterations.items()},
            "transient_iterations": {str(k): v for k, v in transient.items()},
            "model_states": {"num_params": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())}}
    return {"schema": 1, "framework": "verl", "engine": "fake", "command": request.command().replace(
                "--engine fsdp-cpu", "--engine fake"),
            "config": request.as_dict(), "versions": {**versions(), "verl": verl_version()},
            "machine": {"platform": platform.platform(), "machine": platform.machine()},
            "measured": {"ranks": [rank]}, "notes": list(VERL_FAKE_NOTES),
            "wall_seconds": round(time.monotonic() - start, 1)}
