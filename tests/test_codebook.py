"""Codebook storage types (harness.quant.codebook): NF4 from the paper's recipe cross-checked against
bitsandbytes, the FP4 layouts of the paper's Table 2, NF-k's construction, user-defined codebooks."""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import pytest
import torch

from harness.quant import ALLOWED_BLOCKSIZES, STORAGE_TYPES, quantize, validate_quant_args
from harness.quant.codebook import (
    SPECS,
    fp4_e2m1_levels,
    fp4_e3m0_levels,
    normal_float_levels,
    normal_float_offset,
    pack_pairs,
    pair_table,
)

pytestmark = pytest.mark.usefixtures("single_thread")
BUILTIN_CODEBOOKS = tuple(spec.name for spec in SPECS if not spec.takes_codebook)  # this module's fixed ones


def normal_weight(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.02


def rel_rms(storage: str, weight: torch.Tensor, blocksize: int = 64) -> float:
    restored = quantize(weight, storage, blocksize, double_quant=False).dequantize()
    return ((restored - weight).norm() / weight.norm()).item()


def test_nf4_paper_levels_equal_bitsandbytes_nf4():
    """The recipe in code reproduces bitsandbytes' NF4 table (to 1e-6, and in fact bit for bit), and the
    offset formula its published constant 0.9677083."""
    levels, bnb_levels = normal_float_levels(4), bnbf.get_4bit_type("nf4", device="cpu")
    assert normal_float_offset(4) == 0.9677083
    assert (levels - bnb_levels).abs().max() <= 1e-6
    assert torch.equal(levels, bnb_levels)


@pytest.mark.parametrize("shape", [(512, 512), (33, 65)], ids=str)
@pytest.mark.parametrize("blocksize", [64, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nf4_paper_codes_and_values_equal_bitsandbytes(shape: tuple[int, ...], blocksize: int, dtype):
    """Same weight, same block size, no double quantization (bitsandbytes' nested constants use another
    8-bit map): the packed codes are byte-identical (both put element 2i in the high nibble) and the
    dequantized weights are equal, partial last block included. Cross-checks both implementations."""
    weight = normal_weight(shape).to(dtype)
    ours = quantize(weight, "nf4_paper", blocksize, double_quant=False)
    theirs = quantize(weight, "nf4", blocksize, double_quant=False)
    packed_bytes = -(-weight.numel() // 2)
    assert torch.equal(ours.tensors["codes"].view(-1)[:packed_bytes], theirs.tensors["codes"].view(-1))
    assert torch.equal(ours.dequantize(), theirs.dequantize())


def test_fp4_level_values():
    """FP4-E2M1 (bias 1, subnormal 0.5): 0, 0.5, 1, 1.5, 2, 3, 4, 6 over 6. FP4-E3M0 (bias 3, no
    mantissa, no subnormals): 0 and 2^-6 .. 1. Both signed, 15 levels (+0 and -0 are one)."""
    e2m1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    e3m0 = [0] + [2.0**-e for e in range(6, -1, -1)]
    for levels, magnitudes in ((fp4_e2m1_levels(), [m / 6 for m in e2m1]), (fp4_e3m0_levels(), e3m0)):
        expected = torch.tensor(sorted({-m for m in magnitudes} | set(magnitudes)), dtype=torch.float32)
        assert levels.numel() == 15 and torch.equal(levels, expected)


def test_fp4_e2m1_relation_to_bitsandbytes_fp4():
    """bitsandbytes' fp4 is E2M1 with its subnormal pattern decoded to +-1/192 instead of +-1/12: same
    zero and six normal magnitudes. So both round every value with |x| / absmax >= 1/8 (the E2M1 boundary
    between 1/12 and 1/6) to the same level, and differ only among the smallest values."""
    bnb_levels = bnbf.get_4bit_type("fp4", device="cpu").unique()
    subnormal = fp4_e2m1_levels().abs() == torch.tensor(1 / 12, dtype=torch.float32)
    relabelled = torch.where(subnormal, fp4_e2m1_levels().sign() / 192, fp4_e2m1_levels())
    assert torch.equal(bnb_levels, relabelled.float().sort().values)

    weight = normal_weight((256, 256))
    ours = quantize(weight, "fp4_e2m1", 64, double_quant=False).dequantize()
    theirs = quantize(weight, "fp4", 64, double_quant=False).dequantize()
    absmax = weight.view(-1, 64).abs().amax(1, keepdim=True).expand(-1, 64).reshape(weight.shape)
    large = weight.abs() > absmax / 8 * (1 + 1e-5)  # clear of the boundary by more than rounding
    assert torch.equal(ours[large], theirs[large])
    assert not torch.equal(ours[~large], theirs[~large])


@pytest.mark.parametrize("k", [2, 3, 4])
def test_nf_k_levels_split_normal_samples_equally(k: int):
    """NF-k's defining property, as built: on N(0, 1) samples (scaled by the quantile that becomes level 1)
    the 2^(k-1) bins between consecutive levels on the positive side receive equal shares, and so do the
    2^(k-1) - 1 bins on the negative side (a larger share each: the asymmetric construction gives the
    positive side one level more), all within 5 binomial standard errors."""
    n = 2_000_000
    samples = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    scale = torch.special.ndtri(torch.tensor(normal_float_offset(k), dtype=torch.float64))
    levels = normal_float_levels(k).double()
    assert levels.numel() == 2**k
    counts = torch.bucketize(samples / scale, levels).bincount(minlength=2**k + 1)[1:-1]  # no tails
    half_probability = normal_float_offset(k) - 0.5
    for side, bins in (
        (counts[: 2 ** (k - 1) - 1], 2 ** (k - 1) - 1),
        (counts[2 ** (k - 1) - 1 :], 2 ** (k - 1)),
    ):
        share = half_probability / bins
        tolerance = 5 * (n * share * (1 - share)) ** 0.5
        assert ((side - n * share).abs() <= tolerance).all(), (side.tolist(), n * share)


def test_nf4_nearest_level_bins_only_near_equal():
    """What rounding to the nearest level does to that property, stated with numbers: each of NF4's 16
    nearest-level bins holds 1/16 of N(0, 1) samples only to within 15 % (measured 0.89..1.14 x 1/16),
    not exactly: bin edges are midpoints of levels, not quantiles, and the two sides differ."""
    samples = torch.randn(2_000_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scale = torch.special.ndtri(torch.tensor(normal_float_offset(4), dtype=torch.float64))
    levels = normal_float_levels(4).double()
    midpoints = (levels[1:] + levels[:-1]) / 2
    shares = (
        torch.bucketize((samples / scale).clamp(-1, 1), midpoints).bincount(minlength=16) / samples.numel()
    )
    relative = shares * 16
    assert relative.min() > 0.85 and relative.max() < 1.15
    assert relative.max() - relative.min() > 0.1  # far beyond sampling error (~0.003): not equal


@pytest.mark.parametrize("blocksize", [32, 64, 4096])
def test_nf4_beats_both_fp4_layouts_on_normal_weights(blocksize: int):
    """On N(0, sigma) weights NF4 has the lowest reconstruction error of the codebook types."""
    weight = normal_weight((512, 512))
    nf4 = rel_rms("nf4_paper", weight, blocksize)
    assert nf4 < rel_rms("fp4_e2m1", weight, blocksize) and nf4 < rel_rms("fp4_e3m0", weight, blocksize)


CUSTOM = [
    -1.0,
    -0.75,
    -0.5,
    -0.375,
    -0.25,
    -0.125,
    -0.0625,
    0.0,
    0.0625,
    0.125,
    0.25,
    0.375,
    0.5,
    0.625,
    0.75,
    1.0,
]


@pytest.mark.parametrize("blocksize", ALLOWED_BLOCKSIZES)
def test_user_codebook_round_trips_its_own_levels(blocksize: int):
    """Values that are level * 2^-e (each block starting with level 1, so absmax is exact) come back
    bit-exact for every block size; the 16 levels are stored with the weight (64 bytes)."""
    gen = torch.Generator().manual_seed(blocksize)
    levels = torch.tensor(CUSTOM)
    blocks = 20
    values = levels[torch.randint(16, (blocks, blocksize), generator=gen)]
    values[:, 0] = 1.0
    weight = (values * 2.0 ** -torch.randint(0, 12, (blocks, 1), generator=gen).float()).view(-1)[:-3]
    qweight = quantize(weight, "codebook", blocksize, double_quant=False, codebook=CUSTOM)
    assert torch.equal(qweight.dequantize(), weight)
    assert torch.equal(qweight.tensors["code"], levels) and qweight.bytes_breakdown()["codebook"] == 64


def test_user_codebook_of_nf4_levels_is_nf4_paper():
    """A user codebook with NF4's 16 levels stores exactly what the built-in does."""
    weight = normal_weight((64, 96))
    user = quantize(weight, "codebook", 64, True, codebook=normal_float_levels(4).tolist())
    builtin = quantize(weight, "nf4_paper", 64, True)
    assert all(torch.equal(user.tensors[role], builtin.tensors[role]) for role in builtin.tensors)


@pytest.mark.parametrize("storage", BUILTIN_CODEBOOKS)
@pytest.mark.parametrize("double_quant", [False, True])
def test_bits_per_param_counts_levels_once(storage: str, double_quant: bool):
    """Bytes: codes padded to whole blocks (as Int4), Int4's constants, and the levels (4 bytes each)."""
    weight = normal_weight((300, 301))
    qweight = quantize(weight, storage, 64, double_quant)
    blocks = -(-weight.numel() // 64)
    levels = qweight.tensors["code"].numel()
    assert levels == (16 if storage == "nf4_paper" else 15)
    assert qweight.bytes_breakdown() == {
        "codes": blocks * 32,
        "absmax": blocks * (1 if double_quant else 4),
        "absmax2": -(-blocks // 256) * 4 if double_quant else 0,
        "offset": 4 if double_quant else 0,
        "codebook": 4 * levels,
    }


def test_pair_table_decodes_both_nibbles():
    """Packing puts element 2i in the high nibble; the 256 x 2 table returns (high, low) levels."""
    codes = torch.arange(16, dtype=torch.uint8).repeat_interleave(16).view(16, 16)
    codes = torch.stack([codes, codes.T], dim=-1).view(-1, 2)  # every (high, low) pair once
    packed = pack_pairs(codes.view(1, -1))
    levels = torch.linspace(-1, 1, 16)
    assert torch.equal(pair_table(levels)[packed.view(-1).long()].view(-1), levels[codes.view(-1).long()])


ALLOWED = "16 finite, strictly increasing numbers in [-1, 1], one of them exactly 0"
BAD_CODEBOOKS = [
    (None, "needs quant.codebook"),
    (CUSTOM[:-1], "has 15 values, not 16"),
    ([*CUSTOM[:-1], 1.5], "1.5 is outside [-1, 1]"),
    ([*CUSTOM[:-1], float("nan")], "nan is not finite"),
    ([*CUSTOM[:-1], float("inf")], "inf is not finite"),
    ([CUSTOM[0], CUSTOM[2], CUSTOM[1], *CUSTOM[3:]], "-0.75 at position 3 does not exceed -0.5"),
    ([*CUSTOM[:7], 0.03125, *CUSTOM[8:]], "no value is exactly 0"),
    ([*CUSTOM[:15], "1"], "['1'] are not numbers"),
]


@pytest.mark.parametrize(("codebook", "message"), BAD_CODEBOOKS)
def test_bad_user_codebook_is_named(codebook, message: str):
    """Each malformed codebook fails before any work with a message naming the problem and what is allowed."""
    with pytest.raises(ValueError) as info:
        validate_quant_args("codebook", 64, False, codebook=codebook)
    assert message in str(info.value) and ALLOWED in str(info.value)
    with pytest.raises(ValueError, match="codebook"):
        quantize(torch.randn(4, 64), "codebook", codebook=codebook)


@pytest.mark.parametrize("storage", [name for name in STORAGE_TYPES if name != "codebook"])
def test_codebook_refused_by_other_types(storage: str):
    """A codebook given to a type with fixed levels would silently do nothing: it is refused, naming
    quant.codebook and quant.storage."""
    with pytest.raises(ValueError, match=rf"quant.codebook=.* quant.storage='{storage}'.*allowed: null"):
        validate_quant_args(storage, 64, False, codebook=CUSTOM)
