"""One rank of the fsdp-cpu engine (run by ``torch.distributed.run``; see fsdp_cpu.py).

``python -m memplan.tracing.fsdp_worker REQUEST_JSON OUT_DIR``: builds a Hugging Face model with real tensors
as verl 0.9.1's FSDP engine does, shards it with FSDP2 on a gloo CPU mesh, runs two iterations under
PyTorch's ``FSDPMemTracker`` and writes ``OUT_DIR/rank<N>.json``.

What is mirrored from verl 0.9.1 (wheel ``verl-0.9.1-py3-none-any.whl``):

- ``verl/workers/engine/fsdp/transformer_impl.py`` ``_build_module``: stored dtype fp32 when training,
  bf16 when ``forward_only`` (``model_dtype`` None); ``gradient_checkpointing_enable(use_reentrant=False)``.
- ``_build_fsdp_module`` (strategy fsdp2): ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32,
  cast_forward_inputs=True)``; ``CPUOffloadPolicy(pin_memory=True)`` when ``forward_only`` (pinning needs
  an accelerator: False here); ``reshard_after_forward`` from the config.
- ``verl/utils/fsdp_utils.py::apply_fsdp2``: ``fully_shard`` on each decoder layer (``_no_split_modules``),
  on ``embed_tokens`` and ``lm_head`` when the embeddings are untied (``_select_fsdp2_wrap_targets``),
  then on the root.
- ``verl/workers/config/optimizer.py::build_optimizer``: ``torch.optim.AdamW`` (betas (0.9, 0.999),
  weight decay 0.01); ``foreach=True`` as on CUDA (the CPU default is the for-loop).
- ``FSDPEngine.optimizer_step``: ``fsdp2_clip_grad_norm_`` (max norm 1.0), then the step.
- log-probs of the flattened (remove-padding) logits with ``logprobs_from_logits_v2`` (the path without
  flash-attn: row by row), entropy with ``entropy_from_logits`` (``verl/utils/torch_functional.py``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memplan.tracing.fsdp_request import FsdpRole, FsdpTraceRequest, fsdp_request_from_dict
from memplan.tracing.fsdp_track import FsdpPhaseTracker

#: Seed of the random weights and token ids (identical on every rank and run).
SEED = 1234

#: Iterations per trace (the optimizer state exists from the first step on; reference/tracing.md §1).
NUM_ITERATIONS = 2

#: verl's optimizer defaults (``verl/trainer/config/actor/actor.yaml`` optim: lr 1e-6, weight_decay 0.01,
#: betas [0.9, 0.999]; ``clip_grad`` 1.0).
LEARNING_RATE = 1e-6
WEIGHT_DECAY = 0.01
BETAS = (0.9, 0.999)
CLIP_GRAD = 1.0

#: PPO clip ratio (``clip_ratio`` 0.2; no memory effect).
CLIP_RATIO = 0.2


def _say(rank: int, message: str) -> None:
    if rank == 0:
        print(f"PROGRESS {message}", flush=True)


def build_model(request: FsdpTraceRequest) -> nn.Module:
    """The HF causal LM as ``_build_module`` makes it (random weights, sdpa: flash-attn is GPU only)."""
    import transformers

    from memplan.tracing.build import hf_config
    from memplan.tracing.config import load_config_dict

    config = hf_config(load_config_dict(request.model), "sdpa")
    dtype = torch.float32 if request.role is FsdpRole.ACTOR else torch.bfloat16
    torch.manual_seed(SEED)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.to(dtype)
    if request.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def apply_fsdp2(model: nn.Module, request: FsdpTraceRequest, mesh: Any) -> None:
    """``fully_shard`` per wrap target then the root, verl's kwargs (see the module docstring)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=True)
    offload = CPUOffloadPolicy(pin_memory=False) if request.role is FsdpRole.REF else None
    kwargs: dict[str, Any] = {"mesh": mesh, "mp_policy": mp_policy, "reshard_after_forward": request.reshard_after_forward}
    if offload is not None:
        kwargs["offload_policy"] = offload
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    by_name = set() if tied else {"embed_tokens", "lm_head"}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if (type(module).__name__ in layer_classes or (isinstance(module, nn.Embedding) and not tied)
                or (leaf in by_name and hasattr(module, "weight"))):
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)


