"""Trained configurations over >= 3 seeds: a two-level (seeds, then documents) paired bootstrap.

A document bootstrap of one training run says how much the evaluation set's sampling moves a comparison,
not how much another training seed would; a t-interval over seeds says the reverse. Resampling seeds with
replacement and then, within each drawn seed, that seed's documents (the same documents for both sides, as
in :func:`harness.stats.paired.paired_mean`) carries both. Each drawn seed slot gets its own document
resample, as the two-level bootstrap requires.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from harness.stats.paired import (
    DEFAULT_BOOTSTRAP,
    Bootstrap,
    PairedEstimate,
    bootstrap_estimate,
    corpus_arrays,
    corpus_delta_draws,
    paired_arrays,
    resampled_means,
)
from harness.stats.samples import aggregate

MIN_SEEDS = 3  # two seeds resample into three distinct sets: no spread to speak of


def _seed_draws(
    base: np.ndarray, cur: np.ndarray, weights: np.ndarray, aggregation: str, inner: Bootstrap
) -> tuple[float, float, np.ndarray]:
    """One seed's values (baseline, current) and ``inner.resamples`` document-resampled differences."""
    if aggregation == "mean":
        base, cur = paired_arrays(base, cur)
        rng = np.random.default_rng(inner.seed)
        return float(base.mean()), float(cur.mean()), resampled_means(cur - base, inner.resamples, rng)
    base, cur, weights = corpus_arrays(base, cur, weights, aggregation)
    values = aggregate(base, weights, aggregation), aggregate(cur, weights, aggregation)
    return *values, corpus_delta_draws(base, cur, weights, aggregation, inner)


def paired_hierarchical(
    per_seed: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    aggregation: str,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    seeds: Sequence[int] | None = None,
) -> PairedEstimate:
    """current − baseline averaged over seeds, with CI and p from one two-level bootstrap.

    ``per_seed`` holds, for each shared seed, the paired per-document values of both jobs and their weights
    (word/byte counts for a corpus aggregation; ignored for ``mean``). The estimate's ``n`` is the number
    of seeds, the unit more of which narrows a training comparison.
    """
    count = len(per_seed)
    if count < MIN_SEEDS:
        raise ValueError(f"a two-level bootstrap needs >= {MIN_SEEDS} seeds, got {count}")
    rows = bootstrap.resamples
    values, inner_draws = [], []
    for index, (base, cur, weights) in enumerate(per_seed):
        inner = replace(bootstrap, resamples=rows * count, seed=bootstrap.seed + 1 + index)
        base_value, cur_value, draws = _seed_draws(base, cur, weights, aggregation, inner)
        values.append((base_value, cur_value))
        inner_draws.append(draws.reshape(rows, count))
    chosen = np.random.default_rng(bootstrap.seed).integers(0, count, size=(rows, count))
    stacked = np.stack(inner_draws)  # seed, resample, slot
    draws = stacked[chosen, np.arange(rows)[:, None], np.arange(count)].mean(axis=1)
    base_value, cur_value = np.mean(values, axis=0)
    names = list(seeds) if seeds is not None else list(range(count))
    method = f"two-level bootstrap: seeds {names}, then documents within each (seed and document variance)"
    return bootstrap_estimate(base_value, cur_value, cur_value - base_value, draws, method, bootstrap, count)
