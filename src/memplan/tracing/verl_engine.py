"""verl's own FSDP engine step at full size under FakeTensorMode (``--framework verl --engine fake-engine``).

What runs from verl 0.9.1 itself (installed from PyPI without its GPU-only dependencies, see
``validation/verl_fake/README.md``):

- ``verl.workers.utils.padding.left_right_2_no_padding``: the trainer's conversion of the left/right padded
  batch to nested (jagged) tensors (``ray_trainer.py`` ``_compute_old_log_prob`` / ``_update_actor`` step 2);
- ``FSDPEngineWithLMHead.__init__`` (the real constructor: device mesh of the world, entropy function choice,
  autocast dtype) and its ``eval_mode`` / ``train_mode`` contexts;
- the log-prob pass: ``BaseEngine.infer_batch`` -> ``FSDPEngine.forward_backward_batch(forward_only=True)`` ->
  ``FSDPEngineWithLMHead.forward_step`` (``prepare_model_inputs``, the model under ``torch.autocast``,
  ``prepare_model_outputs``: ``logprobs_from_logits`` and, since the trainer's ``_compute_old_log_prob`` sets
  ``calculate_entropy=True``, ``entropy_from_logits``), no loss function (``compute_loss=False``);
- the actor update: ``forward_backward_batch(forward_only=False)`` with ``functools.partial(
  verl.workers.utils.losses.ppo_loss, config=FSDPActorConfig(...))`` as the worker sets it
  (``engine_workers.py`` ``self.loss_fn = partial(ppo_loss, config=actor_config)``), then ``loss.backward()``;
  ``calculate_entropy`` as ``_update_actor`` sets it (``calculate_entropy or entropy_coeff != 0``).

What is bypassed (a CPU has no accelerator and a full-size checkpoint is not loaded):

- ``initialize()`` (``_build_model_optimizer``: weight loading, ``apply_monkey_patch``, FSDP2 wrapping,
  optimizer, LR scheduler, checkpoint manager): ``engine.module`` is the Hugging Face model built on the meta
  device and swapped to fake bf16 parameters (FSDP2's compute copy, ``MixedPrecisionPolicy(param_dtype=bf16)``),
  sdpa attention instead of flash-attn varlen (the CPU flash kernel keeps no T x T scores either);
- verl's platform: ``verl.plugin.platform.set_platform`` (verl's documented plugin seam) installs a CPU
  platform, so ``get_device_name()`` is ``cpu`` and ``forward_step``'s autocast is CPU autocast (bf16);
- ``optimizer_zero_grad`` / ``optimizer_step`` (``train_batch``'s ends): gradients are dropped as they
  accumulate (FSDP reduce-scatters them); the fsdp-cpu engine measures stored states;
- ``use_torch_compile`` is off: ``torch.compile`` cannot run on fake tensors, so the entropy runs eager.

Measured per phase with MemTracker (activation + temp): the log-prob pass, and the update's forward (up to
``forward_step``'s return, loss included) and backward.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from memplan.tracing.fsdp_request import FsdpRole, FsdpTraceRequest
from memplan.tracing.verl_fake import NUM_ITERATIONS, _build, import_verl, verl_version

#: Notes of every verl fake-engine record.
VERL_ENGINE_NOTES = (
    "verl code that ran: FSDPEngineWithLMHead.__init__, eval_mode/train_mode, infer_batch -> "
    "forward_backward_batch -> forward_step (prepare_model_inputs, autocast, prepare_model_outputs), "
    "verl.workers.utils.losses.ppo_loss (vanilla, token-mean), verl.workers.utils.padding.left_right_2_no_padding",
    "bypassed: initialize() (weights, apply_monkey_patch, FSDP2 wrap, optimizer); engine.module is the Hugging "
    "Face model with fake bf16 parameters (FSDP2's compute dtype), sdpa; verl's platform set to a CPU platform "
    "(CPU autocast); use_torch_compile off (eager entropy); optimizer_zero_grad/optimizer_step not called",
    "log-prob pass computes the entropy (ray_trainer _compute_old_log_prob sets calculate_entropy=True); the "
    "update computes it when the record's entropy is set (calculate_entropy or entropy_coeff != 0)",
    "GPU installs use flash-attn's Triton cross_entropy_loss for the log-probs (logprobs_from_logits_flash_attn) "
    "and CUDA autocast: the torch path traced here keeps different temporaries",
    "gradients are dropped as they accumulate (FSDP reduce-scatters them); MemTracker counts storages exactly; "
    "no allocator reserve, CUDA context or NCCL buffers",
)


def _cpu_platform() -> Any:
    """A verl platform for the CPU (``verl/plugin/platform/platform_base.py``'s abstract methods)."""
    import types

    from verl.plugin.platform.platform_base import PlatformBase

    class CpuPlatform(PlatformBase):  # type: ignore[misc]
        device_name = "cpu"
        vendor_name = "cpu"
        device_module = types.SimpleNamespace()

        def is_available(self) -> bool:
            return True

        def current_device(self) -> Any:
            return "cpu"

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index: int) -> None:
            del device_index

        def synchronize(self, device_index: int | None = None) -> None:
            del device_index

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            del settings

        def empty_cache(self) -> None:
            pass

        def get_device_capability(self, device_index: int = 0) -> tuple[None, None]:
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return "CUDA_VISIBLE_DEVICES"

        def nvtx_range(self, msg: str) -> Any:
            import contextlib

            return contextlib.nullcontext()

        def profiler_start(self) -> None:
            pass

        def profiler_stop(self) -> None:
            pass

        def ray_resource_name(self) -> str:
            return "CPU"

        def ray_noset_envvars(self) -> list[str]:
            return []

        def get_collective_module(self) -> Any:
            return None

        def cudart(self) -> Any:
            return None

    # Any abstract method this release adds and the trace does not reach: fill it with a no-op.
    for name in list(getattr(CpuPlatform, "__abstractmethods__", ())):
        setattr(CpuPlatform, name, lambda self, *a, **k: None)
    CpuPlatform.__abstractmethods__ = frozenset()
    return CpuPlatform()


