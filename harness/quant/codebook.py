"""Codebook storage: blockwise 4-bit types defined by their levels alone, pure torch (any device).

A codebook type stores each value as the index of the nearest of at most 16 sorted levels in [-1, 1]
after scaling its block by 1 / absmax; dequantization looks the level up and multiplies by the absmax.
Blocks, absmax and double quantization are Int4's (harness.quant.int4), so NF4, the FP4 layouts of the
paper's Table 2 and a user's own 16 levels differ in nothing but the levels. The levels are stored with
the weight (role ``code``, counted once per weight as for bitsandbytes), so a stored weight decodes
without knowing which codebook made it.

Codes are packed two per byte as neighbours (element 2i in the high nibble, 2i + 1 in the low one), the
layout bitsandbytes uses, rather than Int4's halves: one lookup in a 256 x 2 table then yields both
values of a byte already in order. With halves the pairs need a transposing copy: 76 vs 34 ms to
dequantize 4096 x 4096 at block 64 (2-core AMD EPYC, 2026-12-01).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from harness.quant.int4 import absmax_scaled_blocks, decode_absmax, encode_absmax
from harness.quant.native import decode_pairs
from harness.quant.spec import StorageArgs, StorageSpec, theoretical_bits_per_param

CODEBOOK_SIZE = 16  # levels of a user-defined codebook: every pattern of a 4-bit code


def normal_float_offset(k: int) -> float:
    """The probability whose N(0, 1) quantile becomes level 1 in NF-k.

    bitsandbytes' NF4 uses 0.9677083: the mean of 1 - 1/(2 * 15) and 1 - 1/(2 * 16), i.e. half a bin
    short of the tail for a type with 15 and with 16 equal-probability bins, rounded to the 7 digits it
    is published with (this formula reproduces them). The same rule for any k.
    """
    return round(((1 - 1 / (2 * (2**k - 1))) + (1 - 1 / (2 * 2**k))) / 2, 7)


def normal_float_levels(k: int = 4) -> torch.Tensor:
    """NF-k (QLoRA, section 3): 2^k levels in [-1, 1], N(0, 1) quantiles at evenly spaced probabilities.

    The paper's asymmetric construction, so that zero is exact: 2^(k-1) + 1 quantiles from probability
    0.5 to `offset` on the positive side and 2^(k-1) on the negative side, joined with one shared zero,
    then divided by the largest. Probabilities in fp32 and quantiles in fp64, normalised in fp32, as
    bitsandbytes' create_normal_map computes them: for k = 4 the result is its NF4 table bit for bit.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 8:
        raise ValueError(f"NF-k needs an integer k in 2..8, got {k!r}")
    half, offset = 2 ** (k - 1), normal_float_offset(k)
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, half + 1, dtype=torch.float32)[:-1].double())
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, half, dtype=torch.float32)[:-1].double())
    levels = torch.cat([negative, positive.new_zeros(1), positive]).float().sort().values
    return levels / levels.max()


def float_levels(exponent_bits: int, mantissa_bits: int) -> torch.Tensor:
    """Levels of a sign + exponent + mantissa 4-bit float, sorted and divided by the largest.

    IEEE-style: exponent field 0 is subnormal (mantissa * 2^(1 - bias)), every other pattern is a finite
    normal number ((1 + mantissa) * 2^(e - bias)); no pattern is reserved for inf or NaN. The bias
    (2^(exponent_bits - 1) - 1) only sets the absolute scale, which dividing by the largest level cancels.
    The sign doubles zero: -0 and +0 are one level, so a 4-bit float has 15 distinct levels and one of
    the 16 code patterns is never used.
    """
    bias = 2 ** (exponent_bits - 1) - 1
    steps = 2**mantissa_bits
    magnitudes = torch.tensor(
        [
            (m / steps if e == 0 else 1 + m / steps) * 2.0 ** (max(e, 1) - bias)
            for e in range(2**exponent_bits)
            for m in range(steps)
        ],
        dtype=torch.float64,
    )
    magnitudes = magnitudes / magnitudes.max()
    return torch.cat([-magnitudes, magnitudes]).unique().float()  # unique() sorts


def fp4_e2m1_levels() -> torch.Tensor:
    """FP4-E2M1 (Table 2): bias 1, subnormals +-0.5; magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 over 6.

    This is the OCP MX FP4 layout. bitsandbytes' ``fp4`` has the same zero and six normal magnitudes
    but decodes the subnormal pattern to 0.0625 / 12 = 1/192 instead of 0.5 / 6 = 1/12, so the two types
    round identically wherever |x| / absmax >= 1/8 and differ only for the smallest values.
    """
    return float_levels(exponent_bits=2, mantissa_bits=1)


def fp4_e3m0_levels() -> torch.Tensor:
    """FP4-E3M0 (Table 2): bias 3, no mantissa, so exponent field 0 is zero itself (no subnormals);
    magnitudes 2^-6, 2^-5, ..., 2^-1, 1 (after dividing by 2^4) and 0: a logarithmic grid."""
    return float_levels(exponent_bits=3, mantissa_bits=0)


def pack_pairs(codes: torch.Tensor) -> torch.Tensor:
    """Pack level indices 0..15 two per byte along the last dim: element 2i high nibble, 2i + 1 low."""
    codes = codes.to(torch.uint8)
    return (codes[..., 0::2] << 4) | codes[..., 1::2]


def pair_table(levels: torch.Tensor) -> torch.Tensor:
    """(256, 2) fp32: byte b -> (levels[b >> 4], levels[b & 15]); indices past the levels never occur."""
    padded = F.pad(levels.float(), (0, CODEBOOK_SIZE - levels.numel()))
    return torch.stack([padded.repeat_interleave(CODEBOOK_SIZE), padded.repeat(CODEBOOK_SIZE)], dim=-1)


