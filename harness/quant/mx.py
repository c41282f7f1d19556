"""Microscaling FP4 storage, pure torch (any device): OCP MXFP4 and NVIDIA NVFP4.

Both store FP4-E2M1 elements (sign, 2 exponent bits with bias 1, 1 mantissa bit: magnitudes 0, 0.5, 1,
1.5, 2, 3, 4, 6) in small blocks and differ only in the block scale:

- ``mxfp4`` (OCP Microscaling Formats (MX) v1.0, section 6.3): blocks of 32, one E8M0 scale per block
  (a power of two, stored as its biased exponent byte), X = 2^(floor(log2(amax)) - emax_elem) with
  emax_elem = 2 for E2M1; each value / X is rounded to nearest, ties to even, and saturates at +-6.
  4 + 8/32 = 4.25 bits per parameter.
- ``nvfp4`` (NVIDIA Blackwell NVFP4, as torchao's ``nvfp4_quantize`` with a per-tensor scale and
  Model-Optimizer implement it): blocks of 16, one FP8-E4M3 scale per block of amax / 6, taken relative
  to an fp32 per-tensor scale amax(W) / (448 * 6) that maps the tensor's largest block onto E4M3's
  largest value; elements as above. 4 + 8/16 + 32/numel = 4.5 + 32/numel bits per parameter.

Codes are E2M1 bit patterns (bit 3 the sign), packed two per byte as the codebook types pack them
(element 2i in the high nibble), so decoding is the codebook types' one pair-table lookup with the
block's scale in place of the absmax (harness.quant.codebook.dequantize_codebook_blockwise). The block
scale bytes are stored under the role ``absmax`` and NVFP4's per-tensor scale under ``absmax2``, the
roles a weight's byte breakdown counts as first- and second-level constants.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from harness.quant.codebook import dequantize_codebook_blockwise, pack_pairs
from harness.quant.int4 import to_blocks
from harness.quant.spec import ALLOWED_BLOCKSIZES, StorageArgs, StorageSpec

E2M1_MAGNITUDES: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_MAX = 6.0
E2M1_EMAX = 2  # exponent of E2M1's largest normal value (6 = 1.5 * 2^2): OCP MX's emax_elem
# Round-half-even ties between consecutive magnitudes: at 0.75, 1.75 and 3.5 the even neighbour (1, 2, 4:
# mantissa bit 0) is the upper one; at 0.25, 1.25, 2.5 and 5 it is the lower one.
_E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_E2M1_TIES_UP = (0.75, 1.75, 3.5)
E8M0_BIAS = 127
MXFP4_BLOCKSIZE = 32
NVFP4_BLOCKSIZE = 16
E4M3_MAX = 448.0  # largest finite float8_e4m3fn
E4M3_TINY = 2.0**-6  # smallest normal float8_e4m3fn: torchao clamps block scales there


def e2m1_values() -> torch.Tensor:
    """fp32 value of each 4-bit E2M1 code 0..15 (code 8 is -0)."""
    magnitudes = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float32)
    return torch.cat([magnitudes, -magnitudes])


def round_to_e2m1(x: torch.Tensor) -> torch.Tensor:
    """uint8 E2M1 codes of fp32 `x`: saturate |x| at 6, round to nearest with ties to even, keep the
    sign bit (so -0.1 becomes -0, code 8, as a float cast would)."""
    magnitude = x.abs().clamp_(max=E2M1_MAX)
    midpoints = torch.tensor(_E2M1_MIDPOINTS, dtype=x.dtype, device=x.device)
    codes = torch.bucketize(magnitude, midpoints)  # a value on a midpoint goes to the lower magnitude
    ties_up = torch.isin(magnitude, torch.tensor(_E2M1_TIES_UP, dtype=x.dtype, device=x.device))
    return (codes + ties_up).to(torch.uint8) | (torch.signbit(x).to(torch.uint8) << 3)


def mx_shared_exponents(blocks: torch.Tensor) -> torch.Tensor:
    """int32 unbiased E8M0 exponent per row of fp32 `blocks`: floor(log2(amax)) - emax_elem, clamped to
    E8M0's finite range -127..127; an all-zero block gets -127 (its codes are 0 whatever the scale).

    frexp gives amax = m * 2^e with m in [0.5, 1), so floor(log2(amax)) = e - 1 exactly, subnormals
    included (no log2 rounding near powers of two)."""
    amax = blocks.abs().amax(dim=1)
    exponent = torch.frexp(amax).exponent - 1 - E2M1_EMAX
    return torch.where(amax > 0, exponent, -E8M0_BIAS).clamp(-E8M0_BIAS, E8M0_BIAS)


def quantize_mxfp4(flat: torch.Tensor, blocksize: int = MXFP4_BLOCKSIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1-D float tensor in MXFP4; returns (packed codes (blocks, bs / 2) uint8, E8M0 scales (blocks,)
    uint8).

    Dividing by the power-of-two scale is exact (ldexp), so the only rounding is the element's."""
    blocks = to_blocks(flat.float(), blocksize)
    exponent = mx_shared_exponents(blocks)
    codes = round_to_e2m1(torch.ldexp(blocks, -exponent[:, None].float()))
    return pack_pairs(codes), (exponent + E8M0_BIAS).to(torch.uint8)


