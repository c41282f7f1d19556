"""Int4: the harness's own blockwise 4-bit integer storage, pure torch (any device), no loops over blocks.

The uniform-grid baseline for NF4: same block layout and double quantization as bitsandbytes, but evenly
spaced levels. Codes are symmetric, -7..7 (code = round(x / absmax * 7)): zero is exact and the grid is the
same on both sides; the 16th pattern (-8) is unused. Codes travel as two's-complement nibbles so that
unpacking is two shifts (sign extension) instead of a table lookup.

Double quantization follows the QLoRA paper: subtract the mean of the first-level constants (the offset),
then quantize them to 8 bits in blocks of 256 with one fp32 constant per block. The 8-bit step is
symmetric linear int8 (-127..127), not bitsandbytes' dynamic map, so int4 needs no codebook and no
bitsandbytes at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.quant.spec import ABSMAX_BLOCKSIZE, StorageArgs, StorageSpec, theoretical_bits_per_param

INT4_MAX = 7
INT8_MAX = 127


def to_blocks(flat: torch.Tensor, blocksize: int) -> torch.Tensor:
    """View a 1-D tensor as (blocks, blocksize), zero-padding the last block (zeros never raise an absmax).

    Copies only when padding is needed: a full weight is not worth copying otherwise.
    """
    pad = -flat.numel() % blocksize
    return (F.pad(flat, (0, pad)) if pad else flat).view(-1, blocksize)


def absmax_scaled_blocks(
    flat: torch.Tensor, blocksize: int, qmax: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of `flat` (blocks, bs) in fp32 scaled by qmax / absmax per block, and the fp32 absmax.

    An all-zero block gets absmax 0 and scaled values 0, so it dequantizes to exact zeros. With qmax 1
    this is bitsandbytes' own arithmetic (x * (1 / absmax)), which codebook types rely on to match it.
    """
    blocks = to_blocks(flat.float(), blocksize)
    low, high = torch.aminmax(blocks, dim=1)  # one pass, no |x| copy of the weight
    absmax = torch.maximum(-low, high)
    inv_scale = torch.where(absmax > 0, qmax / absmax, 0.0)
    return blocks * inv_scale[:, None], absmax


def quantize_symmetric_blockwise(
    flat: torch.Tensor, blocksize: int, qmax: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax quantization per block to int8 codes in -qmax..qmax; returns (codes (blocks, bs), fp32 absmax).

    An all-zero block gets codes 0 (see absmax_scaled_blocks).
    """
    scaled, absmax = absmax_scaled_blocks(flat, blocksize, qmax)
    return scaled.round_().to(torch.int8), absmax


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack int8 codes in -8..7 two per byte: first half of the last dim high nibble, second half low.

    Halves rather than neighbours, so that unpacking writes two contiguous runs per block.
    """
    half = codes.shape[-1] // 2
    bits = codes.view(torch.uint8)
    return (bits[..., :half] << 4) | (bits[..., half:] & 0x0F)


def unpack_nibbles(packed: torch.Tensor, dtype: torch.dtype = torch.int8) -> torch.Tensor:
    """Inverse of pack_nibbles, shifted straight into `dtype` (arithmetic shifts sign-extend each nibble;
    writing through out= skips an int8 temporary per half)."""
    out = torch.empty(*packed.shape[:-1], 2, packed.shape[-1], dtype=dtype, device=packed.device)
    torch.bitwise_right_shift(packed.view(torch.int8), 4, out=out[..., 0, :])
    torch.bitwise_right_shift((packed << 4).view(torch.int8), 4, out=out[..., 1, :])
    return out.flatten(-2)


def quantize_int4_blockwise(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 1-D float tensor; returns (packed uint8 codes (blocks, blocksize/2), fp32 absmax)."""
    codes, absmax = quantize_symmetric_blockwise(flat, blocksize, INT4_MAX)
    return pack_nibbles(codes), absmax


def dequantize_int4_blockwise(
    packed: torch.Tensor, absmax: torch.Tensor, numel: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """1-D tensor of the first `numel` values, code * (absmax / 7) computed in fp32 then cast to `dtype`
    (one rounding, as bitsandbytes does; mixed-dtype in-place multiplies are slow on CPU)."""
    values = unpack_nibbles(packed, torch.float32).mul_((absmax / INT4_MAX)[:, None])
    return values.view(-1)[:numel].to(dtype)


def double_quantize_absmax(
    absmax: torch.Tensor, blocksize: int = ABSMAX_BLOCKSIZE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Second-level quantization of the constants; returns (int8 codes (n,), fp32 absmax2, 0-d offset)."""
    offset = absmax.mean()
    codes, absmax2 = quantize_symmetric_blockwise(absmax - offset, blocksize, INT8_MAX)
    return codes.view(-1)[: absmax.numel()], absmax2, offset


def dequantize_absmax(
    codes: torch.Tensor, absmax2: torch.Tensor, offset: torch.Tensor, blocksize: int = ABSMAX_BLOCKSIZE
) -> torch.Tensor:
    """Inverse of double_quantize_absmax: the fp32 first-level constants."""
    scaled = to_blocks(codes, blocksize) * (absmax2 / INT8_MAX)[:, None]
    return scaled.view(-1)[: codes.numel()] + offset


def encode_absmax(absmax: torch.Tensor, double_quant: bool) -> dict[str, torch.Tensor]:
    """The stored constants by role: fp32 absmax, or with double quantization int8 absmax, absmax2, offset."""
    if not double_quant:
        return {"absmax": absmax}
    qabsmax, absmax2, offset = double_quantize_absmax(absmax)
    return {"absmax": qabsmax, "absmax2": absmax2, "offset": offset}


def decode_absmax(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The fp32 first-level constants back from encode_absmax's tensors."""
    if "absmax2" not in tensors:
        return tensors["absmax"]
    return dequantize_absmax(tensors["absmax"], tensors["absmax2"], tensors["offset"])


def encode_int4(weight: torch.Tensor, blocksize: int, double_quant: bool) -> dict[str, torch.Tensor]:
    """The tensors an int4 weight is stored as, keyed by their role (see QuantizedWeight)."""
    codes, absmax = quantize_int4_blockwise(weight.reshape(-1), blocksize)
    return {"codes": codes, **encode_absmax(absmax, double_quant)}


def decode_int4(tensors: dict[str, torch.Tensor], shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """Dequantized weight in its original shape; the block size is implied by the packed codes' shape."""
    absmax = decode_absmax(tensors)
    return dequantize_int4_blockwise(tensors["codes"], absmax, shape.numel(), dtype).view(shape)


class Int4Storage(StorageSpec):
    """``int4``: the uniform-grid baseline, pure torch, on any device."""

    name = "int4"

    def encode(self, weight: torch.Tensor, args: StorageArgs) -> dict[str, torch.Tensor]:
        return encode_int4(weight, args.blocksize, args.double_quant)

    def decode(
        self, tensors: dict[str, torch.Tensor], shape: torch.Size, args: StorageArgs, dtype: torch.dtype
    ) -> torch.Tensor:
        return decode_int4(tensors, shape, dtype)

    def bits_per_param(self, args: StorageArgs, shape: torch.Size) -> float:
        return theoretical_bits_per_param(args.blocksize, args.double_quant)


SPECS = (Int4Storage(),)
