"""Over seeds: a configuration's mean with a t-interval, and paired per-seed differences between two.

Seeds are few (2–5), so intervals use Student's t, not the bootstrap. Two configurations run with the
same seeds share initialisation and batch order; their per-seed differences are the paired sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t

from harness.stats.paired import POWER, PairedEstimate


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
    half = _t_quantile(confidence, data.size - 1) * _standard_error(data)
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
    interval = t_interval(diff, confidence)
    dof = diff.size - 1
    se = _standard_error(diff)
    if se > 0:
        p_value = float(2 * student_t.sf(abs(interval.mean) / se, dof))
        mde = (_t_quantile(confidence, dof) + float(student_t.ppf(POWER, dof))) * se
    else:
        p_value, mde = (1.0 if interval.mean == 0 else 0.0), math.nan
    return PairedEstimate(
        n=diff.size,
        baseline=float(base.mean()),
        current=float(cur.mean()),
        delta=interval.mean,
        ci_low=interval.low,
        ci_high=interval.high,
        p_value=p_value,
        mde=mde,
        method=f"paired t over seeds {shared}",
        confidence=confidence,
        resamples=None,
        seed=None,
    )


def _t_quantile(confidence: float, dof: int) -> float:
    return float(student_t.ppf(1 - (1 - confidence) / 2, dof))


def _standard_error(data: np.ndarray) -> float:
    return float(data.std(ddof=1)) / math.sqrt(data.size)


def _finite(values: Sequence[float], name: str) -> np.ndarray:
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0 or not np.all(np.isfinite(data)):
        raise ValueError(f"{name} must be a non-empty list of finite numbers, got {list(values)!r}")
    return data
