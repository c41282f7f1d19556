"""NF4 and FP4 through bitsandbytes' blockwise 4-bit functions (CPU and CUDA kernels).

transformers' BitsAndBytesConfig has no block-size option, so the harness calls quantize_4bit itself.
Every tensor of the QuantState is held by role so that storage is counted from real tensors, and the
QuantState is rebuilt around them for each dequantize (cheap: no copies), which keeps `.to(device)` a
plain move of tensors. bitsandbytes is imported where it is first called: its import compiles its CPU
kernels with torch.compile (~2.6 s of every process start), which jobs of other storage types, the sweep's
launcher and the command line's checks never need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from harness.quant.spec import ABSMAX_BLOCKSIZE, StorageArgs, StorageSpec, theoretical_bits_per_param

if TYPE_CHECKING:
    from bitsandbytes.functional import QuantState


def encode_bnb4(
    weight: torch.Tensor, blocksize: int, double_quant: bool, quant_type: str
) -> dict[str, torch.Tensor]:
    """codes: packed uint8; absmax: fp32, or uint8 when nested; code: the 16-value NF4/FP4 codebook;
    nested adds absmax2 (fp32 per 256 constants), offset (fp32) and code2 (the 256-value dynamic map)."""
    import bitsandbytes.functional as bnbf

    codes, state = bnbf.quantize_4bit(
        weight, blocksize=blocksize, compress_statistics=double_quant, quant_type=quant_type
    )
    tensors = {"codes": codes, "absmax": state.absmax, "code": state.code}
    if double_quant:
        tensors |= {"absmax2": state.state2.absmax, "offset": state.offset, "code2": state.state2.code}
    return tensors


def quant_state(
    tensors: dict[str, torch.Tensor], shape: torch.Size, blocksize: int, dtype: torch.dtype, quant_type: str
) -> QuantState:
    """The bitsandbytes QuantState over the held tensors; `dtype` is what dequantize_4bit will return."""
    from bitsandbytes.functional import QuantState

    state2 = None
    if "absmax2" in tensors:
        state2 = QuantState(
            absmax=tensors["absmax2"], code=tensors["code2"], blocksize=ABSMAX_BLOCKSIZE, dtype=torch.float32
        )
    return QuantState(
        absmax=tensors["absmax"],
        shape=shape,
        code=tensors["code"],
        blocksize=blocksize,
        quant_type=quant_type,
        dtype=dtype,
        offset=tensors.get("offset"),
        state2=state2,
    )


def decode_bnb4(
    tensors: dict[str, torch.Tensor], shape: torch.Size, blocksize: int, dtype: torch.dtype, quant_type: str
) -> torch.Tensor:
    """Dequantized weight in its original shape.

    A weight whose rows hold whole blocks is dequantized in its shape, as bitsandbytes' Linear4bit does:
    the CPU kernel splits its work by row, and the same weight passed flat is one row (on the 2-core
    EPYC, a 1536x576 weight to bf16: 122 vs 71 us alone, 405 vs 111 us profiled in a training step).
    That kernel decodes wrong values where a block is wider than a row and takes only an even last dim
    (bitsandbytes' fallback recompiles with torch.compile for each shape), so other weights are
    dequantized flat and padded to an even length (the pad nibble falls in the last block).
    """
    import bitsandbytes.functional as bnbf

    if len(shape) > 1 and shape[-1] % blocksize == 0:
        state = quant_state(tensors, shape, blocksize, dtype, quant_type)
        return bnbf.dequantize_4bit(tensors["codes"], state)
    numel = shape.numel()
    state = quant_state(tensors, torch.Size([numel + numel % 2]), blocksize, dtype, quant_type)
    return bnbf.dequantize_4bit(tensors["codes"], state).view(-1)[:numel].view(shape)


class Bnb4Storage(StorageSpec):
    """``nf4`` / ``fp4``: bitsandbytes' blockwise 4-bit types (its CPU and CUDA kernels), with optional
    double quantization of the constants."""

    devices = ("cpu", "cuda")

    def __init__(self, quant_type: str):
        self.name = self.quant_type = quant_type

    def encode(self, weight: torch.Tensor, args: StorageArgs) -> dict[str, torch.Tensor]:
        return encode_bnb4(weight, args.blocksize, args.double_quant, self.quant_type)

    def decode(
        self, tensors: dict[str, torch.Tensor], shape: torch.Size, args: StorageArgs, dtype: torch.dtype
    ) -> torch.Tensor:
        return decode_bnb4(tensors, shape, args.blocksize, dtype, self.quant_type)

    def bits_per_param(self, args: StorageArgs, shape: torch.Size) -> float:
        return theoretical_bits_per_param(args.blocksize, args.double_quant)


SPECS = (Bnb4Storage("nf4"), Bnb4Storage("fp4"))
