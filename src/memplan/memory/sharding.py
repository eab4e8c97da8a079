"""How a model's states are sharded across its ranks and where they live: the sharding engine's typed
options, one type per engine, resolved once by a framework adapter.

``Sharding`` is the union a ``jobs.Role`` carries: DeepSpeed ZeRO (:class:`ZeroSharding`, formulas in
memory/zero.py, model_states.py, ds_buffers.py) or PyTorch FSDP (:class:`~memplan.memory.fsdp.FsdpSharding`,
formulas in memory/fsdp.py). Code that needs one engine's options checks the type first.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from memplan.dtypes import DType
from memplan.memory.fsdp import FsdpSharding


class ZeroStage(IntEnum):
    """DeepSpeed ZeRO stage (Rajbhandari et al., arXiv:1910.02054 §5): ordered, so ``>=`` works."""

    ZERO_0 = 0
    """No partitioning (data parallel with a full replica of all model states)."""
    ZERO_1 = 1
    """Optimizer states partitioned (P_os)."""
    ZERO_2 = 2
    """Optimizer states and gradients partitioned (P_os+g)."""
    ZERO_3 = 3
    """Optimizer states, gradients and parameters partitioned (P_os+g+p)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ZeroSharding:
    """One model under DeepSpeed ZeRO: the options of its DeepSpeed config that change memory."""

    stage: ZeroStage
    """ZeRO stage of the model's config (a frozen model's config uses 3 only when training uses 3)."""
    offload_optimizer: bool = False
    """``zero_optimization.offload_optimizer.device = cpu``: optimizer state, fp32 master and the optimizer
    step in pinned host RAM (DeepSpeedCPUAdam)."""
    offload_params: bool = False
    """``zero_optimization.offload_param.device = cpu``: a frozen ZeRO-3 model's parameters in host RAM."""
    grad_accum_dtype: DType | None = None
    """``data_types.grad_accum_dtype``; None keeps DeepSpeed's default."""
    zpg: int = 1
    """``zero_hpz_partition_size``: ZeRO++ hierarchical partition size (1: off)."""
    overlap_comm: bool = False
    """``zero_optimization.overlap_comm`` (with contiguous gradients): double-buffered reduce buckets."""


Sharding = ZeroSharding | FsdpSharding
"""The sharding engine of one model: DeepSpeed ZeRO or PyTorch FSDP."""
