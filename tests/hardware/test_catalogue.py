"""The GPU catalogue: exact byte counts with their sources, lookup, custom sizes and host RAM."""

from __future__ import annotations

import pytest

from memplan.errors import ConfigError
from memplan.hardware import (
    Gpu,
    Vendor,
    find_gpu,
    gpu_names,
    load_catalogue,
    parse_host_ram,
    resolve_gpu,
)
from memplan.hardware.catalogue import _gpu_from_entry
from memplan.sources import SourceKind

# The list, plus the extras the catalogue promises.
REQUIRED = [
    "a100-40g", "a100-80g", "a800-40g", "a800-80g", "h100-80g", "h100-pcie-80g", "h800-80g", "h20-96g",
    "h200-141g", "b200-180g", "l40s-48g", "l20-48g", "rtx4090-24g", "rtx3090-24g", "a10-24g", "a6000-48g",
    "v100-16g", "v100-32g", "mi300x-192g", "mi250x-gcd-64g", "ascend-910b-64g", "rtx6000-ada-48g",
    "l4-24g", "t4-16g",
]


def by_name() -> dict[str, Gpu]:
    return {g.name: g for g in load_catalogue()}


def test_catalogue_has_the_required_gpus() -> None:
    assert set(REQUIRED) <= set(by_name())


def test_driver_totals_in_bytes() -> None:
    gpus = by_name()
    # nvidia-smi memory.total, MiB * 2**20 (sources in gpus.toml):
    assert gpus["a100-80g"].memory_bytes == 81920 * 2**20 == 80 * 2**30   # thamada/nvidia-smi A100SXMx4_smi
    assert gpus["a100-40g"].memory_bytes == 40960 * 2**20                 # modal-labs/modal-client#2797
    assert gpus["a800-80g"].memory_bytes == 81920 * 2**20                 # dexmal/dexbotic#41
    assert gpus["h100-80g"].memory_bytes == 81559 * 2**20 == 85_520_809_984  # thamada H100SXMx8_smi
    assert gpus["h20-96g"].memory_bytes == 97871 * 2**20
    assert gpus["h200-141g"].memory_bytes == 143771 * 2**20
    assert gpus["b200-180g"].memory_bytes == 183359 * 2**20               # NVIDIA/TensorRT-LLM#10278
    assert gpus["l40s-48g"].memory_bytes == 46068 * 2**20                 # ECC on: 15/16 of 48 GiB, minus 12 MiB
    assert gpus["rtx4090-24g"].memory_bytes == 24564 * 2**20
    assert gpus["rtx3090-24g"].memory_bytes == 24576 * 2**20 == 24 * 2**30
    assert gpus["t4-16g"].memory_bytes == 15360 * 2**20 == 16 * 2**30 * 15 // 16  # ECC on
    assert gpus["v100-32g"].memory_bytes == 32480 * 2**20                 # godweiyang/GrabGPU#5
    # rocm-smi "VRAM Total Memory (B)"; rocminfo pool 201310208 KB * 1024:
    assert gpus["mi300x-192g"].memory_bytes == 206_141_652_992 == 201_310_208 * 1024
    assert gpus["mi250x-gcd-64g"].memory_bytes == 67_092_480 * 1024      # ROCm/rocm_smi_lib#160, one GCD
    assert gpus["ascend-910b-64g"].memory_bytes == 65536 * 2**20         # npu-smi HBM 65536 MB


def test_usable_is_the_runtime_total() -> None:
    gpus = by_name()
    # deviceQuery "Total amount of global memory: N MBytes (B bytes)"; N is B / 2**20 rounded:
    assert gpus["a100-80g"].usable_bytes == 85_100_068_864 == 81157.75 * 2**20   # printed 81158 MBytes
    assert gpus["h100-80g"].usable_bytes == 85_045_477_376 == 81105.6875 * 2**20  # printed 81106 MBytes
    assert gpus["a100-40g"].usable_bytes == 42_298_834_944                # bottlerocket-os/bottlerocket#3873
    assert gpus["l40s-48g"].usable_bytes == 47_803_596_800
    assert gpus["rtx4090-24g"].usable_bytes == 25_386_352_640 == 24210.3125 * 2**20
    assert gpus["h200-141g"].usable_bytes is None                         # no deviceQuery found
    assert gpus["h200-141g"].capacity_bytes == 143771 * 2**20             # falls back to the driver total
    assert gpus["a100-80g"].capacity_bytes == 85_100_068_864
    # What the runtime does not see of the driver total on A100 80GB: 81920 - 81157.75 = 762.25 MiB.
    a100 = gpus["a100-80g"]
    assert a100.memory_bytes - a100.usable_bytes == 762.25 * 2**20 == 799_277_056


def test_vendor_label_is_read_as_gib() -> None:
    gpus = by_name()
    assert gpus["a100-80g"].vendor_label == "80GB HBM2e"
    assert gpus["a100-80g"].vendor_label_bytes == 80 * 2**30
    assert gpus["h200-141g"].vendor_label_bytes == 141 * 2**30
    assert gpus["mi300x-192g"].vendor_label_bytes == 192 * 2**30


def test_invariants_over_the_catalogue() -> None:
    for gpu in load_catalogue():
        # The driver never reports more than the physical label, the runtime never more than the driver.
        assert gpu.memory_bytes <= gpu.vendor_label_bytes, gpu.name
        assert gpu.usable_bytes is None or gpu.usable_bytes <= gpu.memory_bytes, gpu.name
        # At most 1/16 (ECC) + 1 % below the label: a typo in a MiB figure would break this.
        assert gpu.memory_bytes >= gpu.vendor_label_bytes * 15 // 16 * 99 // 100, gpu.name
        kinds = {s.kind for s in gpu.sources}
        assert SourceKind.PAPER in kinds and len(gpu.sources) >= 3, gpu.name
        assert all(s.ref.strip() for s in gpu.sources), gpu.name
        assert gpu.vendor is not Vendor.CUSTOM


