"""Holm and Benjamini–Hochberg adjusted p-values against statsmodels' multipletests."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from harness.stats import benjamini_hochberg, holm


@pytest.mark.parametrize("seed", range(20))
def test_holm_and_bh_match_statsmodels_on_random_p_values(seed):
    """Random families of 1-60 p-values, some tied, many small: both corrections agree to 1e-12 (one
    multiplication and a running max/min each, the same float operations)."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 60))
    p = np.concatenate([rng.uniform(0, 1, size), rng.uniform(0, 0.01, size // 3)])
    p[: size // 5] = np.round(p[: size // 5], 2)  # ties
    rng.shuffle(p)
    for ours, method in ((holm(p), "holm"), (benjamini_hochberg(p), "fdr_bh")):
        assert ours == pytest.approx(multipletests(p, method=method)[1], abs=1e-12)


def test_untested_rows_stay_nan_and_do_not_count_as_tests():
    p = [0.01, np.nan, 0.04, 0.03]
    tested = [0.01, 0.04, 0.03]
    assert np.isnan(holm(p)[1]) and np.isnan(benjamini_hochberg(p)[1])
    assert holm(p)[[0, 2, 3]] == pytest.approx(multipletests(tested, method="holm")[1])
    assert benjamini_hochberg(p)[[0, 2, 3]] == pytest.approx(multipletests(tested, method="fdr_bh")[1])
    assert holm([]).size == 0


def test_a_p_value_outside_0_1_is_named():
    with pytest.raises(ValueError, match=r"p-values must be a 1-d list in \[0, 1\].*1\.5"):
        holm([0.2, 1.5])