@contextlib.contextmanager
def _symbolic_metrics() -> Iterator[None]:
    """Let verl's ``Metric`` take the symbolic scalars ``.item()`` returns on fake tensors.

    ``compute_policy_loss_vanilla`` logs ``pg_clipfrac.detach().item()`` and ``ppo_loss`` wraps it in
    ``verl.utils.metric.utils.Metric``, whose ``append`` accepts ``NumericType`` (int, float, Tensor, ndarray;
    verl/utils/metric/utils.py:68,111). Under fake tensors the value is a ``SymFloat``: no memory depends on it.
    Restored on exit."""
    from verl.utils.metric import utils as metric_utils

    original = metric_utils.NumericType
    metric_utils.NumericType = (*original, torch.SymInt, torch.SymFloat)
    try:
        yield
    finally:
        metric_utils.NumericType = original


def _init_process_group() -> None:
    """World size 1 on gloo (``FSDPEngine.__init__`` reads the rank and builds the device mesh)."""
    import os

    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)


class _ModelConfig(dict):  # type: ignore[type-arg]
    """The ``HFModelConfig`` fields ``FSDPEngine.__init__`` reads (``HFModelConfig`` itself loads a tokenizer and
    the checkpoint's files from ``path``): remove padding on (verl's ``use_remove_padding`` default), no LoRA."""

    use_remove_padding = True
    lora_rank = 0
    trust_remote_code = False


def _engine(request: FsdpTraceRequest, module: torch.nn.Module) -> Any:
    """``FSDPEngineWithLMHead`` built by its own ``__init__``; ``initialize()`` bypassed (module docstring)."""
    from verl.workers.config import FSDPEngineConfig
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    config = FSDPEngineConfig(strategy="fsdp2", use_torch_compile=False, use_dynamic_bsz=False,
                              micro_batch_size_per_gpu=request.micro_batch_size,
                              infer_micro_batch_size_per_gpu=request.micro_batch_size,
                              reshard_after_forward=request.reshard_after_forward,
                              forward_only=request.role is not FsdpRole.ACTOR)
    engine = FSDPEngineWithLMHead(model_config=_ModelConfig(), engine_config=config, optimizer_config=None,
                                  checkpoint_config=None)
    engine.module = module
    engine.optimizer = None
    engine.lr_scheduler = None
    return engine


