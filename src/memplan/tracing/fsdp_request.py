"""What one FSDP2-on-CPU trace runs (``memplan trace --framework verl ...``): a typed request, standard library only.

The request mirrors how verl 0.9.1 builds an FSDP2 worker (``verl/workers/engine/fsdp/transformer_impl.py``
``_build_module`` / ``_build_fsdp_module``, ``verl/utils/fsdp_utils.py::apply_fsdp2``); the worker
(:mod:`memplan.tracing.fsdp_worker`) runs it on real tensors with gloo, one process per rank.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from memplan.errors import ConfigError


class FsdpRole(StrEnum):
    """Which verl worker the trace builds."""

    ACTOR = "actor"
    """A trained actor: fp32 stored parameters (``model_dtype`` None and not ``forward_only``,
    transformer_impl.py ``_build_module``), AdamW, one iteration = log-prob forward, actor update, step."""
    REF = "ref"
    """A forward-only reference: bf16 stored parameters and ``CPUOffloadPolicy`` (``forward_only`` forces it,
    transformer_impl.py ``_build_fsdp_module``), one iteration = one log-prob forward."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FsdpTraceRequest:
    """One FSDP2-on-CPU measurement."""

    model: str
    """config.json path or preset name (small models only: real tensors on this machine)."""
    role: FsdpRole
    """actor (trained) or ref (forward only, CPUOffloadPolicy)."""
    world_size: int
    """Ranks (processes), 1-4: the FSDP mesh is one dimension of this size."""
    micro_batch_size: int
    """Sequences per rank per forward (verl's ``ppo_micro_batch_size_per_gpu``)."""
    prompt_length: int
    """Prompt tokens per sequence."""
    response_length: int
    """Response tokens per sequence (the log-probs and the loss cover these)."""
    reshard_after_forward: bool
    """FSDP2 ``reshard_after_forward`` (verl's ``actor.fsdp_config.reshard_after_forward``, default True)."""
    gradient_checkpointing: bool
    """``enable_gradient_checkpointing`` (verl default True): HF's checkpointing, ``use_reentrant=False``."""
    entropy: bool
    """Whether the log-prob forward also computes the entropy (``calculate_entropy``)."""

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values."""
        return {k: str(v) if isinstance(v, StrEnum) else v for k, v in asdict(self).items()}

    def command(self) -> str:
        """The ``memplan trace`` command that reproduces this request."""
        parts = ["memplan trace", self.model, "--framework verl --engine fsdp-cpu", f"--role {self.role}",
                 f"--gpus {self.world_size}", f"--micro_batch_size {self.micro_batch_size}",
                 f"--prompt_length {self.prompt_length}", f"--response_length {self.response_length}"]
        if not self.reshard_after_forward:
            parts.append("--no_reshard_after_forward")
        if not self.gradient_checkpointing:
            parts.append("--no_gradient_checkpointing")
        if self.entropy:
            parts.append("--entropy")
        return " ".join(parts)


#: Largest world size the CPU harness launches (2 cores: more ranks only wait on each other).
MAX_WORLD_SIZE = 4


def fsdp_request_from_dict(data: dict[str, Any]) -> FsdpTraceRequest:
    """The request of :meth:`FsdpTraceRequest.as_dict` (checked as user input)."""
    request = FsdpTraceRequest(
        model=str(data["model"]), role=FsdpRole(data["role"]), world_size=int(data["world_size"]),
        micro_batch_size=int(data["micro_batch_size"]), prompt_length=int(data["prompt_length"]),
        response_length=int(data["response_length"]), reshard_after_forward=bool(data["reshard_after_forward"]),
gradient_checkpointing=bool(data["gradient_checkpointing"]),
        entropy=bool(data["entropy"]))
    check_fsdp_request(request)
    return request


def check_fsdp_request(request: FsdpTraceRequest) -> None:
    """Reject what the harness cannot run, naming the flag as typed."""
    if not 1 <= request.world_size <= MAX_WORLD_SIZE:
        raise ConfigError("--gpus", f"must be 1-{MAX_WORLD_SIZE} for --engine fsdp-cpu, got {request.world_size}")
    for flag, value in (("--micro_batch_size", request.micro_batch_size), ("--prompt_length", request.prompt_length),
                        ("--response_length", request.response_length)):
        if value < 1:
            raise ConfigError(flag, f"must be >= 1, got {value}")
