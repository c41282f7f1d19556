"""QuantizedWeight: one stored weight, as the real tensors it occupies.

Memory is always measured from those tensors (never from a formula), so a report's bits/param is what
the device actually holds, padding and constants included.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from harness.quant.spec import StorageArgs, StorageSpec

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


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A weight in one storage type (`spec`, which encoded it and decodes it). `tensors` maps roles
    (codes, absmax, absmax2, offset, code, code2, or a plugin's own) to the stored tensors; for
    bf16/fp16/fp32 `codes` is the cast weight itself.

    `args` are the settings as the type uses them: blocksize None and double_quant False for the types
    without blocks (int8 and the floats).
    """

    spec: StorageSpec
    shape: torch.Size
    dtype: torch.dtype  # of the original weight: what dequantize() returns by default
    args: StorageArgs
    tensors: dict[str, torch.Tensor]

    @property
    def storage(self) -> str:
        return self.spec.name

    @property
    def blocksize(self) -> int | None:
        return self.args.blocksize

    @property
    def double_quant(self) -> bool:
        return self.args.double_quant

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
        return self.spec.decode(self.tensors, self.shape, self.args, dtype or self.dtype)

    def to(self, device: torch.device | str) -> QuantizedWeight:
        """The same stored weight with every tensor moved to `device`."""
        return replace(self, tensors={role: t.to(device) for role, t in self.tensors.items()})
