"""Paired comparisons of two jobs that scored the same units (documents, seeds, training steps).

Pairing removes the between-document spread that an unpaired standard error counts twice: two quantized
models that both fail the same hard ARC question tell nothing about which is better, and lm-eval's
per-task stderr cannot see that. Every estimate says how it was computed (method, resamples, seed,
confidence), so a number in a report can be reproduced.

- :func:`paired_mean`: per-document scores averaged (acc, acc_norm, exact_match, Brier): mean difference,
  paired-bootstrap CI, exact McNemar p-value when both sides are 0/1, else a bootstrap p-value.
- :func:`paired_corpus`: corpus-level perplexity / bits per byte: documents are resampled and the
  weighted value of *both* sides recomputed on the same resample.
- :func:`mcnemar_exact`: the exact (binomial) McNemar test on the discordant counts.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np
from scipy.stats import binomtest

from harness.stats.samples import AGGREGATIONS, aggregate

POWER = 0.80
_MAX_DRAWS = 4_000_000  # indices drawn per chunk of resamples (32 MB of int64)


@dataclass(frozen=True)
class Bootstrap:
    """How confidence intervals are resampled; recorded with every estimate."""

    resamples: int = 2000
    seed: int = 0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, int) or self.resamples < 100:
            raise ValueError(f"bootstrap resamples must be an int >= 100, got {self.resamples!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"bootstrap seed must be an int, got {self.seed!r}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence!r}")

    @property
    def alpha(self) -> float:
        return 1 - self.confidence


DEFAULT_BOOTSTRAP = Bootstrap()


def add_bootstrap_options(parser: argparse.ArgumentParser) -> None:
    """``--resamples`` and ``--seed``, spelt the same in every command that reports paired CIs."""
    for name, what in (("resamples", "bootstrap resamples of each paired CI"), ("seed", "bootstrap seed")):
        default = getattr(DEFAULT_BOOTSTRAP, name)
        parser.add_argument(f"--{name}", type=int, default=default, help=f"{what} (default: %(default)s)")


def bootstrap_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Bootstrap:
    """The :class:`Bootstrap` the options ask for; a bad value is a usage error naming it (exit 2)."""
    try:
        return Bootstrap(resamples=args.resamples, seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))


@dataclass(frozen=True)
class PairedEstimate:
    """current − baseline over ``n`` paired units, with its CI, p-value and minimum detectable effect.

    ``mde`` is the smallest |delta| this comparison would detect at ``alpha = 1 - confidence`` with 80 %
    power, from the observed paired spread; NaN when the pairs did not vary (no document scored differently),
    where the spread is unknown. ``resamples``/``seed`` are None for methods that draw nothing (t-interval).
    """

    n: int
    baseline: float
    current: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    mde: float
    method: str
    confidence: float
    resamples: int | None
    seed: int | None

    @property
    def ratio(self) -> float:
        """current / baseline (the perplexity ratio); NaN when the baseline is 0."""
        return self.current / self.baseline if self.baseline else math.nan

    @property
    def significant(self) -> bool:
        """p-value below ``1 - confidence``."""
        return self.p_value < 1 - self.confidence

    def n_to_detect(self, effect: float) -> float:
        """Paired units needed to detect ``|effect|`` with 80 % power (the spread scales as 1/sqrt(n))."""
        if not effect:
            raise ValueError("effect must be non-zero")
        return math.ceil(self.n * (self.mde / abs(effect)) ** 2) if math.isfinite(self.mde) else math.nan

    def to_dict(self) -> dict[str, float | int | str | None]:
        return {**asdict(self), "ratio": self.ratio, "significant": self.significant}


def mde_factor(confidence: float, power: float = POWER) -> float:
    """``z_(1-alpha/2) + z_power``: the detectable effect in standard errors (2.80 at 95 % / 80 %)."""
    normal = NormalDist()
    return normal.inv_cdf(1 - (1 - confidence) / 2) + normal.inv_cdf(power)


def mcnemar_exact(only_baseline: int, only_current: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (right on one side only); 1 when none."""
    discordant = only_baseline + only_current
    if discordant == 0:
        return 1.0
    return float(binomtest(only_current, discordant, 0.5).pvalue)


