"""PyTorch's caching host allocator: what one pinned (page-locked) allocation really costs.

Every pinned host tensor (``tensor.pin_memory()``, ``torch.empty(..., pin_memory=True)``, and so
DeepSpeed's ``get_accelerator().pin_memory``) is served by ``CachingHostAllocator``, which rounds the
request up to the next power of two before it calls ``cudaHostAlloc`` (or ``malloc`` +
``cudaHostRegister``) for the rounded size. Page-locked pages are resident from the allocation on, so
the node pays the rounded block, not the tensor: a 20.4 GiB request pins 32 GiB.

The rule at the PyTorch versions OpenRLHF's releases install (torch is unpinned in OpenRLHF's
requirements.txt; each release pins vLLM, and vLLM pins torch):

    OpenRLHF  vLLM     torch    aten/src/ATen/core/CachingHostAllocator.h (torch wheel include/)
    v0.8.5    0.9.1    2.7.0    :192-194 ``roundSize = c10::llvm::PowerOf2Ceil(size)``; :226-229 allocate
    v0.9.5    0.17.0   2.10.0   :249-251 the same, unconditional; :278-281 allocate ``roundSize``
    v0.11.0   0.27.1   2.13.0   :300-309 ``PowerOf2Ceil(size)`` unless ``size`` exceeds
                                ``pinned_max_round_threshold`` or ``pinned_max_cached_size``; :341-344

The two limits exist only from torch 2.13 on (``PYTORCH_ALLOC_CONF=pinned_max_round_threshold_mb:N``,
``pinned_max_cached_size_mb:N``), and both default to ``SIZE_MAX`` (c10/core/AllocatorConfig.h:360-363
at 2.13.0): by default every version rounds every request. ``pinned_use_cuda_host_register`` changes
only how the block is pinned (``allocWithCudaHostRegister(ptr, size)`` with the rounded size, in
aten/src/ATen/cuda/CachingHostAllocator.cpp), not its size.
Reports: pytorch/pytorch issue 150517 and PR 171662 (the threshold); vllm-project/vllm issue 56410
(``--cpu-offload-gb`` pins ~1.9x what it asks for); pytorch/pytorch issue 95823 (4 GB → 8 GB).
"""

from __future__ import annotations

from collections.abc import Iterable

from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.sources import code

#: Where the rounding rule is read (torch 2.13.0, the newest version OpenRLHF installs; 2.7.0 and
#: 2.10.0 round unconditionally, see the module docstring).
ALLOCATOR_SOURCE = code("pytorch/pytorch:aten/src/ATen/core/CachingHostAllocator.h@v2.13.0",
                        "PowerOf2Ceil(size) :300-309 (v2.10.0 :249-251, v2.7.0 :192-194)")


def pinned_block_bytes(nbytes: int) -> int:
    """The block the caching host allocator pins for a request of ``nbytes``: the next power of two
    (``c10::llvm::PowerOf2Ceil``; a power of two stays as it is; 0 allocates nothing).

    Source: ALLOCATOR_SOURCE. Assumes: the default ``pinned_max_round_threshold`` (no limit).
    Checked by: tests/memory/test_host_alloc.py::test_sglang_20_4_gib_request_pins_32_gib
    """
    if nbytes <= 0:
        return 0
    return 1 << (nbytes - 1).bit_length()


def rounding_bytes(allocations: Iterable[int]) -> int:
    """Bytes pinned beyond the requests, each allocation rounded on its own."""
    return sum(pinned_block_bytes(n) - n for n in allocations)


def rounding_term(path: str, allocations: Iterable[int], *, detail: str, phase: Phase | None = None) -> Term | None:
    """``{path}.pinned_rounding``: what the allocator pins beyond the tensors of one pinned term
    (``allocations``: the byte size of each separate pinned allocation behind it), or None when nothing.
    """
    extra = rounding_bytes(allocations)
    if not extra:
        return None
    return Term(path=f"{path}.pinned_rounding", bytes=extra, category=Category.OVERHEAD, device=Device.CPU,
                source=code(ALLOCATOR_SOURCE.ref, f"{ALLOCATOR_SOURCE.detail}; {detail}"), phase=phase)
