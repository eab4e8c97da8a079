"""One rank of the deepspeed-cpu engine (run by ``torch.distributed.run``; see deepspeed_cpu.py).

``python -m memplan.tracing.ds_worker REQUEST_JSON OUT_DIR``: builds the models with real tensors inside
MemTracker, runs ``deepspeed.initialize`` with OpenRLHF's configs, then two iterations of the method's
step, and writes ``OUT_DIR/rank<N>.json``. Progress goes to stdout as ``PROGRESS <message>`` lines.

What is real: the HF modeling code, peft, DeepSpeed's ZeRO 0-3 optimizers, partitioning, buckets and
offload (DeepSpeedCPUAdam), gloo collectives. What differs from OpenRLHF on GPUs: weights are randomly
initialised (no checkpoint loading), torch's fused AdamW replaces FusedAdam when the optimizer is not
offloaded (FusedAdam needs CUDA), and the CPU accelerator puts "offloaded" and device tensors in the same
memory, so each rank's total holds both.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memplan.tracing.config import NUM_ITERATIONS, TraceRequest, request_from_dict
from memplan.tracing.precision import ADAM_BETAS, ADAM_EPS, NO_DECAY_NAMES, trainable_named
from memplan.tracing.steps import STEPS, StepContext
from memplan.tracing.track import PhaseTracker

#: Seed of the random weights and token ids (identical on every rank and run).
SEED = 1234

#: Adam learning rate (no memory effect).
LEARNING_RATE = 1e-6

#: DeepSpeed optimizer attributes that hold gradients (partitions, buckets, accumulation buffers).
_GRAD_ATTR_WORDS = ("grad",)


def _say(rank: int, message: str) -> None:
    if rank == 0:
        print(f"PROGRESS {message}", flush=True)


def _optimizer(model: nn.Module, request: TraceRequest) -> torch.optim.Optimizer:
    """OpenRLHF's ``create_optimizer``: two weight-decay groups; DeepSpeedCPUAdam when offloaded."""
    named = trainable_named(model)
    groups = [{"params": [p for n, p in named if not any(k in n for k in NO_DECAY_NAMES)], "weight_decay": 0.0},
              {"params": [p for n, p in named if any(k in n for k in NO_DECAY_NAMES)], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if request.adam_offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=LEARNING_RATE, betas=ADAM_BETAS, eps=ADAM_EPS)
    return torch.optim.AdamW(groups, lr=LEARNING_RATE, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True)


def _tensors(value: Any, depth: int = 0) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if depth >= 3:
        return []
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v, depth + 1)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v, depth + 1)]
    return []


def _retag(tracker: PhaseTracker, engine: Any) -> None:
    """Name DeepSpeed's buffers: weights (and ZeRO-3 partitions) param, the wrapped optimizer's params
    (fp32 masters) and states optimizer, attributes holding gradients grad."""
    for param in engine.module.parameters():
        tracker.tag(param, "param")
        if hasattr(param, "ds_tensor"):
            tracker.tag(param.ds_tensor, "param")
    wrapper = engine.optimizer
    base = getattr(wrapper, "optimizer", wrapper)
    if not isinstance(base, torch.optim.Optimizer):
        return  # an eval engine (no optimizer, or ZeRO-3's parameter-offload wrapper)
    for group in base.param_groups:
        for master in group["params"]:
            tracker.tag(master, "optimizer")
    for state in base.state.values():
        for tensor in _tensors(state):
            tracker.tag(tensor, "optimizer")
    if base is not wrapper:
        for name, value in vars(wrapper).items():
            if any(w in name for w in _GRAD_ATTR_WORDS):
                for tensor in _tensors(value):
                    tracker.tag(tensor, "grad")


def _numel(param: nn.Parameter) -> int:
    return int(getattr(param, "ds_numel", param.numel()))


def _local_bytes(param: nn.Parameter) -> int:
    """Bytes of this rank's copy: the ZeRO-3 partition if partitioned, else the tensor."""
    tensor = getattr(param, "ds_tensor", param)
    return tensor.numel() * tensor.element_size()


def _model_states(engine: Any) -> dict[str, int]:
    params = list({id(p): p for p in engine.module.parameters()}.values())
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    moments = masters = 0
    if isinstance(base, torch.optim.Optimizer):
        for state in base.state.values():
            moments += sum(t.numel() * t.element_size() for k, t in state.items()
                           if k in ("exp_avg", "exp_avg_sq") and isinstance(t, torch.Tensor))
        masters = sum(p.numel() * p.element_size() for g in base.param_groups for p in g["params"])
    return {"policy_num_params": sum(_numel(p) for p in params),
            "policy_param_bytes_local": sum(_local_bytes(p) for p in params),
            "trainable_params": sum(_numel(p) for p in params if p.requires_grad),
            "master_bytes_local": masters, "adam_moment_bytes_local": moments}