def logprobs_v2(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``logprobs_from_logits_v2`` (verl/utils/torch_functional.py): fp32 gather minus a row-wise logsumexp;
    bf16 a row-wise log_softmax then gather."""
    if logits.dtype in (torch.float32, torch.float64):
        picked = torch.gather(logits, dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)
        return picked - torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
    rows = [torch.log_softmax(row, dim=-1).gather(dim=-1, index=lab.unsqueeze(-1)).squeeze(-1)
            for row, lab in zip(logits, labels, strict=True)]
    return torch.stack(rows)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """``entropy_from_logits``: logsumexp − Σ softmax·logits."""
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(probs * logits, dim=-1)


def log_probs(model: nn.Module, input_ids: torch.Tensor, request: FsdpTraceRequest) -> torch.Tensor:
    """The log-probs of the response tokens: forward, flatten the logits (remove padding: one packed row), the
    entropy when asked, then the log-probs of each next token, in verl's order (verl 0.9.1
    verl/workers/engine/fsdp/transformer_impl.py L1396-1430)."""
    logits = model(input_ids=input_ids, use_cache=False).logits
    flat = logits.reshape(-1, logits.shape[-1])
    labels = torch.roll(input_ids.reshape(-1), shifts=-1)
    ent = entropy(flat) if request.entropy else None  # verl computes the entropy first, then the log-probs
    out = logprobs_v2(flat, labels)
    if ent is not None:  # losses.py ppo_loss: policy_loss -= entropy_coeff * entropy_loss, even at coefficient 0
        out = out + 0 * ent
    return out.view(input_ids.shape)[:, -request.response_length:]


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Vanilla PPO clip loss (``verl/trainer/ppo/core_algos.py::compute_policy_loss_vanilla``), token mean."""
    ratio = torch.exp(logp - old_logp)
    loss = torch.maximum(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - CLIP_RATIO, 1 + CLIP_RATIO))
    return loss.mean()


def clip_and_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """``fsdp2_clip_grad_norm_`` then ``optimizer.step()`` and ``zero_grad()`` (FSDPEngine.optimizer_step)."""
    from torch.nn.utils.clip_grad import _clip_grads_with_norm_, _get_total_norm

    params = [p for p in model.parameters() if p.grad is not None]
    norm = _get_total_norm([p.grad for p in params], 2.0, False, None)
    _clip_grads_with_norm_(params, CLIP_GRAD, norm, None)
    optimizer.step()
    optimizer.zero_grad()


def _iteration(ctx: dict[str, Any], it: int) -> None:
    request, model, tracker = ctx["request"], ctx["model"], ctx["tracker"]
    tokens = request.prompt_length + request.response_length
    input_ids = torch.randint(0, model.config.vocab_size, (request.micro_batch_size, tokens),
                              generator=ctx["generator"])
    ctx["say"](f"iteration {it}/{NUM_ITERATIONS}: log-prob forward")
    tracker.set_phase(it, "log_prob")
    model.eval()
    with torch.no_grad():
        old = log_probs(model, input_ids, request)
    if request.role is FsdpRole.REF:
        return
    model.train()
    advantages = torch.randn(old.shape, generator=ctx["generator"])
    ctx["say"](f"iteration {it}/{NUM_ITERATIONS}: actor update")
    tracker.reset_mod_stats()  # the root runs a second forward this iteration (FSDPMemTracker allows one)
    tracker.set_phase(it, "forward")
    loss = policy_loss(log_probs(model, input_ids, request), old, advantages)
    tracker.set_phase(it, "backward")
    loss.backward()
    del loss
    tracker.set_phase(it, "optimizer_step")
    clip_and_step(model, ctx["optimizer"])


def _local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def model_states(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, int]:
    """This rank's persistent states by kind, counted from the tensors (not the tracker)."""
    params = list(model.parameters())
    moments = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            moments += sum(_local_bytes(t) for k, t in state.items() if k in ("exp_avg", "exp_avg_sq"))
    return {"num_params": sum(p.numel() for p in params),
            "sharded_param_bytes_local": sum(_local_bytes(p) for p in params),
            "adam_moment_bytes_local": moments}


def run_rank(request: FsdpTraceRequest, out_dir: Path) -> None:
    """Trace this rank and write its JSON."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (request.world_size,), mesh_dim_names=("fsdp",))
    _say(rank, "building the model and applying fully_shard")
    model = build_model(request)
    apply_fsdp2(model, request, mesh)
    optimizer = None
    if request.role is FsdpRole.ACTOR:
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=BETAS, weight_decay=WEIGHT_DECAY,
                                      foreach=True)
    tracker = FsdpPhaseTracker(model, optimizer)
    ctx = {"request": request, "model": model, "optimizer": optimizer, "tracker": tracker,
           "generator": torch.Generator().manual_seed(SEED + rank), "say": lambda m: _say(rank, m)}
    with tracker:
        for it in range(1, NUM_ITERATIONS + 1):
            _iteration(ctx, it)
            tracker.set_phase(it, "end")
            if it < NUM_ITERATIONS:
                tracker.reset_mod_stats()
    iterations, transient = tracker.iteration_peaks()
    out = {"rank": rank, "iterations": {str(k): v for k, v in iterations.items()},
           "transient_iterations": {str(k): v for k, v in transient.items()},
           "model_states": model_states(model, optimizer)}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(out), encoding="utf-8")
    dist.destroy_process_group()


def main(argv: list[str]) -> int:
    """Entry point of one rank."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_rank(fsdp_request_from_dict(json.loads(argv[0])), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
