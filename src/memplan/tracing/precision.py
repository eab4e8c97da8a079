"""DeepSpeed bf16 mixed-precision Adam, emulated in torch for the fake engine.

DeepSpeed cannot run under FakeTensorMode, so the fake engine reproduces the tensors its bf16 ZeRO
optimizer holds on one rank of world size 1 (deepspeed/runtime/zero/stage_1_and_2.py@v0.19.8):

- at ``deepspeed.initialize`` (before the first forward): an fp32 master copy of every trainable
  parameter (category ``optimizer``);
- backward: bf16 gradients on the parameters (category ``grad``);
- optimizer step: fp32 gradients cast from the bf16 ones (DeepSpeed's fp32 gradient partition, category
  ``grad``), the bf16 gradients released, gradient clipping at ``max_norm`` 1.0 (OpenRLHF's
  ``gradient_clipping``), AdamW on the fp32 masters with fp32 ``exp_avg`` / ``exp_avg_sq`` created at the
  first step (category ``optimizer``), the masters copied back into the bf16 parameters, and the fp32
  gradients released.

Not emulated: DeepSpeed's flat buffers and their alignment padding, the reduce/IPG bucket
(``reduce_bucket_size``), ZeRO partitioning across ranks, and stage-specific gradient handling; those are
measured with the deepspeed-cpu engine. The optimizer is torch's fused AdamW (in-place like DeepSpeed's
FusedAdam, no step temporaries), with OpenRLHF's two weight-decay groups and betas (0.9, 0.95).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

#: Gradient-norm clip OpenRLHF passes as DeepSpeed ``gradient_clipping`` (``--max_norm`` default 1.0).
MAX_GRAD_NORM = 1.0

#: OpenRLHF's Adam hyper-parameters (``openrlhf/cli/train_sft.py@v0.9.5``: ``--adam_betas 0.9 0.95``,
#: ``--l2 0``); no memory effect, recorded for completeness.
ADAM_BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8

#: Parameter names OpenRLHF keeps out of weight decay (``get_optimizer_grouped_parameters``).
NO_DECAY_NAMES = ("bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight")

#: Emulation summary written into every fake-engine record.
EMULATION_NOTE = (
    "DeepSpeed bf16 ZeRO optimizer emulated in torch at world size 1: fp32 master copy of trainable params "
    "created before the first forward (optimizer); bf16 grads on the params (grad); at the step fp32 grads cast "
    "from them (grad) with the bf16 grads released, clip_grad_norm 1.0, torch fused AdamW on the masters with "
    "fp32 exp_avg/exp_avg_sq (optimizer), copy back to bf16, fp32 grads released. Not emulated: DeepSpeed flat "
    "buffers and padding, reduce/IPG buckets, partitioning over ranks.")


def trainable_named(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters with names, tied weights once."""
    seen: set[int] = set()
    out = []
    for name, param in module.named_parameters():
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            out.append((name, param))
    return out


class EmulatedMixedPrecisionAdam:
    """bf16 params and grads, fp32 master weights and Adam states, as DeepSpeed's bf16 ZeRO optimizer."""

    def __init__(self, module: nn.Module) -> None:
        named = trainable_named(module)
        self.low = [p for _, p in named]
        self.masters = [nn.Parameter(p.detach().to(torch.float32)) for p in self.low]
        decay = [m for (n, _), m in zip(named, self.masters, strict=True) if not any(k in n for k in NO_DECAY_NAMES)]
        no_decay = [m for (n, _), m in zip(named, self.masters, strict=True) if any(k in n for k in NO_DECAY_NAMES)]
        groups = [g for g in ({"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0})
                  if g["params"]]
        self.optimizer = torch.optim.AdamW(groups, lr=1e-6, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True)

    def step(self, tag_grad: Any) -> None:
        """One optimizer step; ``tag_grad`` is a context manager that files new tensors as ``grad``."""
        with tag_grad():
            for low, master in zip(self.low, self.masters, strict=True):
                if low.grad is not None:
                    master.grad = low.grad.to(torch.float32)
        for low in self.low:
            low.grad = None
        torch.nn.utils.clip_grad_norm_(self.masters, MAX_GRAD_NORM, foreach=True)
        self.optimizer.step()
        with torch.no_grad():
            for low, master in zip(self.low, self.masters, strict=True):
                low.copy_(master)
        for master in self.masters:
            master.grad = None

    def state_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(state name, tensor) for every Adam state tensor."""
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    yield key, value

    def adam_moment_bytes(self) -> int:
        """Bytes of ``exp_avg`` + ``exp_avg_sq`` (measured from the tensors)."""
        return sum(t.numel() * t.element_size() for k, t in self.state_tensors() if k in ("exp_avg", "exp_avg_sq"))

    def master_bytes(self) -> int:
        """Bytes of the fp32 master weights."""
        return sum(m.numel() * m.element_size() for m in self.masters)