def _build(request: TraceRequest, tracker: PhaseTracker) -> tuple[Any, Any, int]:
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    from memplan.tracing.build import build_frozen, build_trained, hf_config, load_config_dict
    from memplan.tracing.ds_config import eval_config, train_config

    attn = str(request.attn_implementation.traced)
    config = hf_config(load_config_dict(request.model), attn)
    train_ds = train_config(request)
    keep = HfDeepSpeedConfig(train_ds) if request.zero_stage == 3 else None  # ZeRO-3 init while loading
    model = build_trained(config, request)
    tracker.guard_frozen(model.parameters())
    engine, *_ = deepspeed.initialize(model=model, optimizer=_optimizer(model, request), config=train_ds)
    del keep
    frozen_engine = None
    if request.ref_pretrain is not None:
        frozen_ds = eval_config(request)
        keep = HfDeepSpeedConfig(frozen_ds) if request.zero_stage == 3 else None
        frozen = build_frozen(hf_config(load_config_dict(request.ref_pretrain), attn), request)
        tracker.guard_frozen(frozen.parameters())
        frozen_engine, *_ = deepspeed.initialize(model=frozen, config=frozen_ds)
        del keep
    return engine, frozen_engine, config.vocab_size


def _skip_shm_comm_op() -> None:
    """Keep DeepSpeed's CPU backend on plain gloo: no shared-memory all-reduce op, so nothing is compiled.

    On the CPU accelerator ``TorchBackend.__init__`` calls ``build_shm_op()``, which first probes every op builder
    (compiler subprocesses) and then JIT-compiles ``deepspeed_shm_comm`` with ninja when
    ``deepspeed.ops.__compatible_ops__`` says it can (deepspeed 0.19.8, ``deepspeed/comm/torch.py`` lines 47-53 and
    207-223; ``deepspeed/ops/__init__.py`` lines 15-34 cache the probe in that module global). That op only serves
    ``inference_all_reduce`` and keeps its buffers in ``/dev/shm``, outside the allocator MemTracker counts; the
    training collectives go through ``torch.distributed`` either way, and a GPU run uses NCCL, never this op. The
    build took 70-90 s per fresh machine here and stalled a CI machine, so the worker declares the op unavailable
    before ``init_distributed``, which skips both the probe and the build.
    """
    import deepspeed.ops

    deepspeed.ops.__dict__["__compatible_ops__"] = {"deepspeed_shm_comm": False}


def run_rank(request: TraceRequest, out_dir: Path) -> None:
    """Trace this rank and write its JSON."""
    import deepspeed

    rank = int(os.environ.get("RANK", "0"))
    _skip_shm_comm_op()
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(SEED)
    tracker = PhaseTracker()
    with tracker:
        _say(rank, "building the model and running deepspeed.initialize")
        engine, frozen_engine, vocab = _build(request, tracker)
        _retag(tracker, engine)
        if frozen_engine is not None:
            _retag(tracker, frozen_engine)
        generator = torch.Generator().manual_seed(SEED + rank)

        def set_phase(it: int, phase: str) -> None:
            _say(rank, f"iteration {it}/{NUM_ITERATIONS}: {phase.replace('_', ' ')}")
            tracker.set_phase(it, phase)

        ctx = StepContext(request=request, policy=engine, frozen=frozen_engine, vocab_size=vocab,
                          set_phase=set_phase, backward=engine.backward, optimizer_step=engine.step,
                          pass_attention_mask=True, generator=generator)
        carry: dict[str, Any] = {}
        for it in range(1, NUM_ITERATIONS + 1):
            STEPS[request.method](ctx, it, carry)
            tracker.set_phase(it, "end")
            if it < NUM_ITERATIONS:
                tracker.reset_mod_stats()
    iterations: dict[str, dict[str, dict[str, int]]] = {}
    for (it, phase), snap in tracker.phase_peaks.items():
        if it >= 1 and phase != "end":
            iterations.setdefault(str(it), {})[phase] = snap
    setup = tracker.phase_peaks.get((0, "setup"), {})
    states = _model_states(engine)
    if frozen_engine is not None:
        states["frozen_num_params"] = _model_states(frozen_engine)["policy_num_params"]
    out = {"rank": rank, "iterations": iterations, "setup_peak": setup, "model_states": states}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(out), encoding="utf-8")


def main(argv: list[str]) -> int:
    """Entry point of one rank."""
    request = request_from_dict(json.loads(argv[0]))
    run_rank(request, Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
