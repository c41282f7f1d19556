"""Over seeds: a configuration's mean with a t-interval, and paired per-seed differences between two.

Seeds are few (2–5), so intervals use Student's t, not the bootstrap. Two configurations run with the
same seeds share initialisation and batch order; their per-seed differences are the paired sample.
With per-document scores for >= 3 seeds, :mod:`harness.stats.hierarchical` adds the document variance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t

from harness.stats.paired import PairedEstimate, t_estimate


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values with its two-sided t-interval; bounds are NaN for fewer than two values."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` (e.g. one metric over seeds) with its ``confidence`` t-interval."""
    data = _finite(values, "values")
    mean = float(data.mean())
    if data.size < 2:
        return Interval(mean, math.nan, math.nan, int(data.size), confidence)
    half = float(student_t.ppf(1 - (1 - confidence) / 2, data.size - 1)) * _standard_error(data)
    return Interval(mean, mean - half, mean + half, int(data.size), confidence)


def paired_seeds(
    baseline: Mapping[int, float], current: Mapping[int, float], confidence: float = 0.95
) -> PairedEstimate:
    """current − baseline over the seeds both have: paired t-interval, paired t-test p, t-based MDE.

    Seeds only one side has are left out; fewer than two shared seeds is an error naming the seeds.
    """
    shared = sorted(set(baseline) & set(current))
    if len(shared) < 2:
        raise ValueError(
            f"a per-seed comparison needs >= 2 shared seeds; baseline has {sorted(baseline)}, "
            f"current has {sorted(current)}"
        )
    base = _finite([baseline[s] for s in shared], "baseline")
    cur = _finite([current[s] for s in shared], "current")
    diff = cur - base
    return t_estimate(
        base.mean(),
        cur.mean(),
        float(diff.mean()),
        _standard_error(diff),
        diff.size - 1,
        f"paired t over seeds {shared}",
        confidence,
        diff.size,
    )


def _standard_error(data: np.ndarray) -> float:
    return float(data.std(ddof=1)) / math.sqrt(data.size)


def _finite(values: Sequence[float], name: str) -> np.ndarray:
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0 or not np.all(np.isfinite(data)):
        raise ValueError(f"{name} must be a non-empty list of finite numbers, got {list(values)!r}")
    return data
