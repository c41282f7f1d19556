"""The formats after NF4 (harness.quant.block_optimal: AF4, BOF4, BOF4-S; harness.quant.mx: MXFP4, NVFP4)
as storage types: published levels reproduced, the levels' defining property checked on samples, the
paper's error claims, bits/param formulas, and one tiny job each through the real job path."""

from __future__ import annotations

import math
import pickle

import bitsandbytes.functional as bnbf
import pytest
import torch

from harness.job import run_job
from harness.quant import quantize, storage_spec
from harness.quant.block_optimal import (
    _af4_levels,
    af4_levels,
    bof4_levels,
    normalized_cdf,
    signed_max_scaled_blocks,
)
from harness.quant.codebook import normal_float_levels
from harness.quant.spec import StorageArgs
from harness.result import read_result

pytestmark = pytest.mark.usefixtures("single_thread")

# AF4 for blocks of 64 as the paper prints it (8 decimals; bitsandbytes' get_4bit_type("af4") copies it).
AF4_64_PUBLISHED = [
    -1.0, -0.69441008, -0.51243739, -0.3736951, -0.25607552, -0.14982478, -0.04934812, 0.0,
    0.04273164, 0.12934483, 0.21961274, 0.31675666, 0.42563882, 0.55496234, 0.72424863, 1.0,
]  # fmt: skip
FORMATS = ("mxfp4", "nvfp4", "af4", "bof4", "bof4_s")


