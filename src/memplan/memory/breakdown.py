"""The result data model: typed, immutable memory terms.

Categories follow PyTorch's ``MemTracker`` (torch/distributed/_tools/mem_tracker.py: PARAM, BUFFER,
GRAD, OPT, ACT, TEMP) so traced runs compare category by category, plus ``kv_cache`` and
``overhead`` (memory outside PyTorch tensors: CUDA context, NCCL, workspaces, allocator reserve).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from memplan.sources import Source


class Category(StrEnum):
    """What a term of memory holds (DESIGN.md, JSON contract)."""

    PARAM = "param"
    """Model weights, including ZeRO-3 gathered/prefetched parameters."""
    BUFFER = "buffer"
    """Module buffers (rotary caches, router bias)."""
    GRAD = "grad"
    """Gradients, gradient buckets and partitions."""
    OPTIMIZER = "optimizer"
    """Optimizer state (fp32 master weights, Adam moments) and optimizer-step temporaries."""
    ACTIVATION = "activation"
    """Tensors saved for backward."""
    TEMP = "temp"
    """The computation's short-lived tensors: logits, loss intermediates, activation gradients."""
    KV_CACHE = "kv_cache"
    """A rollout engine's key/value cache."""
    OVERHEAD = "overhead"
    """Memory outside PyTorch tensors: CUDA context, NCCL, library workspaces, allocator reserve."""


class Device(StrEnum):
    """Where a term lives."""

    GPU = "gpu"
    """Accelerator memory of one device."""
    CPU = "cpu"
    """Host RAM (pinned or pageable) of the node."""
    NVME = "nvme"
    """Local NVMe (ZeRO-Infinity)."""


class Phase(StrEnum):
    """A stage of one training iteration. Peak memory is the maximum over phases."""

    LOAD = "load"
    """Model loading and engine start-up."""
    FORWARD = "forward"
    """Training forward pass (activations accumulate)."""
    BACKWARD = "backward"
    """Backward pass (activation gradients, gradient buckets)."""
    OPTIMIZER_STEP = "optimizer_step"
    """Optimizer step (master weights, moments, step temporaries)."""
    ROLLOUT = "rollout"
    """RL: generation by the rollout engines."""
    MAKE_EXPERIENCE = "make_experience"
    """RL: forward-only scoring by reward, actor, critic and reference."""
    TRAINING = "training"
    """RL: actor and critic updates."""
    WEIGHT_SYNC = "weight_sync"
    """RL: broadcast of actor weights to the rollout engines."""
    OLD_LOG_PROB = "old_log_prob"
    """RL (verl): the actor's no-grad forward recomputing the rollout's log-probs (and entropy)."""
    REF_LOG_PROB = "ref_log_prob"
    """RL (verl): the reference policy's no-grad forward."""
    VALUES = "values"
    """RL (verl): the critic's no-grad forward computing values."""
    UPDATE_CRITIC = "update_critic"
    """RL (verl): the critic's update (forward, backward, optimizer step per mini-batch)."""
    UPDATE_ACTOR = "update_actor"
    """RL (verl): the actor's update."""
    CHECKPOINT = "checkpoint"
    """A DeepSpeed checkpoint (``save_checkpoint``) written every N steps (the framework's save interval)."""
    SAVE = "save"
    """The HF model save (``save_model``): at the end of training, and at every save interval when the
    framework is asked to save HF checkpoints too."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Term:
    """One leaf: a quantity of memory with its provenance."""

    path: str
    """Dotted name, ``actor.optimizer.exp_avg``."""
    bytes: int
    """Bytes per device (GPU terms) or per process (CPU terms); an exact integer."""
    category: Category
    """What the memory holds."""
    device: Device
    """Where it lives."""
    source: Source
    """The paper, code location or measurement that justifies the number."""
    phase: Phase | None = None
    """The phase a transient term belongs to; ``None`` for persistent state resident in every phase."""

    def __post_init__(self) -> None:
        if not isinstance(self.bytes, int) or self.bytes < 0:
            raise ValueError(f"{self.path}: bytes must be a non-negative int, got {self.bytes!r}")


#: The phases in which a run saves (memory/save.py): after training has held, they can still kill it.
SAVE_PHASES = frozenset({Phase.CHECKPOINT, Phase.SAVE})


def total_bytes(terms: Iterable[Term]) -> int:
    """Sum of the bytes of ``terms``."""
    return sum(term.bytes for term in terms)
