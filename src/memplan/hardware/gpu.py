"""One accelerator model: how much memory it has, how much a process can use, and where that comes from.

Three numbers describe a device's memory, and they differ (A100-SXM4-80GB shown):

- the vendor's label, ``80GB``: NVIDIA and AMD print "GB" but mean binary gibibytes for device
  memory (an A100 80GB has 81,920 MiB = 80 GiB of HBM2e); ``vendor_label_bytes`` stores the label's
  number times 2^30 and says so;
- the driver's total, ``nvidia-smi``/``rocm-smi``/``npu-smi`` "memory total": 81,920 MiB on A100 but
  81,559 MiB on H100 80GB, whose driver withholds part of the 80 GiB; GDDR boards with ECC on lose
  1/16 of it (L40S: 46,068 MiB instead of 49,140 MiB); this is ``memory_bytes``;
- the runtime's total, what ``cudaMemGetInfo``/``cudaDeviceProp.totalGlobalMem`` (and so
  ``torch.cuda.get_device_properties().total_memory`` and the "total capacity" of a PyTorch OOM
  message) report: 85,100,068,864 B (81,157.75 MiB) on the same A100. Every allocation of a
  process, its CUDA context included, comes out of this number, so it is ``usable_bytes``. The CUDA
  context, NCCL buffers and allocator slack are modelled as ``overhead`` terms by
  ``memory/overhead.py``, not subtracted here.

Only ``cli/render.py`` turns these integers into text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from memplan.errors import ConfigError
from memplan.sources import Source, code

#: NVIDIA GPUs run bf16 natively from compute capability 8.0 (Ampere) on: PyTorch's
#: ``torch.cuda.is_bf16_supported()`` returns True without emulation only when ``major >= 8``.
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)
BF16_RULE_SOURCE = code(
    "pytorch/pytorch:torch/cuda/__init__.py@v2.6.0",
    "is_bf16_supported(): native support needs get_device_properties(device).major >= 8")


class Vendor(StrEnum):
    """Who makes the device (and so which tool reports its memory)."""

    NVIDIA = "nvidia"
    """NVIDIA; totals as ``nvidia-smi`` reports them."""
    AMD = "amd"
    """AMD Instinct; totals as ``rocm-smi``/``rocminfo`` report them."""
    HUAWEI = "huawei"
    """Huawei Ascend NPUs; totals as ``npu-smi`` reports them."""
    CUSTOM = "custom"
    """A device described only by a size the user typed (``--gpu 80GiB``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Gpu:
    """One accelerator, fully resolved: every byte count is an exact ``int``."""

    name: str
    """Catalogue key (``a100-80g``); ``custom`` for a size given on the command line."""
    display_name: str
    """Human name (``NVIDIA A100 80GB (SXM4 / PCIe)``)."""
    vendor: Vendor
    """Maker of the device."""
    aliases: tuple[str, ...]
    """Other accepted spellings, already normalised (lower case, ``-`` separators)."""
    vendor_label: str
    """Capacity as the vendor prints it (``80GB HBM2e``), or the size the user typed."""
    vendor_label_bytes: int
    """The label's number in bytes, read as binary (``80GB`` → 80 × 2^30); see the module docstring."""
    memory_bytes: int
    """Total device memory as the driver's management tool reports it (``nvidia-smi`` memory.total)."""
    usable_bytes: int | None
    """What the compute runtime reports as total (``cudaMemGetInfo``/``totalGlobalMem``): the most a
    process can allocate, its own CUDA context included. ``None`` where no measurement is recorded."""
    bf16: bool
    """The device computes in bfloat16 natively."""
    compute_capability: str | None
    """NVIDIA compute capability (``8.0``); ``None`` for other vendors and custom sizes."""
    sources: tuple[Source, ...]
    """Where the label, the driver total, the runtime total and the bf16 flag come from."""
    notes: tuple[str, ...]
    """Caveats: ECC mode, driver-version spread, which variant a measurement was taken on."""

    def __post_init__(self) -> None:
        location = f"gpu {self.name!r}" if self.name else "gpu"
        if not self.name:
            raise ConfigError(location, "a GPU needs a name")
        if self.memory_bytes <= 0 or self.vendor_label_bytes <= 0:
            raise ConfigError(location, "memory sizes must be positive")
        if self.usable_bytes is not None and not 0 < self.usable_bytes <= self.memory_bytes:
            raise ConfigError(location, "usable_bytes must be positive and at most memory_bytes")

    @property
    def capacity_bytes(self) -> int:
        """The number to compare a per-device peak against: ``usable_bytes`` where measured, else
        ``memory_bytes`` (an upper bound: on NVIDIA the runtime sees 350-800 MiB less)."""
        return self.usable_bytes if self.usable_bytes is not None else self.memory_bytes

    @property
    def is_custom(self) -> bool:
        """True for a device given as a bare size."""
        return self.vendor is Vendor.CUSTOM