def resample_stats(
    n: int, stats: Callable[[np.ndarray], np.ndarray], bootstrap: Bootstrap, draw: Callable | None = None
) -> np.ndarray:
    """``stats(indices)`` for ``bootstrap.resamples`` resamples of ``n`` units, in memory-bounded chunks.

    ``draw(rng, rows)`` returns a ``(rows, n)`` index array (default: units with replacement); ``stats``
    maps it to one value per row.
    """
    draw = draw or (lambda rng, rows: rng.integers(0, n, size=(rows, n)))
    rng = np.random.default_rng(bootstrap.seed)
    chunk = max(1, _MAX_DRAWS // max(n, 1))
    out = [
        stats(draw(rng, min(chunk, bootstrap.resamples - done)))
        for done in range(0, bootstrap.resamples, chunk)
    ]
    return np.concatenate(out)


def percentile_ci(draws: np.ndarray, bootstrap: Bootstrap) -> tuple[float, float]:
    low, high = np.quantile(draws, [bootstrap.alpha / 2, 1 - bootstrap.alpha / 2])
    return float(low), float(high)


def bootstrap_p(draws: np.ndarray, observed: float) -> float:
    """Two-sided p-value of "no difference" that agrees with the percentile CI: twice the share of resampled
    differences on the far side of zero (the CI at level 1 - alpha excludes 0 exactly when p < alpha).

    A centred (shift) bootstrap test disagrees with a percentile CI on skewed statistics such as corpus
    perplexity: a CI of [+0.22, +6.62] next to p = 0.057. The observed sample counts as one resample.
    """
    if observed == 0 and not np.any(draws):
        return 1.0
    far_side = min(np.count_nonzero(draws <= 0), np.count_nonzero(draws >= 0))
    return float(min(1.0, 2 * (1 + far_side) / (1 + draws.size)))


def paired_mean(
    baseline: np.ndarray, current: np.ndarray, bootstrap: Bootstrap = DEFAULT_BOOTSTRAP
) -> PairedEstimate:
    """Per-unit scores averaged (accuracy and friends): mean difference and its paired-bootstrap CI.

    The p-value is the exact McNemar test when every score is 0 or 1, else the bootstrap p-value.
    """
    base, cur = _paired_arrays(baseline, current)
    diff = cur - base
    draws = resample_stats(len(diff), lambda idx: diff[idx].mean(axis=1), bootstrap)
    delta = float(diff.mean())
    if _binary(base) and _binary(cur):
        p_value = mcnemar_exact(int(np.sum(base > cur)), int(np.sum(cur > base)))
        method = "paired bootstrap CI, exact McNemar p"
    else:
        p_value = bootstrap_p(draws, delta)
        method = "paired bootstrap CI and p"
    spread = float(diff.std(ddof=1)) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
    return bootstrap_estimate(
        base.mean(), cur.mean(), delta, draws, p_value, spread, method, bootstrap, len(diff)
    )


def paired_corpus(
    baseline_ll: np.ndarray,
    current_ll: np.ndarray,
    weights: np.ndarray,
    aggregation: str,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
) -> PairedEstimate:
    """Corpus-level perplexity (or bits per byte) of both sides, recomputed on the same document resamples.

    ``*_ll`` are per-document log-likelihoods, ``weights`` the documents' word or byte counts (the same
    documents, so the same counts on both sides).
    """
    if aggregation not in AGGREGATIONS[1:]:
        raise ValueError(f"paired_corpus aggregates {AGGREGATIONS[1:]}, got {aggregation!r}")
    base, cur = _paired_arrays(baseline_ll, current_ll)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != base.shape or not np.all(weights > 0):
        raise ValueError(f"weights must be {base.shape[0]} positive counts, one per document")

    def corpus(ll_sum: np.ndarray, weight_sum: np.ndarray) -> np.ndarray:
        mean_ll = ll_sum / weight_sum
        return np.exp(-mean_ll) if aggregation == "weighted_perplexity" else -mean_ll / math.log(2)

    def delta_of(idx: np.ndarray) -> np.ndarray:
        weight_sum = weights[idx].sum(axis=1)
        return corpus(cur[idx].sum(axis=1), weight_sum) - corpus(base[idx].sum(axis=1), weight_sum)

    draws = resample_stats(len(base), delta_of, bootstrap)
    base_value, cur_value = aggregate(base, weights, aggregation), aggregate(cur, weights, aggregation)
    delta = cur_value - base_value
    method = "paired bootstrap over documents, CI and p"
    spread = float(draws.std(ddof=1))
    return bootstrap_estimate(
        base_value, cur_value, delta, draws, bootstrap_p(draws, delta), spread, method, bootstrap, len(base)
    )


def bootstrap_estimate(
    base: float,
    cur: float,
    delta: float,
    draws: np.ndarray,
    p_value: float,
    standard_error: float,
    method: str,
    bootstrap: Bootstrap,
    n: int,
) -> PairedEstimate:
    """Assemble a bootstrap estimate; the MDE is unknown (NaN) when the pairs never differed."""
    low, high = percentile_ci(draws, bootstrap)
    mde = mde_factor(bootstrap.confidence) * standard_error if standard_error > 0 else math.nan
    return PairedEstimate(
        n=n,
        baseline=float(base),
        current=float(cur),
        delta=float(delta),
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        mde=mde,
        method=method,
        confidence=bootstrap.confidence,
        resamples=bootstrap.resamples,
        seed=bootstrap.seed,
    )


def _paired_arrays(baseline: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    base, cur = np.asarray(baseline, dtype=np.float64), np.asarray(current, dtype=np.float64)
    if base.ndim != 1 or base.shape != cur.shape or base.size == 0:
        raise ValueError(
            f"paired values must be two non-empty 1-d arrays of one length, got {base.shape} and {cur.shape}"
        )
    if not (np.all(np.isfinite(base)) and np.all(np.isfinite(cur))):
        raise ValueError("paired values must be finite")
    return base, cur


def _binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0) | (values == 1)))