def _batch(request: FsdpTraceRequest, vocab: int) -> Any:
    """The trainer's batch after ``left_right_2_no_padding``: every sequence at full prompt + response length."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    b, p, r = request.micro_batch_size, request.prompt_length, request.response_length
    data = TensorDict({
        "prompts": torch.randint(0, vocab, (b, p)), "responses": torch.randint(0, vocab, (b, r)),
        "input_ids": torch.randint(0, vocab, (b, p + r)), "attention_mask": torch.ones(b, p + r, dtype=torch.long),
        "position_ids": torch.arange(p + r).expand(b, p + r).clone(), "response_mask": torch.ones(b, r),
        "old_log_probs": torch.randn(b, r), "advantages": torch.randn(b, r)}, batch_size=[b])
    data = left_right_2_no_padding(data)
    tu.assign_non_tensor(data, temperature=1.0, use_remove_padding=True, use_dynamic_bsz=False,
                         micro_batch_size_per_gpu=b, use_fused_kernels=False)
    return data


def _loss_fn(request: FsdpTraceRequest) -> Callable[..., Any]:
    """``partial(ppo_loss, config=actor_config)`` as ``engine_workers.py`` sets it (verl's actor defaults)."""
    from functools import partial

    from verl.workers.config import FSDPActorConfig
    from verl.workers.utils.losses import ppo_loss

    config = FSDPActorConfig(strategy="fsdp2", rollout_n=1, ppo_mini_batch_size=request.micro_batch_size,
                             ppo_micro_batch_size_per_gpu=request.micro_batch_size, use_dynamic_bsz=False)
    return partial(ppo_loss, config=config)


def _batches(request: FsdpTraceRequest, vocab: int) -> list[tuple[Any, Any]]:
    """Per iteration, the log-prob pass's batch and the update's, with the non-tensor keys the trainer adds
    (``_compute_old_log_prob``, ``_update_actor``). Built from real tensors before fake mode starts: verl's
    padding code reads their values."""
    from verl.utils import tensordict_utils as tu

    out = []
    for _ in range(NUM_ITERATIONS):
        log_prob = _batch(request, vocab)
        tu.assign_non_tensor(log_prob, calculate_entropy=True, compute_loss=False)
        update = _batch(request, vocab)
        tu.assign_non_tensor(update, calculate_entropy=request.entropy, global_batch_size=request.micro_batch_size,
                             compute_loss=True)
        out.append((log_prob, update))
    return out


def _iterate(request: FsdpTraceRequest, engine: Any, batches: list[tuple[Any, Any]], tracker: Any,
             progress: Callable[[str], None]) -> None:
    loss_fn = _loss_fn(request)
    forward_step = engine.forward_step

    def traced_forward_step(micro_batch: Any, loss_function: Any, forward_only: bool) -> Any:
        out = forward_step(micro_batch, loss_function=loss_function, forward_only=forward_only)
        if not forward_only:
            tracker.set_phase(iteration, "backward")  # forward_backward_batch calls loss.backward() next
        return out

    engine.forward_step = traced_forward_step
    for iteration in range(1, NUM_ITERATIONS + 1):
        progress(f"iteration {iteration}/{NUM_ITERATIONS}: log-prob pass (compute_log_prob)")
        data, update = batches[iteration - 1]
        tracker.set_phase(iteration, "log_prob")
        with engine.eval_mode(disable_auto_offload=True):
            out = engine.infer_batch(data, loss_function=None)
        del out
        if request.role is FsdpRole.ACTOR:
            progress(f"iteration {iteration}/{NUM_ITERATIONS}: actor update (forward_backward_batch)")
            tracker.set_phase(iteration, "forward")
            with engine.train_mode(disable_auto_offload=True, zero_grad_on_exit=False):
                out = engine.forward_backward_batch(update, loss_fn, forward_only=False)
            del out
        tracker.set_phase(iteration, "end")
        tracker.reset_mod_stats()


def run_verl_engine(request: FsdpTraceRequest, progress: Callable[[str], None]) -> dict[str, Any]:
    """Trace ``request`` at full size through verl's engine; the reference record without ``case`` and
    ``description``."""
    import platform

    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from memplan.tracing.fake_engine import unpacked_batches
    from memplan.tracing.fsdp_cpu import versions
    from memplan.tracing.track import PhaseTracker

    import_verl()
    from verl.plugin.platform.platform_manager import set_platform

    set_platform(_cpu_platform())
    _init_process_group()
    start = time.monotonic()
    # Only the parameters are fake: verl's bookkeeping on the batch (nested offsets, repeat_interleave, the token
    # count it all-reduces) runs on the real, small tensors it reads values from; an op that meets a fake
    # parameter, or a tensor computed from one, runs under the fake mode, which takes the real operands in.
    fake_mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
    progress("building the model on the meta device")
    model = _build(request, fake_mode)
    engine = _engine(request, model)
    batches = _batches(request, model.config.vocab_size)
    tracker = PhaseTracker()
    with unpacked_batches(enabled=True), _symbolic_metrics():
        tracker.track_external(model)
        with tracker:
            _iterate(request, engine, batches, tracker, progress)
    iterations, transient = tracker.iteration_peaks()
    rank = {"rank": 0, "iterations": {str(k): v for k, v in iterations.items()},
            "transient_iterations": {str(k): v for k, v in transient.items()},
            "model_states": {"num_params": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())}}
    return {"schema": 1, "framework": "verl", "engine": "fake-engine", "command": request.command().replace(
                "--engine fsdp-cpu", "--engine fake-engine"),
            "config": {**request.as_dict(), "log_prob_entropy": True}, "versions": {**versions(),
                                                                                     "verl": verl_version()},
            "machine": {"platform": platform.platform(), "machine": platform.machine()},
            "measured": {"ranks": [rank]}, "notes": list(VERL_ENGINE_NOTES),
            "wall_seconds": round(time.monotonic() - start, 1)}
