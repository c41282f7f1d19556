"""Training loss, paired by step: jobs of one sweep train on the same batches in the same order.

The per-step differences of two configurations are autocorrelated (a hard batch is hard for both, and the
models drift slowly), so the CI comes from a moving-block bootstrap over steps rather than resampling steps
one by one, which would understate the spread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from harness.stats.paired import (
    DEFAULT_BOOTSTRAP,
    Bootstrap,
    PairedEstimate,
    bootstrap_estimate,
    bootstrap_p,
    resample_stats,
)


def default_block(steps: int) -> int:
    """Block length ``ceil(steps ** (1/3))``, the usual rate for a moving-block bootstrap of a mean."""
    return max(1, math.ceil(steps ** (1 / 3)))


def block_indices(steps: int, block: int, rng: np.random.Generator, rows: int) -> np.ndarray:
    """``rows`` resamples of ``steps`` indices, each a concatenation of random runs of ``block`` steps."""
    blocks = math.ceil(steps / block)
    starts = rng.integers(0, steps - block + 1, size=(rows, blocks))
    return (starts[:, :, None] + np.arange(block)).reshape(rows, -1)[:, :steps]


def paired_loss(
    baseline: Sequence[float],
    current: Sequence[float],
    skip: int = 0,
    block: int | None = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
) -> PairedEstimate:
    """Mean per-step loss difference (current − baseline) over the steps after the first ``skip``.

    Both runs must have logged the same number of steps (the same schedule); ``block`` defaults to
    :func:`default_block`.
    """
    base, cur = np.asarray(baseline, dtype=np.float64), np.asarray(current, dtype=np.float64)
    if base.shape != cur.shape or base.ndim != 1:
        raise ValueError(f"loss curves must have the same number of steps, got {base.size} and {cur.size}")
    if not 0 <= skip < base.size - 1:
        raise ValueError(f"skip={skip} must leave at least 2 of the {base.size} steps")
    diff = cur[skip:] - base[skip:]
    if not np.all(np.isfinite(diff)):
        raise ValueError("loss curves hold NaN or inf after the skipped steps")
    steps = diff.size
    block = default_block(steps) if block is None else block
    if not 1 <= block <= steps:
        raise ValueError(f"block={block} must be between 1 and the {steps} compared steps")
    draws = resample_stats(
        steps,
        lambda idx: diff[idx].mean(axis=1),
        bootstrap,
        draw=lambda rng, rows: block_indices(steps, block, rng, rows),
    )
    delta = float(diff.mean())
    return bootstrap_estimate(
        base[skip:].mean(),
        cur[skip:].mean(),
        delta,
        draws,
        bootstrap_p(draws, delta),
        float(draws.std(ddof=1)),
        f"moving-block bootstrap over steps {skip}..{base.size - 1}, block {block}",
        bootstrap,
        steps,
    )