def mxfp4_scales(e8m0: torch.Tensor) -> torch.Tensor:
    """fp32 2^(e - 127) per stored E8M0 byte (byte 0 is 2^-127, an fp32 subnormal), by a 256-entry table
    lookup (a per-block ldexp is a pow over every block: several ms for a 4096 x 4096 weight)."""
    powers = torch.ldexp(
        torch.ones(256, device=e8m0.device), torch.arange(256, device=e8m0.device) - E8M0_BIAS
    )
    return powers[e8m0.long()]


def nvfp4_tensor_scale(flat: torch.Tensor) -> torch.Tensor:
    """0-d fp32 per-tensor scale amax / (448 * 6); 1 for an all-zero tensor (any scale decodes it)."""
    amax = flat.abs().amax().float()
    return torch.where(amax > 0, amax / (E4M3_MAX * E2M1_MAX), 1.0)


def quantize_nvfp4(
    flat: torch.Tensor, blocksize: int = NVFP4_BLOCKSIZE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 1-D float tensor in NVFP4; returns (packed codes (blocks, bs / 2) uint8, E4M3 block scales (blocks,)
    as float8_e4m3fn, 0-d fp32 per-tensor scale).

    The arithmetic is torchao's nvfp4_quantize with a per-tensor scale, operation for operation: block
    scale (amax / 6) / tensor scale, clamped to [2^-6, 448] and rounded to E4M3; elements multiplied by
    (1 / tensor scale) / block scale, saturated at +-6 and rounded to E2M1 with ties to even."""
    tensor_scale = nvfp4_tensor_scale(flat)
    blocks = to_blocks(flat.float(), blocksize)
    block_scale = (blocks.abs().amax(dim=1) / E2M1_MAX) / tensor_scale
    block_scale = block_scale.clamp(E4M3_TINY, E4M3_MAX).to(torch.float8_e4m3fn)
    reciprocal = (1.0 / tensor_scale) / block_scale.float()
    codes = round_to_e2m1(blocks * reciprocal[:, None])
    return pack_pairs(codes), block_scale, tensor_scale


def nvfp4_scales(block_scale: torch.Tensor, tensor_scale: torch.Tensor) -> torch.Tensor:
    """fp32 scale of each block: tensor scale * E4M3 block scale (torchao's get_hp_scales)."""
    return tensor_scale * block_scale.float()


def encode_mxfp4(weight: torch.Tensor, blocksize: int = MXFP4_BLOCKSIZE) -> dict[str, torch.Tensor]:
    """codes: packed E2M1 (blocks, bs / 2) uint8; absmax: the E8M0 scale bytes (blocks,) uint8."""
    codes, scale = quantize_mxfp4(weight.reshape(-1), blocksize)
    return {"codes": codes, "absmax": scale}


def decode_mxfp4(tensors: dict[str, torch.Tensor], shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """The weight back in `shape` and `dtype`: E2M1 value * 2^(e - 127), computed in fp32, rounded once."""
    values = e2m1_values().to(tensors["codes"].device)
    scales = mxfp4_scales(tensors["absmax"])
    return dequantize_codebook_blockwise(tensors["codes"], scales, values, shape.numel(), dtype).view(shape)


def encode_nvfp4(weight: torch.Tensor, blocksize: int = NVFP4_BLOCKSIZE) -> dict[str, torch.Tensor]:
    """codes: packed E2M1 (blocks, bs / 2) uint8; absmax: the E4M3 block scale bytes (blocks,) uint8;
    absmax2: the 0-d fp32 per-tensor scale (the second level, as double quantization's constants)."""
    codes, block_scale, tensor_scale = quantize_nvfp4(weight.reshape(-1), blocksize)
    return {"codes": codes, "absmax": block_scale.view(torch.uint8), "absmax2": tensor_scale}


def decode_nvfp4(tensors: dict[str, torch.Tensor], shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """The weight back in `shape` and `dtype`: E2M1 value * (tensor scale * block scale) in fp32."""
    values = e2m1_values().to(tensors["codes"].device)
    scales = nvfp4_scales(tensors["absmax"].view(torch.float8_e4m3fn), tensors["absmax2"])
    return dequantize_codebook_blockwise(tensors["codes"], scales, values, shape.numel(), dtype).view(shape)


def mxfp4_bits_per_param(blocksize: int = MXFP4_BLOCKSIZE) -> float:
    """4-bit elements plus one 8-bit E8M0 scale per block: 4.25 at 32 (numel a multiple of the block)."""
    return 4 + 8 / blocksize


def nvfp4_bits_per_param(numel: int, blocksize: int = NVFP4_BLOCKSIZE) -> float:
    """4-bit elements, one 8-bit E4M3 scale per block and one fp32 per tensor: 4.5 + 32 / numel at 16
    (numel a multiple of the block)."""
    return 4 + 8 / blocksize + 32 / numel


class MicroscalingStorage(StorageSpec):
    """An E2M1 type with 8-bit block scales. Its block sizes are the format's native one (MXFP4 32, NVFP4
    16) and, for sweeps at a common block size, 16 and every size the other 4-bit types take, with the
    same scale and element rules (only the native size is the published format). Its scales are already
    8-bit, so ``quant.double_quant`` does not apply and is recorded False."""

    blocksizes = (NVFP4_BLOCKSIZE, *ALLOWED_BLOCKSIZES)
    native_blocksize: int

    def layout(self, args: StorageArgs) -> StorageArgs:
        return replace(args, double_quant=False)


class MXFP4Storage(MicroscalingStorage):
    name, native_blocksize = "mxfp4", MXFP4_BLOCKSIZE

    def encode(self, weight: torch.Tensor, args: StorageArgs) -> dict[str, torch.Tensor]:
        return encode_mxfp4(weight, args.blocksize)

    def decode(
        self, tensors: dict[str, torch.Tensor], shape: torch.Size, args: StorageArgs, dtype: torch.dtype
    ) -> torch.Tensor:
        return decode_mxfp4(tensors, shape, dtype)

    def bits_per_param(self, args: StorageArgs, shape: torch.Size) -> float:
        return mxfp4_bits_per_param(args.blocksize)


class NVFP4Storage(MicroscalingStorage):
    name, native_blocksize = "nvfp4", NVFP4_BLOCKSIZE

    def encode(self, weight: torch.Tensor, args: StorageArgs) -> dict[str, torch.Tensor]:
        return encode_nvfp4(weight, args.blocksize)

    def decode(
        self, tensors: dict[str, torch.Tensor], shape: torch.Size, args: StorageArgs, dtype: torch.dtype
    ) -> torch.Tensor:
        return decode_nvfp4(tensors, shape, dtype)

    def bits_per_param(self, args: StorageArgs, shape: torch.Size) -> float:
        return nvfp4_bits_per_param(shape.numel(), args.blocksize)


SPECS = (MXFP4Storage(), NVFP4Storage())
