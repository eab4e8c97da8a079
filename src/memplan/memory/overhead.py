"""Memory outside PyTorch's tensors: CUDA context, NCCL buffers, and the caching allocator's reserve.

Every constant here points to a record under ``validation/published/overhead/``; they are
provisional until GPU-measured records (``validation/measured/``) replace them.
"""

from __future__ import annotations

from memplan.memory.breakdown import Category, Device, Term
from memplan.sources import measurement
from memplan.units import GB, GiB

#: Non-PyTorch memory of one training process on one GPU (CUDA context, cuBLAS/cuDNN handles,
#: loaded kernels): 78.09 − 75.31 − 1.83 = 0.95 GiB in an OOM report on an 80 GB GPU.
#: Record: validation/published/overhead/compressed-tensors-pr587.toml
CUDA_CONTEXT_BYTES = int(0.95 * GiB)

#: NCCL buffers of one communicator after all-reduce: "about 1.6GB" (NVIDIA/nccl#864).
#: Record: validation/published/overhead/nccl-issue864.toml. Charged once per process whose group has
#: more than one rank (one data-parallel communicator; ring buffers grow with channels, not ranks).
NCCL_COMMUNICATOR_BYTES = int(1.6 * GB)

#: Reserve of the caching allocator beyond allocated bytes (fragmentation, cached free blocks): 5 %
#: of allocated, the allowance chosen in vllm-project/compressed-tensors#587 after observing 2.4 %
#: (1.83 GiB reserved-unallocated of 75.31 GiB allocated).
#: Record: validation/published/overhead/compressed-tensors-pr587.toml
ALLOCATOR_RESERVE_FRACTION = 0.05

_CONTEXT_SOURCE = measurement("validation/published/overhead/compressed-tensors-pr587.toml",
                              "non-PyTorch memory 0.95 GiB of one process")
_NCCL_SOURCE = measurement("validation/published/overhead/nccl-issue864.toml", "one communicator ≈ 1.6 GB")


def cuda_context(path: str) -> Term:
    """CUDA context and library handles of one process on one GPU.

    Source: validation/published/overhead/compressed-tensors-pr587.toml (0.95 GiB non-PyTorch).
    Assumes: one process per GPU role; lazy module loading (CUDA ≥ 11.7), as ptrblck notes in
    pytorch/pytorch#107667; kernels of flash-attn/DeepSpeed add to it (not modelled separately).
    Checked by: tests/memory/test_overhead.py
    """
    return Term(path=path, bytes=CUDA_CONTEXT_BYTES, category=Category.OVERHEAD, device=Device.GPU,
                source=_CONTEXT_SOURCE)


def nccl_buffers(path: str, world_size: int) -> list[Term]:
    """NCCL communicator buffers of one rank; none for a single-rank group.

    Source: validation/published/overhead/nccl-issue864.toml (≈ 1.6 GB for one communicator).
    Assumes: one communicator per process (the data-parallel group); sub-group communicators
    (ZeRO++ hpZ, ring attention) are not added.
    Checked by: tests/memory/test_overhead.py
    """
    if world_size <= 1:
        return []
    return [Term(path=path, bytes=NCCL_COMMUNICATOR_BYTES, category=Category.OVERHEAD, device=Device.GPU,
                 source=_NCCL_SOURCE)]


def reserved_bytes(allocated_bytes: int, overhead_bytes: int) -> int:
    """What the device holds: allocated tensors plus the allocator's reserve, plus non-PyTorch memory.

        reserved = allocated × (1 + ALLOCATOR_RESERVE_FRACTION) + overhead

    Source: ALLOCATOR_RESERVE_FRACTION's record. Compare with ``nvidia-smi`` used memory (or
    ``torch.cuda.max_memory_reserved`` + non-PyTorch memory).
    Checked by: tests/memory/test_overhead.py
    """
    return allocated_bytes + int(allocated_bytes * ALLOCATOR_RESERVE_FRACTION) + overhead_bytes
