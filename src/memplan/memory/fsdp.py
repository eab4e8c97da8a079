"""PyTorch FSDP (FSDP1 ``FullyShardedDataParallel`` and FSDP2 ``fully_shard``): the sharding engine's
typed options. The formulas that read them follow in this module (issue 14, item 2).

The options are framework-neutral: a framework adapter (``frameworks/verl``) resolves its own keys into
an :class:`FsdpSharding` once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from memplan.dtypes import DType


class FsdpVersion(StrEnum):
    """Which FSDP implementation wraps the model."""

    FSDP1 = "fsdp1"
    """``torch.distributed.fsdp.FullyShardedDataParallel`` (flat parameters per wrapped unit)."""
    FSDP2 = "fsdp2"
    """``torch.distributed.fsdp.fully_shard`` (per-parameter DTensor shards)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FsdpSharding:
    """How one model is sharded and where its states live, resolved."""

    version: FsdpVersion
    """FSDP1 or FSDP2."""
    shard_size: int
    """Ranks each parameter is sharded over (the whole group, or a smaller HSDP shard group)."""
    param_dtype: DType
    """Dtype the sharded parameters are stored in (the master copy when the model is trained)."""
    compute_dtype: DType
    """Mixed-precision ``param_dtype``: the dtype of the unsharded copy forward/backward use."""
    reduce_dtype: DType
    """Mixed-precision ``reduce_dtype``: the dtype gradients are reduce-scattered and kept in."""
    reshard_after_forward: bool
    """Free each unit's unsharded parameters after its forward (FSDP1 FULL_SHARD; False = SHARD_GRAD_OP)."""
    param_offload: bool
    """The framework moves the sharded parameters (and gradients) to host RAM between phases."""
    optimizer_offload: bool
    """The framework moves the optimizer state to host RAM between phases."""
    cpu_offload: bool
    """FSDP's own CPU offload (FSDP1 ``CPUOffload(offload_params=True)``, FSDP2 ``CPUOffloadPolicy``): shards
    live in host RAM and stream to the GPU per unit during compute."""
    cpu_offload_pinned: bool
    """The host shards of ``cpu_offload`` are page-locked."""
    no_sync_accumulation: bool = False
    """Gradient accumulation under ``no_sync``: unsharded gradients are kept until the last micro-batch."""