def normalized_blocks(blocksize: int, blocks: int, seed: int, signed: bool = False) -> torch.Tensor:
    """N(0, 1) blocks divided by their absmax (signed: by the signed maximum), as a codebook sees them."""
    z = torch.randn(blocks * blocksize, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if signed:
        return signed_max_scaled_blocks(z, blocksize)[0].double()
    z = z.view(blocks, blocksize)
    return z / z.abs().amax(dim=1, keepdim=True)


def nearest(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    levels = levels.double()
    return levels[torch.bucketize(x, (levels[1:] + levels[:-1]) / 2)]


def test_af4_reproduces_the_published_block_64_code():
    """Every printed digit: |ours - printed| <= 5e-9, half a unit of the 8th decimal."""
    ours = af4_levels(64).double()
    exact = torch.tensor(_af4_levels(64), dtype=torch.float64)
    assert (exact - torch.tensor(AF4_64_PUBLISHED, dtype=torch.float64)).abs().max() <= 5e-9
    theirs = bnbf.get_4bit_type("af4", device="cpu", blocksize=64).double().sort().values
    assert (ours - theirs).abs().max() <= 2**-24  # both fp32 roundings of the same 8-decimal numbers


def test_normalized_cdf_matches_the_author_integral():
    """Our quadrature of the block-normalised law against generate_af4.py's own formula integrated by
    scipy's adaptive quad (epsabs 1e-9), at a few points and block sizes."""
    integrate = pytest.importorskip("scipy.integrate")
    stats = pytest.importorskip("scipy.stats")

    def author_cdf(x: float, b: int) -> float:
        def integrand(m: float) -> float:
            density = b * stats.halfnorm.cdf(m) ** (b - 1) * 2 * stats.norm.pdf(m)
            return stats.truncnorm.cdf(m * x, -m, m) * density

        continuous = integrate.quad(integrand, 0, math.inf, epsabs=1e-9)[0]
        return 1 / (2 * b) + continuous * (b - 1) / b

    for b in (64, 1024):
        for x in (-0.7, -0.2, 0.05, 0.4):
            assert abs(normalized_cdf(x, b) - author_cdf(x, b)) <= 1e-8


@pytest.mark.parametrize("signed", [False, True], ids=["bof4", "bof4_s"])
def test_bof4_levels_are_centroids_of_their_cells_on_samples(signed: bool):
    """Lloyd's fixed point, checked on data (the paper's data-driven solution): on 2^20 seeded
    normalised N(0, 1) values each free level equals the sample mean of its nearest-level cell within
    5 standard errors of that mean."""
    levels = bof4_levels(64, signed).double()
    x = normalized_blocks(64, 2**14, seed=1, signed=signed).view(-1)
    x = x[x.abs() < 1]  # the block maxima sit on the fixed level(s) +-1
    cell = torch.bucketize(x, (levels[1:] + levels[:-1]) / 2)
    fixed = {0.0, 1.0} | (set() if signed else {-1.0})
    for i, level in enumerate(levels.tolist()):
        if level in fixed:
            continue
        members = x[cell == i]
        standard_error = members.std() / math.sqrt(members.numel())
        assert abs(members.mean().item() - level) <= 5 * standard_error.item(), (i, level)


def test_error_claims_of_the_papers():
    """On the same seeded normalised blocks: BOF4 has lower squared error than NF4 and AF4 at block 64,
    BOF4-S lower than BOF4 (arXiv 2505.06653); AF4 has lower absolute error than NF4 at block 1024
    (arXiv 2306.06965). Differences are many standard errors of the paired mean (asserted via a margin
    of 1 % of the error, measured ~3-15 %)."""
    x = normalized_blocks(64, 2**13, seed=2).view(-1)
    codes = {"nf4": normal_float_levels(), "af4": af4_levels(64), "bof4": bof4_levels(64)}
    mse = {name: (x - nearest(x, levels)).square().mean().item() for name, levels in codes.items()}
    assert mse["bof4"] < 0.99 * min(mse["nf4"], mse["af4"])
    xs = normalized_blocks(64, 2**13, seed=2, signed=True).view(-1)
    assert (xs - nearest(xs, bof4_levels(64, True))).square().mean().item() < 0.99 * mse["bof4"]
    x = normalized_blocks(1024, 2**9, seed=3).view(-1)
    codes = {"nf4": normal_float_levels(), "af4": af4_levels(1024)}
    l1 = {name: (x - nearest(x, levels)).abs().mean().item() for name, levels in codes.items()}
    assert l1["af4"] < 0.99 * l1["nf4"]


def test_bof4_s_stores_the_signed_maximum():
    """A block whose largest magnitude is negative is stored with that negative constant; the value
    itself decodes exactly (level +1)."""
    weight = torch.tensor([0.1, -0.9, 0.3, 0.0] * 16)
    stored = quantize(weight, "bof4_s", 64, double_quant=False)
    assert stored.tensors["absmax"].tolist() == [weight[1].item()]
    assert stored.dequantize()[1].item() == weight[1].item()


@pytest.mark.parametrize("storage", FORMATS)
def test_bits_per_param_equals_the_formula(storage: str):
    """Measured from the stored tensors: MXFP4 4 + 8/bs, NVFP4 4 + 8/bs + 32/numel (exact), AF4/BOF4
    the codebook accounting 4 + 32/bs (or with double quantization 4 + 8/bs + 32/(256 bs)) plus the
    16 fp32 levels stored with the weight."""
    weight = torch.randn(256, 512, generator=torch.Generator().manual_seed(0))
    blocksize = {"mxfp4": 32, "nvfp4": 16}.get(storage, 64)
    for double_quant in (False, True):
        stored = quantize(weight, storage, blocksize, double_quant)
        formula = {
            "mxfp4": 4 + 8 / blocksize,
            "nvfp4": 4 + 8 / blocksize + 32 / weight.numel(),
        }.get(storage, (4 + 8 / 64 + 32 / (64 * 256) if double_quant else 4 + 32 / 64))
        assert stored.spec.bits_per_param(stored.args, weight.shape) == formula
        table = 0 if storage in ("mxfp4", "nvfp4") else 16 * 32 / weight.numel()
        extra = 32 / weight.numel() if double_quant and storage not in ("mxfp4", "nvfp4") else 0  # offset
        assert stored.bits_per_param == pytest.approx(formula + table + extra, rel=1e-12)
    assert quantize(weight, "mxfp4", 32).double_quant is False  # 8-bit scales: nothing to double-quantize


def test_microscaling_block_sizes_are_their_own():
    """MXFP4/NVFP4 take 16 (which bitsandbytes' types refuse), refuse what is not a block size, and the
    specs pickle (sweeps send them to worker processes)."""
    assert quantize(torch.randn(4, 16), "nvfp4", 16).blocksize == 16
    assert pickle.loads(pickle.dumps(storage_spec("nvfp4"))).name == "nvfp4"
    assert pickle.loads(pickle.dumps(storage_spec("bof4_s"))).levels(StorageArgs(64)).numel() == 16
    with pytest.raises(ValueError, match=r"quant.blocksize=48 is not allowed .*'mxfp4'; allowed: 16, 32"):
        storage_spec("mxfp4").check(StorageArgs(48, False))
    with pytest.raises(ValueError, match="quant.blocksize=16 is not allowed"):
        quantize(torch.randn(4, 16), "af4", 16)


@pytest.mark.parametrize("storage", FORMATS)
def test_tiny_job_end_to_end(job_config, storage: str, tmp_path):
    """quant.storage=<format> through the real job: quantize, LoRA training, evaluation; the result
    records the format and its bits/param, and the memory model's frozen-weight term is the spec's
    formula: exact for MXFP4/NVFP4; for AF4/BOF4 it leaves out the levels, the double-quantization offset
    and the rounding of the second-level constants to whole blocks, as for every codebook type."""
    blocksize = {"mxfp4": 32, "nvfp4": 16}.get(storage, 64)
    overrides = ("model=tiny", "train=smoke", "data.num_synthetic=64", "train.steps=2", "eval=synthetic")
    cfg = job_config(*overrides, f"quant.storage={storage}", f"quant.blocksize={blocksize}")
    result = run_job(cfg, tmp_path / storage)
    assert result.ok, result.error
    record = read_result(tmp_path / storage / "result.json")
    quant = record["quant"]
    assert record["config"]["quant"]["storage"] == storage and record["eval"]
    assert quant["bits_per_param"] == 8 * quant["weight_bytes"] / quant["quantized_params"]
    term = record["train"]["memory_estimate"]["terms"]["quantized_weights"]
    if storage in ("mxfp4", "nvfp4"):
        assert term == quant["weight_bytes"]
    else:  # per layer: 16 fp32 levels, the DQ offset (4 bytes), < 4 bytes of a partial absmax2 block
        left_out = quant["weight_bytes"] - term - 64 * quant["layers"]
        assert 0 <= left_out < 8 * quant["layers"]
