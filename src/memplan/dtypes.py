"""Element types and their sizes. Formulas count elements; bytes come last, via :func:`bytes_for`."""

from __future__ import annotations

from enum import Enum


class DType(Enum):
    """A tensor element type, with its width in bits."""

    FP32 = ("fp32", 32)
    """IEEE float32."""
    BF16 = ("bf16", 16)
    """bfloat16."""
    FP16 = ("fp16", 16)
    """IEEE float16."""
    FP8 = ("fp8", 8)
    """8-bit float (e4m3/e5m2)."""
    INT8 = ("int8", 8)
    """8-bit integer."""
    NF4 = ("nf4", 4)
    """bitsandbytes 4-bit NormalFloat (two values per byte)."""
    INT64 = ("int64", 64)
    """64-bit integer (token ids, positions)."""
    BOOL = ("bool", 8)
    """torch.bool occupies one byte per element."""

    def __init__(self, label: str, bits: int) -> None:
        self.label = label
        self.bits = bits

    @classmethod
    def from_name(cls, name: str) -> "DType":
        """Map a dtype spelling (``bf16``, ``bfloat16``, ``torch.float32``...) to a DType."""
        key = name.strip().lower().removeprefix("torch.")
        alias = _ALIASES.get(key)
        if alias is None:
            raise KeyError(name)
        return alias


_ALIASES: dict[str, DType] = {
    "fp32": DType.FP32, "float32": DType.FP32, "float": DType.FP32,
    "bf16": DType.BF16, "bfloat16": DType.BF16,
    "fp16": DType.FP16, "float16": DType.FP16, "half": DType.FP16,
    "fp8": DType.FP8, "float8_e4m3fn": DType.FP8, "float8_e5m2": DType.FP8,
    "int8": DType.INT8, "nf4": DType.NF4, "int64": DType.INT64, "bool": DType.BOOL,
}


def bytes_for(num_elements: int, dtype: DType) -> int:
    """Bytes taken by ``num_elements`` of ``dtype``, rounded up to whole bytes."""
    return (num_elements * dtype.bits + 7) // 8
