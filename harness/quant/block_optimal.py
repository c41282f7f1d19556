"""4-bit codebooks made for absmax-normalised blocks of N(0, 1) values: AF4 and BOF4 / BOF4-S.

NF4 places its levels at quantiles of N(0, 1), but what a codebook quantizes is w / absmax(block): one
value of each block is exactly +-1 and the others follow N(0, 1) truncated at the block's maximum and
divided by it, a law that depends on the block size B. Both types here compute their 16 levels from
that law for the job's block size (cached per block size); they differ in the error they minimise.

The law: M = max |z| over B draws has CDF (2 Phi(m) - 1)^B; given M = m, each other value is z / m with
z ~ N(0, 1) truncated to [-m, m]. Expectations over M are a Gauss-Legendre rule over m (``_NODES``
nodes), so every quantity below is a weighted sum over nodes of closed-form truncated-normal terms: no
sampling, deterministic. AF4's construction evaluates the CDF ~10^5 times, so it interpolates a table.

- ``af4`` (Yoshida, "NF4 Isn't Information Theoretically Optimal (and that's Good)", arXiv 2306.06965):
  levels minimising the expected L1 error, built by the author's published procedure (generate_af4.py
  in github.com/davisyoshida/abnormal-floats): -1, 0 and 1 are levels; six levels between -1 and 0 and
  seven between 0 and 1 are placed so that each is the median of its cell, walking outwards-in from -1
  with the first level found by bisection and a root search that closes the last cell at 0.
- ``bof4`` / ``bof4_s`` (Blumenberg, Graave, Fingscheidt, "Improving Block-Wise LLM Quantization by 4-bit
  Block-Wise Optimal Float (BOF4)", arXiv 2505.06653): levels minimising the expected squared error by
  Lloyd's iteration (each free level moves to the mean of its nearest-level cell) on this law - the
  paper's "theoretical" solution, which it shows equals its data-driven one on N(0, 1) samples. ``bof4``
  normalises by absmax (levels -1, 0, 1 fixed, as NF4/AF4 have them); ``bof4_s`` by the signed maximum
  (the value of largest magnitude, sign kept), so +1 is in every block and -1 in none: levels 0 and 1
  fixed, the lowest level free. The signed law differs only in its point mass: z / (s m) with symmetric z
  is distributed as z / m, so the continuous part is shared.

AF4's block-64 levels are published (8 decimals, copied into bitsandbytes' get_4bit_type("af4")) and
reproduced; for BOF4 we found no published values to check against, only the procedure (docs/formats.md).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial

import numpy as np
import torch

from harness.quant.codebook import CodebookStorage, normal_float_levels, pack_pairs
from harness.quant.int4 import encode_absmax, to_blocks
from harness.quant.spec import StorageArgs

_NODES = 256  # Gauss-Legendre nodes over the block maximum
_LLOYD_TOLERANCE = 1e-10  # largest level move at which Lloyd's iteration stops
_LLOYD_MAX_STEPS = 20_000
_GRID = 8193  # interpolation points of the CDF on [-1, 1]: step 2.4e-4, Hermite error ~step^4
_BISECTION_STEPS = 60  # 2^-60 of an interval of length <= 1: below fp64 resolution


def _ndtr(t: torch.Tensor) -> torch.Tensor:
    """Phi(t) through erfc (torch's fp64 erf/ndtr are ~50x slower on CPU than erfc)."""
    return torch.special.erfc(-t / 2**0.5) / 2


def _phi(t: torch.Tensor) -> torch.Tensor:
    return torch.exp(-t * t / 2) / (2 * torch.pi) ** 0.5


@cache
def _block_max_nodes(blocksize: int) -> tuple[torch.Tensor, ...]:
    """Gauss-Legendre nodes m over the range where M = max |z| of a block has density above 1e-30,
    their weights times that density B (2 Phi(m) - 1)^(B - 1) 2 phi(m) (renormalised to sum to 1), and
    at each node Phi(-m) and the truncated mass Z(m) = Phi(m) - Phi(-m). The integrands are smooth in
    m, so the rule converges geometrically (levels agree to 1e-12 between 256 and 512 nodes)."""
    low = float(torch.special.ndtri(torch.tensor((1e-30 ** (1 / blocksize) + 1) / 2, dtype=torch.float64)))
    high = -float(torch.special.ndtri(torch.tensor(1e-30 / (2 * blocksize), dtype=torch.float64)))
    unit, unit_weights = np.polynomial.legendre.leggauss(_NODES)
    m = torch.tensor((unit + 1) / 2 * (high - low) + low, dtype=torch.float64)
    mass = 1 - torch.special.erfc(m / 2**0.5)  # 2 Phi(m) - 1, without cancellation
    density = blocksize * torch.exp((blocksize - 1) * torch.log(mass)) * 2 * _phi(m)
    weights = torch.tensor(unit_weights, dtype=torch.float64) * density
    return m, _ndtr(-m), mass, weights / weights.sum()


def continuous_cdf(x: torch.Tensor, blocksize: int) -> torch.Tensor:
    """P(z / M <= x) for a non-maximal value of a block, x in [-1, 1] (fp64, any shape)."""
    m, low, mass, weights = _block_max_nodes(blocksize)
    x = x.to(torch.float64)[..., None].clamp(-1, 1)
    return ((_ndtr(m * x) - low) / mass) @ weights


def continuous_partial_mean(a: torch.Tensor, b: torch.Tensor, blocksize: int) -> torch.Tensor:
    """E[z / M ; a < z / M <= b] for a non-maximal value: (phi(m a) - phi(m b)) / (m Z(m)), averaged."""
    m, _, mass, weights = _block_max_nodes(blocksize)
    a, b = a.to(torch.float64)[..., None], b.to(torch.float64)[..., None]
    return ((_phi(m * a) - _phi(m * b)) / (m * mass)) @ weights


def continuous_pdf(x: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Density of z / M for a non-maximal value: mean over nodes of m phi(m x) / Z(m)."""
    m, _, mass, weights = _block_max_nodes(blocksize)
    return (m * _phi(m * x.to(torch.float64)[..., None]) / mass) @ weights


@cache
def _cdf_table(blocksize: int) -> tuple[list[float], list[float]]:
    """The continuous CDF and density on _GRID points of [-1, 1] (for cubic Hermite interpolation)."""
    x = torch.linspace(-1, 1, _GRID, dtype=torch.float64)
    chunks = x.split(256)  # bounds the (points, nodes) temporaries at 8 MiB
    cdf = torch.cat([continuous_cdf(c, blocksize) for c in chunks])
    pdf = torch.cat([continuous_pdf(c, blocksize) for c in chunks])
    return cdf.tolist(), pdf.tolist()


def normalized_cdf(x: float, blocksize: int) -> float:
    """P(w / absmax <= x) over all values of a block: mass 1 / (2B) at each of -1 and +1, the rest
    continuous (AF4's ``cdf``), the continuous part by cubic Hermite interpolation of _cdf_table
    (scalar Python: AF4's construction evaluates it some 10^5 times)."""
    if x < -1:
        return 0.0
    if x >= 1:
        return 1.0
    cdf, pdf = _cdf_table(blocksize)
    step = 2 / (_GRID - 1)
    i = min(int((x + 1) / step), _GRID - 2)
    t = (x + 1) / step - i
    t2, t3 = t * t, t * t * t
    continuous = (
        (2 * t3 - 3 * t2 + 1) * cdf[i]
        + (t3 - 2 * t2 + t) * step * pdf[i]
        + (3 * t2 - 2 * t3) * cdf[i + 1]
        + (t3 - t2) * step * pdf[i + 1]
    )
    edge = 1 / (2 * blocksize)
    return edge + (1 - 2 * edge) * continuous


def _bisect(f, low: float, high: float) -> float:
    """A root of f on [low, high] where f(low) and f(high) differ in sign (or the nearer end)."""
    f_low = f(low)
    for _ in range(_BISECTION_STEPS):
        mid = (low + high) / 2
        if (f(mid) > 0) == (f_low > 0):
            low, f_low = mid, f(mid)
        else:
            high = mid
    return (low + high) / 2


def _inverse_cdf(p: float, blocksize: int) -> float:
    edge = 1 / (2 * blocksize)
    if p <= edge:
        return -1.0
    if p >= 1 - edge:
        return 1.0
    return _bisect(lambda x: normalized_cdf(x, blocksize) - p, -1.0, 1.0)


def _median_chain(start: float, steps: int, blocksize: int) -> list[float]:
    """AF4's build_code on [-1, 0]: from `start` (the level after -1), each next level c is placed so that
    the previous level b is the median of its cell [midpoint(a, b), midpoint(b, c)]; a chain that would
    reach 0 is filled with 0 (which marks it infeasible)."""
    cdf = lambda x: normalized_cdf(x, blocksize)  # noqa: E731
    chain, a, b = [start], -1.0, start
    lower_split = cdf((a + b) / 2)
    for _ in range(steps):
        upper_split = cdf(b) + (cdf(b) - lower_split)
        c = 1.0 if upper_split > 1 else 2 * _inverse_cdf(upper_split, blocksize) - b
        if c >= 0:
            return chain + [0.0] * (steps + 1 - len(chain))
        lower_split, a, b = upper_split, b, c
        chain.append(c)
    return chain


def _af4_half(steps: int, blocksize: int) -> list[float]:
    """steps + 1 levels in (-1, 0): the largest feasible start by bisection (to 1e-4, as the author's
    code), then the start whose last level is the median of a cell that ends at 0."""
    low, high = -1 + 1e-5, -1e-5
    while high - low > 1e-4:
        mid = (low + high) / 2
        chain = _median_chain(mid, steps, blocksize)
        increasing = all(b > a for a, b in zip(chain, chain[1:], strict=False))
        if increasing and max(chain) < 0:
            low = mid
        else:
            high = mid

    def closes_at_zero(start: float) -> float:
        chain = _median_chain(start, steps, blocksize)
        top, split = chain[-1], (chain[-1] + chain[-2]) / 2
        top_p = normalized_cdf(top, blocksize)
        return top_p + (top_p - normalized_cdf(split, blocksize)) - 0.5

    return _median_chain(_bisect(closes_at_zero, -1 + 1e-5, low), steps, blocksize)


@cache
def _af4_levels(blocksize: int) -> tuple[float, ...]:
    negative = _af4_half(5, blocksize)
    positive = [-v for v in reversed(_af4_half(6, blocksize))]
    return (-1.0, *negative, 0.0, *positive, 1.0)


def af4_levels(blocksize: int) -> torch.Tensor:
    """AF4's 16 sorted fp32 levels for `blocksize` (computed once per block size, about a second)."""
    return torch.tensor(_af4_levels(blocksize), dtype=torch.float32)


def _lloyd_step(levels: torch.Tensor, free: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Every free level to the mean of the continuous law over its nearest-level cell. The point masses
    at +-1 lie in the cells of fixed levels (or, signed, at -1 with mass 0), so they never enter."""
    edges = torch.cat([levels.new_tensor([-1.0]), (levels[1:] + levels[:-1]) / 2, levels.new_tensor([1.0])])
    mass = continuous_cdf(edges[1:], blocksize) - continuous_cdf(edges[:-1], blocksize)
    centroids = continuous_partial_mean(edges[:-1], edges[1:], blocksize) / mass
    return torch.where(free, centroids, levels)


@cache
def _bof4_levels(blocksize: int, signed: bool) -> tuple[float, ...]:
    levels = normal_float_levels(4).double()  # Lloyd starts from NF4
    fixed = (levels == 0) | (levels == 1) | ((levels == -1) & (not signed))
    for _ in range(_LLOYD_MAX_STEPS):
        moved = _lloyd_step(levels, ~fixed, blocksize)
        done = (moved - levels).abs().max().item() < _LLOYD_TOLERANCE
        levels = moved
        if done:
            break
    return tuple(levels.tolist())


def bof4_levels(blocksize: int, signed: bool = False) -> torch.Tensor:
    """BOF4's (signed: BOF4-S's) 16 sorted fp32 levels for `blocksize`, MSE-optimal for the law above."""
    return torch.tensor(_bof4_levels(blocksize, signed), dtype=torch.float32)


def signed_max_scaled_blocks(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of `flat` (blocks, bs) in fp32 times 1 / their signed maximum (the value of largest
    magnitude, sign kept, so that it becomes +1), and that fp32 signed maximum (0 for an all-zero block,
    whose values stay 0)."""
    blocks = to_blocks(flat.float(), blocksize)
    signed_max = blocks.gather(1, blocks.abs().argmax(dim=1, keepdim=True)).squeeze(1)
    inverse = torch.where(signed_max != 0, 1 / signed_max, 0.0)
    return blocks * inverse[:, None], signed_max


class BlockOptimalStorage(CodebookStorage):
    """A codebook type whose levels are computed for the job's block size (cached per block size)."""

    def __init__(self, name: str, levels_for: Callable[[int], torch.Tensor]):
        super().__init__(name)
        self._levels_for = levels_for

    def levels(self, args: StorageArgs) -> torch.Tensor:
        return self._levels_for(args.blocksize)


class SignedCodebookStorage(BlockOptimalStorage):
    """A codebook type on blocks normalised by their signed maximum (BOF4-S): the stored per-block
    constant is that signed value, so decoding (level * constant) and double quantization (which
    quantizes constants of either sign) are the codebook types' own."""

    def encode(self, weight: torch.Tensor, args: StorageArgs) -> dict[str, torch.Tensor]:
        levels = self.levels(args).to(weight.device, torch.float32, copy=True)
        scaled, signed_max = signed_max_scaled_blocks(weight.reshape(-1), args.blocksize)
        codes = pack_pairs(torch.bucketize(scaled, (levels[1:] + levels[:-1]) / 2, out_int32=True))
        return {"codes": codes, **encode_absmax(signed_max, args.double_quant), "code": levels}


SPECS = (
    BlockOptimalStorage("af4", af4_levels),
    BlockOptimalStorage("bof4", bof4_levels),
    SignedCodebookStorage("bof4_s", partial(bof4_levels, signed=True)),
)