def quantize_codebook_blockwise(
    flat: torch.Tensor, blocksize: int, levels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest level per value (ties to the lower level, as bitsandbytes); returns (packed uint8 codes
    (blocks, blocksize / 2), fp32 absmax)."""
    scaled, absmax = absmax_scaled_blocks(flat, blocksize)
    midpoints = (levels[1:] + levels[:-1]) / 2
    return pack_pairs(torch.bucketize(scaled, midpoints, out_int32=True)), absmax


def dequantize_codebook_blockwise(
    packed: torch.Tensor, absmax: torch.Tensor, levels: torch.Tensor, numel: int, dtype: torch.dtype
) -> torch.Tensor:
    """1-D tensor of the first `numel` values: level * absmax computed in fp32 and rounded once into
    `dtype`, as bitsandbytes does. On CPU the compiled loop of harness.quant.native (one pass, ~4x less
    memory traffic); elsewhere, or without a C compiler, the same values from torch ops."""
    values = decode_pairs(packed, absmax, levels, dtype)
    if values is None:
        pairs = pair_table(levels).index_select(0, packed.view(-1).int()).view(packed.shape[0], -1)
        values = torch.mul(
            pairs, absmax[:, None], out=torch.empty(pairs.shape, dtype=dtype, device=pairs.device)
        )
    return values.view(-1)[:numel]


def encode_codebook(
    weight: torch.Tensor, blocksize: int, double_quant: bool, levels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """codes: packed uint8 (blocks, blocksize / 2); absmax (+ absmax2, offset) as Int4's; code: the
    levels in fp32, a copy on the weight's device."""
    levels = levels.to(weight.device, torch.float32, copy=True)
    codes, absmax = quantize_codebook_blockwise(weight.reshape(-1), blocksize, levels)
    return {"codes": codes, **encode_absmax(absmax, double_quant), "code": levels}


def decode_codebook(tensors: dict[str, torch.Tensor], shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """Dequantized weight in its original shape."""
    absmax = decode_absmax(tensors)
    return dequantize_codebook_blockwise(
        tensors["codes"], absmax, tensors["code"], shape.numel(), dtype
    ).view(shape)


def validate_codebook(values: Sequence[float] | None) -> tuple[float, ...]:
    """A user-defined 4-bit codebook as floats: 16 finite, strictly increasing values in [-1, 1] with 0
    among them (zero must be exact: padding and pruned weights are zeros). Raises ValueError naming what
    is wrong."""
    allowed = f"{CODEBOOK_SIZE} finite, strictly increasing numbers in [-1, 1], one of them exactly 0"
    if values is None:
        raise ValueError(f"quant.storage='codebook' needs quant.codebook: {allowed}")
    values = list(values)
    bad_types = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad_types:
        raise ValueError(f"codebook values {bad_types!r} are not numbers; allowed: {allowed}")
    if len(values) != CODEBOOK_SIZE:
        raise ValueError(f"codebook has {len(values)} values, not {CODEBOOK_SIZE}; allowed: {allowed}")
    problems = [f"{v!r} is not finite" for v in values if not math.isfinite(v)]
    problems += [f"{v!r} is outside [-1, 1]" for v in values if math.isfinite(v) and abs(v) > 1]
    problems += [
        f"{b!r} at position {position} does not exceed {a!r}"
        for position, (a, b) in enumerate(zip(values, values[1:], strict=False), start=2)
        if not b > a
    ]
    if 0 not in values:
        problems.append("no value is exactly 0")
    if problems:
        raise ValueError(f"codebook {values!r} is not allowed: {'; '.join(problems)}; allowed: {allowed}")
    return tuple(float(v) for v in values)


class CodebookStorage(StorageSpec):
    """A 4-bit type defined by its levels alone, on Int4's blocks, absmax and double quantization; pure
    torch, any device. `levels` makes its sorted fp32 levels in [-1, 1] (a type whose levels depend on the
    job's settings overrides the method ``levels`` instead)."""

    def __init__(self, name: str, levels: Callable[[], torch.Tensor] | None = None):
        self.name, self._levels = name, levels

    def levels(self, args: StorageArgs) -> torch.Tensor:
        """The levels a weight is stored with under `args`."""
        return self._levels()

    def encode(self, weight: torch.Tensor, args: StorageArgs) -> dict[str, torch.Tensor]:
        return encode_codebook(weight, args.blocksize, args.double_quant, self.levels(args))

    def decode(
        self, tensors: dict[str, torch.Tensor], shape: torch.Size, args: StorageArgs, dtype: torch.dtype
    ) -> torch.Tensor:
        return decode_codebook(tensors, shape, dtype)

    def bits_per_param(self, args: StorageArgs, shape: torch.Size) -> float:
        return theoretical_bits_per_param(args.blocksize, args.double_quant)


class UserCodebookStorage(CodebookStorage):
    """``codebook``: the 16 levels come from ``quant.codebook``."""

    takes_codebook = True

    def __init__(self):
        super().__init__("codebook")

    def check(self, args: StorageArgs) -> None:
        super().check(args)
        validate_codebook(args.codebook)

    def levels(self, args: StorageArgs) -> torch.Tensor:
        return torch.tensor([float(v) for v in args.codebook], dtype=torch.float32)


SPECS = (
    CodebookStorage("nf4_paper", normal_float_levels),
    CodebookStorage("fp4_e2m1", fp4_e2m1_levels),
    CodebookStorage("fp4_e3m0", fp4_e3m0_levels),
    UserCodebookStorage(),
)