def test_bf16_follows_compute_capability() -> None:
    gpus = by_name()
    assert not gpus["v100-32g"].bf16 and not gpus["v100-16g"].bf16 and not gpus["t4-16g"].bf16
    assert gpus["a100-80g"].bf16 and gpus["mi300x-192g"].bf16 and gpus["ascend-910b-64g"].bf16
    for gpu in load_catalogue():
        if gpu.vendor is Vendor.NVIDIA:
            major = int(gpu.compute_capability.split(".")[0])
            assert gpu.bf16 == (major >= 8), gpu.name


@pytest.mark.parametrize("text, name", [
    ("a100", "a100-80g"),
    ("A100-SXM4-80GB", "a100-80g"),
    ("nvidia-a100-80gb", "a100-80g"),
    ("NVIDIA A100 80GB PCIe", "a100-80g"),
    ("a100_40g", "a100-40g"),
    ("h100", "h100-80g"),
    ("NVIDIA H100 80GB HBM3", "h100-80g"),
    ("NVIDIA H100 PCIe", "h100-pcie-80g"),
    ("A800-SXM4-80GB", "a800-80g"),
    ("NVIDIA H20", "h20-96g"),
    ("4090", "rtx4090-24g"),
    ("NVIDIA GeForce RTX 3090", "rtx3090-24g"),
    ("mi250x-128g", "mi250x-gcd-64g"),
    ("v100", "v100-32g"),
    ("910B", "ascend-910b-64g"),
])
def test_find_by_alias(text: str, name: str) -> None:
    assert find_gpu(text).name == name
    assert resolve_gpu(text).name == name


def test_names_are_unique_and_normalised() -> None:
    names = gpu_names()
    assert len(names) == len(set(names))
    assert all(n == n.lower() and " " not in n for n in names)


def test_unknown_name_suggests() -> None:
    with pytest.raises(ConfigError) as info:
        find_gpu("a100-80")
    message = str(info.value)
    assert message.startswith("--gpu: unknown GPU 'a100-80'")
    assert "a100-80g" in message and "\n" not in message


def test_custom_size() -> None:
    gpu = resolve_gpu("80GiB")
    assert gpu.is_custom and gpu.name == "custom"
    assert gpu.memory_bytes == gpu.usable_bytes == gpu.capacity_bytes == 80 * 2**30
    assert resolve_gpu("96GB").memory_bytes == 96 * 10**9
    assert resolve_gpu(" 1.5 TiB ").memory_bytes == 3 * 2**39


@pytest.mark.parametrize("text, words", [
    ("80XB", "unknown unit 'XB'"),
    ("-5GB", "must be positive"),
    ("1e30TB", "absurdly large"),
    ("abc", "unknown GPU 'abc'"),
    ("80", "has no unit"),
    ("0.5GiB", "too small for a GPU"),
    ("5TiB", "too large for a GPU"),
])
def test_gpu_errors_name_the_flag(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_gpu(text, location="--gpu")
    assert str(info.value).startswith("--gpu: ")
    assert words in str(info.value)


def test_host_ram() -> None:
    assert parse_host_ram("1600GB") == 1600 * 10**9
    assert parse_host_ram("1.5TiB") == 1.5 * 2**40
    assert parse_host_ram("512GiB") == 512 * 2**30
    assert parse_host_ram("1GiB") == 2**30 and parse_host_ram("64TiB") == 64 * 2**40  # both bounds inclusive


@pytest.mark.parametrize("text, words", [
    ("100MB", "too small for host RAM"),
    ("100TiB", "too large for host RAM"),
    ("1600", "has no unit"),
    ("-1TB", "must be positive"),
    ("lots", "cannot read"),
])
def test_host_ram_errors(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_host_ram(text)
    assert str(info.value).startswith("--host-ram: ") and words in str(info.value)


def test_catalogue_is_cached() -> None:
    assert load_catalogue() is load_catalogue()


ENTRY = {
    "name": "x-8g", "display_name": "X", "vendor": "nvidia", "aliases": ["X 8G"], "vendor_label": "8GB",
    "vendor_label_gib": 8, "vendor_label_source": "datasheet", "memory_mib": 8000, "memory_source": "smi",
    "compute_capability": "8.0", "bf16": True,
}


def test_entry_parses() -> None:
    gpu = _gpu_from_entry(dict(ENTRY), "t")
    assert gpu.memory_bytes == 8000 * 2**20 and gpu.vendor_label_bytes == 8 * 2**30
    assert gpu.aliases == ("x-8g",)
    assert gpu.usable_bytes is None


@pytest.mark.parametrize("change, words", [
    ({"memory_mib": None}, "give exactly one of"),
    ({"memory_bytes": 1}, "give exactly one of"),
    ({"memroy_mib": 1}, "unknown key(s) memroy_mib"),
    ({"memory_mib": 8000.5}, "must be a positive integer"),
    ({"bf16": False}, "disagrees with compute capability 8.0"),
    ({"vendor": "intel"}, "unknown vendor"),
    ({"runtime_total_bytes": 5}, "go together"),
    ({"runtime_total_bytes": 9000 * 2**20, "runtime_total_source": "dq"}, "at most memory_bytes"),
])
def test_bad_entries_are_config_errors(change: dict, words: str) -> None:
    entry = {**ENTRY, **change}
    entry = {k: v for k, v in entry.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        _gpu_from_entry(entry, "gpus.toml: gpu[0]")
    assert words in str(info.value)
