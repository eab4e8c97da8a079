"""Accelerators and hosts: the GPU catalogue, custom GPU sizes, and host RAM sizes."""

from memplan.hardware.catalogue import (
    MAX_GPU_BYTES,
    MAX_HOST_RAM_BYTES,
    MIN_GPU_BYTES,
    MIN_HOST_RAM_BYTES,
    custom_gpu,
    find_gpu,
    gpu_names,
    load_catalogue,
    normalise_name,
    parse_host_ram,
    resolve_gpu,
)
from memplan.hardware.gpu import Gpu, Vendor

__all__ = [
    "MAX_GPU_BYTES",
    "MAX_HOST_RAM_BYTES",
    "MIN_GPU_BYTES",
    "MIN_HOST_RAM_BYTES",
    "Gpu",
    "Vendor",
    "custom_gpu",
    "find_gpu",
    "gpu_names",
    "load_catalogue",
    "normalise_name",
    "parse_host_ram",
    "resolve_gpu",
]
