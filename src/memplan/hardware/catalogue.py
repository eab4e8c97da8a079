"""The GPU catalogue: explicit, cached loading of ``data/gpus.toml``, lookup, and ``--gpu``/``--host-ram``.

Nothing is read at import time. :func:`load_catalogue` parses the data file once (units converted to
bytes here and nowhere else); :func:`find_gpu` looks a name up; :func:`resolve_gpu` also accepts a size
(``80GiB``) and returns a custom :class:`Gpu`; :func:`parse_host_ram` reads a node's RAM.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from typing import Any

from memplan.errors import ConfigError
from memplan.hardware.gpu import BF16_MIN_COMPUTE_CAPABILITY, BF16_RULE_SOURCE, Gpu, Vendor
from memplan.sources import Source, SourceKind, measurement, paper
from memplan.units import GiB, MiB, TiB, parse_size

#: Where catalogue errors point.
CATALOGUE_FILE = "hardware/data/gpus.toml"

#: Sanity bounds for ``--gpu SIZE`` (a convention, not a hardware fact): below 1 GiB no LLM job
#: fits; 4 TiB is over 20x the largest device in the catalogue (MI300X, 192 GiB), so more is a typo.
MIN_GPU_BYTES = 1 * GiB
MAX_GPU_BYTES = 4 * TiB

#: Sanity bounds for ``--host-ram`` (a convention): under 1 GiB cannot host a training process;
#: 64 TiB is 40x the 1600 GB nodes of DESIGN.md's motivating case, so more is taken for a typo.
MIN_HOST_RAM_BYTES = 1 * GiB
MAX_HOST_RAM_BYTES = 64 * TiB

#: (low, high, how the message names them) for each kind of size.
_GPU_BOUNDS = (MIN_GPU_BYTES, MAX_GPU_BYTES, "1 GiB", "4 TiB")
_HOST_RAM_BOUNDS = (MIN_HOST_RAM_BYTES, MAX_HOST_RAM_BYTES, "1 GiB", "64 TiB")

#: Prefixes users paste from ``nvidia-smi``/``rocm-smi`` names and that the catalogue keys omit.
_VENDOR_PREFIXES = ("nvidia-", "amd-", "huawei-")

_REQUIRED = ("name", "display_name", "vendor", "aliases", "vendor_label", "vendor_label_gib",
             "vendor_label_source", "memory_source", "bf16")
_OPTIONAL = ("memory_mib", "memory_bytes", "memory_from_label", "runtime_total_bytes",
             "runtime_total_source", "compute_capability", "bf16_source", "notes")
_MEMORY_KEYS = ("memory_mib", "memory_bytes", "memory_from_label")


def normalise_name(text: str) -> str:
    """Catalogue key form of a user-typed name: lower case, runs of spaces/underscores -> ``-``."""
    return re.sub(r"[\s_]+", "-", text.strip().lower())


@lru_cache(maxsize=1)
def load_catalogue() -> tuple[Gpu, ...]:
    """Every catalogued GPU, in file order. Parsed once per process."""
    import tomllib

    text = resources.files("memplan.hardware").joinpath("data", "gpus.toml").read_text(encoding="utf-8")
    entries = tomllib.loads(text).get("gpu", [])
    return tuple(_gpu_from_entry(entry, f"{CATALOGUE_FILE}: gpu[{i}]") for i, entry in enumerate(entries))


@lru_cache(maxsize=1)
def _index() -> dict[str, Gpu]:
    """Name and alias -> GPU; every key unique across the catalogue."""
    table: dict[str, Gpu] = {}
    for gpu in load_catalogue():
        for key in (gpu.name, *gpu.aliases):
            if key in table:
                raise ConfigError(f"{CATALOGUE_FILE}: gpu {gpu.name!r}",
                                  f"name {key!r} is already used by {table[key].name!r}")
            table[key] = gpu
    return table


def gpu_names() -> tuple[str, ...]:
    """Every accepted name and alias."""
    return tuple(_index())


def find_gpu(name: str, *, location: str = "--gpu") -> Gpu:
    """The catalogued GPU called ``name`` (key or alias, any case; ``nvidia-``/``amd-`` prefix optional).

    Raises :class:`ConfigError` at ``location`` with the closest names when there is none.
    """
    gpu = _lookup(name)
    if gpu is None:
        raise ConfigError(location, _unknown_message(name))
    return gpu


def resolve_gpu(text: str, *, location: str = "--gpu") -> Gpu:
    """A ``--gpu`` value: a catalogue name or alias, or a size (``80GiB``, ``96GB``) for a custom GPU.

    A size must carry its unit (``80`` alone could be GB or GiB) and lie within
    [:data:`MIN_GPU_BYTES`, :data:`MAX_GPU_BYTES`].
    """
    gpu = _lookup(text)
    if gpu is not None:
        return gpu
    if not _looks_like_size(text):
        raise ConfigError(location, _unknown_message(text))
    num_bytes = parse_size(text, location=location, require_unit=True)
    _check_bounds(num_bytes, _GPU_BOUNDS, "a GPU", text, location)
    return custom_gpu(num_bytes, label=text.strip(), location=location)


def custom_gpu(num_bytes: int, *, label: str, location: str = "--gpu") -> Gpu:
    """A GPU known only by a size the user gave; all of it is taken as usable, bf16 as supported."""
    return Gpu(
        name="custom", display_name=f"custom ({label})", vendor=Vendor.CUSTOM, aliases=(),
        vendor_label=label, vendor_label_bytes=num_bytes, memory_bytes=num_bytes, usable_bytes=num_bytes,
        bf16=True, compute_capability=None,
        sources=(Source(kind=SourceKind.CONVENTION, ref=f"user input {location} {label}",
                        detail="a custom size is taken as the memory a process can use"),),
        notes=("Custom size: taken as usable as given (the runtime total, not the nvidia-smi total).",
               "bf16 is assumed to be supported."))


def parse_host_ram(text: str, *, location: str = "--host-ram") -> int:
    """Host RAM per node in bytes, from ``1600GB``, ``1.5TiB``, ``512GiB``.

    Same units as every size (decimal ``GB``, binary ``GiB``); a unit is required and the value must
    lie within [:data:`MIN_HOST_RAM_BYTES`, :data:`MAX_HOST_RAM_BYTES`].
    """
    num_bytes = parse_size(text, location=location, require_unit=True)
    _check_bounds(num_bytes, _HOST_RAM_BOUNDS, "host RAM", text, location)
    return num_bytes


def _lookup(text: str) -> Gpu | None:
    key = normalise_name(text)
    index = _index()
    if key in index:
        return index[key]
    for prefix in _VENDOR_PREFIXES:
        if key.startswith(prefix) and key[len(prefix):] in index:
            return index[key[len(prefix):]]
    return None


def _looks_like_size(text: str) -> bool:
    """Sizes start with a number (or a sign); names with a letter (``4090`` is caught as a name first)."""
    return bool(re.match(r"\s*[-+.0-9]", text))


def _unknown_message(text: str) -> str:
    import difflib

    key = normalise_name(text)
    close = difflib.get_close_matches(key, list(_index()), n=6, cutoff=0.5)
    names = list(dict.fromkeys(_index()[k].name for k in close))[:3]
    hint = f"; did you mean {', '.join(names[:-1])} or {names[-1]}?" if len(names) > 1 else (
        f"; did you mean {names[0]}?" if names else "")
    return (f"unknown GPU {text!r}{hint} (`memplan gpus` lists the catalogue; "
            f"or give a size such as 80GiB)")


def _check_bounds(num_bytes: int, bounds: tuple[int, int, str, str], what: str, text: str,
                  location: str) -> None:
    low, high, low_text, high_text = bounds
    if num_bytes < low:
        raise ConfigError(location, f"{text!r} is too small for {what} (at least {low_text})")
    if num_bytes > high:
        raise ConfigError(location, f"{text!r} is too large for {what} (at most {high_text})")


def _gpu_from_entry(entry: dict[str, Any], location: str) -> Gpu:
    """One ``[[gpu]]`` table -> Gpu, converting every unit to bytes."""
    name = entry.get("name", "?")
    where = f"{location} ({name})"
    _check_keys(entry, where)
    vendor = _vendor(entry["vendor"], f"{where}.vendor")
    memory_bytes, memory_kind = _memory_bytes(entry, where)
    runtime = entry.get("runtime_total_bytes")
    if (runtime is None) != ("runtime_total_source" not in entry):
        raise ConfigError(where, "runtime_total_bytes and runtime_total_source go together")
    sources = [paper(entry["vendor_label_source"], "vendor capacity label"),
               Source(kind=memory_kind, ref=entry["memory_source"], detail="driver-reported total")]
    if runtime is not None:
        sources.append(measurement(entry["runtime_total_source"], "runtime total (usable_bytes)"))
    sources.append(_bf16_source(entry, vendor, where))
    notes = tuple(entry.get("notes", ()))
    if entry.get("memory_from_label"):
        notes = ("Driver total not measured: the vendor label is used, an upper bound.", *notes)
    return Gpu(
        name=name, display_name=entry["display_name"], vendor=vendor,
        aliases=tuple(normalise_name(a) for a in entry["aliases"]),
        vendor_label=entry["vendor_label"], vendor_label_bytes=_int(entry, "vendor_label_gib", where) * GiB,
        memory_bytes=memory_bytes, usable_bytes=runtime, bf16=entry["bf16"],
        compute_capability=entry.get("compute_capability"), sources=tuple(sources), notes=notes)


def _check_keys(entry: dict[str, Any], where: str) -> None:
    missing = [k for k in _REQUIRED if k not in entry]
    unknown = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL))
    memory_keys = [k for k in _MEMORY_KEYS if k in entry]
    if missing:
        raise ConfigError(where, f"missing {', '.join(missing)}")
    if unknown:
        raise ConfigError(where, f"unknown key(s) {', '.join(unknown)}")
    if len(memory_keys) != 1:
        raise ConfigError(where, f"give exactly one of {', '.join(_MEMORY_KEYS)}")


def _memory_bytes(entry: dict[str, Any], where: str) -> tuple[int, SourceKind]:
    """Driver total in bytes, and what kind of evidence it is."""
    if "memory_mib" in entry:
        return _int(entry, "memory_mib", where) * MiB, SourceKind.MEASUREMENT
    if "memory_bytes" in entry:
        return _int(entry, "memory_bytes", where), SourceKind.MEASUREMENT
    if entry["memory_from_label"] is not True:
        raise ConfigError(f"{where}.memory_from_label", "must be true when present")
    return _int(entry, "vendor_label_gib", where) * GiB, SourceKind.CONVENTION


def _int(entry: dict[str, Any], key: str, where: str) -> int:
    value = entry[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{where}.{key}", f"must be a positive integer, got {value!r}")
    return value


def _vendor(value: str, where: str) -> Vendor:
    try:
        vendor = Vendor(value)
    except ValueError:
        raise ConfigError(where, f"unknown vendor {value!r}") from None
    if vendor is Vendor.CUSTOM:
        raise ConfigError(where, "'custom' is for sizes given on the command line")
    return vendor


def _bf16_source(entry: dict[str, Any], vendor: Vendor, where: str) -> Source:
    """NVIDIA: PyTorch's compute-capability rule, checked against the flag. Others: the entry's source."""
    if vendor is not Vendor.NVIDIA:
        if "bf16_source" not in entry:
            raise ConfigError(where, "bf16_source is required for non-NVIDIA devices")
        return Source(kind=SourceKind.CODE, ref=entry["bf16_source"], detail="bf16 support")
    capability = entry.get("compute_capability")
    if capability is None:
        raise ConfigError(where, "compute_capability is required for NVIDIA devices")
    major, minor = (int(part) for part in capability.split("."))
    if ((major, minor) >= BF16_MIN_COMPUTE_CAPABILITY) != entry["bf16"]:
        raise ConfigError(f"{where}.bf16", f"disagrees with compute capability {capability}")
    return BF16_RULE_SOURCE
