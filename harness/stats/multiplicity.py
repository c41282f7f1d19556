"""Multiplicity corrections: Holm (family-wise error) for a sweep's declared primary hypotheses,
Benjamini–Hochberg (false discovery rate) q-values for every exploratory comparison.

Both take p-values in any order and return adjusted values in the same order; NaN (no test made) stays
NaN and does not count as a test. They match ``statsmodels.stats.multitest.multipletests`` (``holm``,
``fdr_bh``), which the tests check.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _tested(p_values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must be a 1-d list in [0, 1] (NaN for no test), got {p.tolist()!r}")
    return p, np.flatnonzero(np.isfinite(p))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p: the i-th smallest (from 0) times m - i, running maximum, at most 1."""
    p, tested = _tested(p_values)
    out = np.full(p.shape, np.nan)
    order = tested[np.argsort(p[tested], kind="stable")]
    m = order.size
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg q-values: the i-th smallest of m times m / i, running minimum from the largest,
    capped at 1."""
    p, tested = _tested(p_values)
    out = np.full(p.shape, np.nan)
    order = tested[np.argsort(p[tested], kind="stable")]
    m = order.size
    scaled = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return out
