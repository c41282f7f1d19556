"""QuantizedWeight: one stored weight, as the real tensors it occupies, and `quantize` to make one.

Memory is always measured from those tensors (never from a formula), so a report's bits/param is what
the device actually holds, padding and constants included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch

from harness.quant.bnb4 import decode_bnb4, encode_bnb4
from harness.quant.codebook import codebook_levels, decode_codebook, encode_codebook
from harness.quant.int4 import decode_int4, encode_int4
from harness.quant.int8 import decode_int8, encode_int8
from harness.quant.registry import (
    CODEBOOK_TYPES,
    FLOAT_DTYPES,
    validate_quant_args,
    validate_weight,
)

# Report categories -> tensor roles. `codebook` sums the first-level code table (bitsandbytes' and the
# codebook types' levels) and, with bitsandbytes' double quantization, the 256-value dynamic map of the
# constants; both are counted once per weight (bitsandbytes shares them between layers, so this is an
# upper bound of about 1 KiB per weight).
BREAKDOWN: dict[str, tuple[str, ...]] = {
    "codes": ("codes",),
    "absmax": ("absmax",),
    "absmax2": ("absmax2",),
    "offset": ("offset",),
    "codebook": ("code", "code2"),
}

Encoder = Callable[[torch.Tensor, int | None, bool], dict[str, torch.Tensor]]
Decoder = Callable[[dict[str, torch.Tensor], torch.Size, int | None, torch.dtype], torch.Tensor]


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A weight in one storage type. `tensors` maps roles (codes, absmax, absmax2, offset, code, code2)
    to the stored tensors; for bf16/fp16/fp32 `codes` is the cast weight itself.

    `blocksize` is None and `double_quant` False for the types without blocks (int8 and the floats).
    """

    storage: str
    shape: torch.Size
    dtype: torch.dtype  # of the original weight: what dequantize() returns by default
    blocksize: int | None
    double_quant: bool
    tensors: dict[str, torch.Tensor]

    @property
    def numel(self) -> int:
        return self.shape.numel()

    @property
    def device(self) -> torch.device:
        return self.tensors["codes"].device

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def bits_per_param(self) -> float:
        return self.nbytes * 8 / self.numel

    def bytes_breakdown(self) -> dict[str, int]:
        """Bytes per category (0 where the storage type has none)."""
        return {
            category: sum(self.tensors[role].nbytes for role in roles if role in self.tensors)
            for category, roles in BREAKDOWN.items()
        }

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight in its original shape, in `dtype` (default: the original weight's dtype)."""
        return DECODERS[self.storage](self.tensors, self.shape, self.blocksize, dtype or self.dtype)

    def to(self, device: torch.device | str) -> QuantizedWeight:
        """The same stored weight with every tensor moved to `device`."""
        return replace(self, tensors={role: t.to(device) for role, t in self.tensors.items()})


def _encode_float(
    weight: torch.Tensor, blocksize: int | None, double_quant: bool, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """A copy even when the dtype matches: a stored weight owns its memory, whatever its type."""
    return {"codes": weight.to(dtype, copy=True)}


DECODERS: dict[str, Decoder] = {
    "nf4": partial(decode_bnb4, quant_type="nf4"),
    "fp4": partial(decode_bnb4, quant_type="fp4"),
    "int4": lambda tensors, shape, blocksize, dtype: decode_int4(tensors, shape, dtype),
    "int8": lambda tensors, shape, blocksize, dtype: decode_int8(tensors, shape, dtype),
    **{
        name: lambda tensors, shape, blocksize, dtype: decode_codebook(tensors, shape, dtype)
        for name in CODEBOOK_TYPES
    },
    **{name: lambda tensors, shape, blocksize, dtype: tensors["codes"].to(dtype) for name in FLOAT_DTYPES},
}

ENCODERS: dict[str, Encoder] = {
    "nf4": partial(encode_bnb4, quant_type="nf4"),
    "fp4": partial(encode_bnb4, quant_type="fp4"),
    "int4": encode_int4,
    "int8": lambda weight, blocksize, double_quant: encode_int8(weight),
    **{name: partial(_encode_float, dtype=dtype) for name, dtype in FLOAT_DTYPES.items()},
}


def quantize(
    weight: torch.Tensor,
    storage: str = "nf4",
    blocksize: int = 64,
    double_quant: bool = True,
    codebook: Sequence[float] | None = None,
) -> QuantizedWeight:
    """Store `weight` (fp32/fp16/bf16, any shape and numel) in `storage` on its own device.

    Defaults are the QLoRA paper's: NF4, blocks of 64, double quantization. `codebook` is the 16 levels
    of storage ``codebook`` (a user-defined type); the other types ignore it.
    """
    spec = validate_quant_args(storage, blocksize, double_quant, weight.device, codebook)
    validate_weight(weight)
    weight = weight.detach()
    if not spec.blockwise:
        blocksize, double_quant = None, False
    if storage in CODEBOOK_TYPES:
        tensors = encode_codebook(weight, blocksize, double_quant, codebook_levels(storage, codebook))
    else:
        tensors = ENCODERS[storage](weight, blocksize, double_quant)
    return QuantizedWeight(
        storage=storage,
        shape=weight.shape,
        dtype=weight.dtype,
        blocksize=blocksize,
        double_quant=double_quant,
        tensors=tensors,
    )
