"""Paired comparisons of two jobs that scored the same units (documents, seeds, training steps).

Pairing removes the between-document spread that an unpaired standard error counts twice: two quantized
models that both fail the same hard ARC question tell nothing about which is better, and lm-eval's
per-task stderr cannot see that. Every estimate says how it was computed (method, resamples, seed,
confidence), so a number in a report can be reproduced.

One rule for every estimate here: the CI and the p-value come from the same procedure, so ``significant``
(p < 1 - confidence) holds exactly when the CI excludes 0. For a bootstrap both are read off one set of
resampled differences by :func:`draws_ci_p`; t-based estimates (seeds, steps) use one t distribution.

- :func:`paired_mean`: per-document scores averaged (acc, acc_norm, exact_match, Brier): mean difference,
  CI and p from one paired bootstrap (0/1 scores included).
- :func:`paired_stratified_mean`: the mean of several tasks' mean differences (the paper's mean zero-shot
  accuracy), documents resampled within their task.
- :func:`paired_corpus`: corpus-level perplexity / bits per byte: documents are resampled and the
  weighted value of *both* sides recomputed on the same resample.
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from statistics import NormalDist

import numpy as np
from scipy.stats import t as student_t

from harness.stats.samples import CORPUS_AGGREGATIONS, aggregate, aggregate_resampled

POWER = 0.80
MIN_TAIL_P = (
    1e-12  # an extrapolated normal tail says nothing reliable below this; p = 0 would claim certainty
)
MAX_SCALED_RESAMPLES = 20_000  # 4 x 250 tests / 0.05; a corpus bootstrap of 100 documents: ~0.1 s each
_MAX_DRAWS = 4_000_000  # values drawn per chunk of resamples (32 MB of int64/float64)


def alpha_of(confidence: float) -> float:
    """``1 - confidence`` without float residue (1 - 0.95 is 0.050000000000000044, which a p of exactly
    0.05 would pass and which puts ``alpha / 2 * 2000`` a hair above 50)."""
    return round(1 - confidence, 12)


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
        return alpha_of(self.confidence)

    def for_tests(self, tests: int) -> Bootstrap:
        """Enough resamples that a multiplicity correction over ``tests`` tests can reject.

        Holm and Benjamini–Hochberg compare the smallest p with ``alpha / tests``; with ``4 * tests / alpha``
        resamples (rounded up to thousands) a comparison with a draw or two beyond zero still gets there.
        Beyond :data:`MAX_SCALED_RESAMPLES` the resamples stop growing: a p below ``1 / resamples`` (no
        draw beyond zero) is then the draws' normal tail (:func:`draws_ci_p`).
        """
        needed = min(math.ceil(4 * max(tests, 1) / self.alpha / 1000) * 1000, MAX_SCALED_RESAMPLES)
        return replace(self, resamples=max(self.resamples, needed))


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

    ``mde`` is the |delta| the test used here detects at ``alpha = 1 - confidence`` with 80 % power, from
    the spread that test saw (bootstrap: the resampled differences' standard deviation; t: the standard error
    and its degrees of freedom); NaN when the pairs did not vary. ``resamples``/``seed`` are None for methods
    that draw nothing. ``draws`` (bootstrap) or ``standard_error``/``dof`` (t) keep the test's null
    distribution for :meth:`p_beyond`; they are not written to tables.
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
    draws: np.ndarray | None = field(default=None, repr=False, compare=False)
    standard_error: float | None = field(default=None, repr=False, compare=False)
    dof: float | None = field(default=None, repr=False, compare=False)

    @property
    def ratio(self) -> float:
        """current / baseline (the perplexity ratio); NaN when the baseline is 0."""
        return self.current / self.baseline if self.baseline else math.nan

    @property
    def significant(self) -> bool:
        """p-value below ``1 - confidence``: the same as the CI excluding 0."""
        return bool(self.p_value < alpha_of(self.confidence))

    def n_to_detect(self, effect: float) -> float:
        """Paired units needed to detect ``|effect|`` with 80 % power (the spread scales as 1/sqrt(n))."""
        if not effect:
            raise ValueError("effect must be non-zero")
        return math.ceil(self.n * (self.mde / abs(effect)) ** 2) if math.isfinite(self.mde) else math.nan

    def p_beyond(self, threshold: float, above: bool) -> float:
        """One-sided p of "delta <= threshold" (``above``) or "delta >= threshold", from this estimate's own
        test: the share of bootstrap draws on the null side, or the t tail. NaN when no test was made."""
        if self.draws is not None and self.draws.size:
            null_side = self.draws <= threshold if above else self.draws >= threshold
            return max(float(np.count_nonzero(null_side)), 1.0) / self.draws.size
        if self.standard_error is None or self.dof is None or not math.isfinite(self.standard_error):
            return math.nan
        if self.standard_error == 0:
            return 0.0 if (self.delta > threshold if above else self.delta < threshold) else 1.0
        score = (self.delta - threshold) / self.standard_error
        return float(student_t.sf(score if above else -score, self.dof))

    def flipped(self) -> PairedEstimate:
        """baseline − current: the same test seen from the other side."""
        return replace(
            self,
            baseline=self.current,
            current=self.baseline,
            delta=-self.delta,
            ci_low=-self.ci_high,
            ci_high=-self.ci_low,
            draws=None if self.draws is None else -self.draws,
        )

    def untested(self) -> PairedEstimate:
        """The same values with no CI, p, MDE or null distribution: too few units to test."""
        nan = math.nan
        return replace(self, ci_low=nan, ci_high=nan, p_value=nan, mde=nan, draws=None, standard_error=None)

    def to_dict(self) -> dict[str, float | int | str | None]:
        hidden = ("draws", "standard_error", "dof")
        values = {k: v for k, v in asdict(self).items() if k not in hidden}
        return {**values, "ratio": self.ratio, "significant": self.significant}


def mde_factor(confidence: float, power: float = POWER) -> float:
    """``z_(1-alpha/2) + z_power``: the detectable effect in standard errors (2.80 at 95 % / 80 %)."""
    normal = NormalDist()
    return normal.inv_cdf(1 - (1 - confidence) / 2) + normal.inv_cdf(power)


def draws_ci_p(draws: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """CI and two-sided p-value of "no difference" from one set of resampled differences, by one rule.

    p is twice the share of draws on the far side of zero (a draw at exactly zero counts on both sides).
    When no draw is beyond zero the count says only p < 1/B; p is then the smaller of 1/B and the two-sided
    normal tail of zero under the draws' mean and spread (at least :data:`MIN_TAIL_P`), so a multiplicity
    correction over many tests can still reject a clear difference. The CI's ends are the ``k``-th
    smallest and largest draws, ``k = ceil(alpha / 2 * B)``. Then the CI excludes zero exactly when
    p < alpha: ``low > 0`` ⇔ fewer than ``k`` draws are <= 0 ⇔ fewer than ``alpha / 2 * B`` are (and
    p <= 1/B < alpha when none is). The interpolated percentile CI broke this at the boundary (50 of 2,000
    draws <= 0: CI above zero, p 0.05).
    """
    ordered = np.sort(draws)
    size = ordered.size
    k = math.ceil(round(alpha_of(confidence) / 2 * size, 9))
    low, high = float(ordered[k - 1]), float(ordered[size - k])
    if not np.any(ordered):
        return low, high, 1.0
    far_side = min(np.count_nonzero(ordered <= 0), np.count_nonzero(ordered >= 0))
    if far_side:
        return low, high, float(min(1.0, 2 * far_side / size))
    spread = float(ordered.std(ddof=1))
    tail = 2 * NormalDist().cdf(-abs(float(ordered.mean())) / spread) if spread > 0 else 0.0
    return low, high, min(1 / size, max(tail, MIN_TAIL_P))


def resample_stats(n: int, stats: Callable[[np.ndarray], np.ndarray], bootstrap: Bootstrap) -> np.ndarray:
    """``stats(counts)`` for ``bootstrap.resamples`` resamples of ``n`` units drawn with replacement, in
    memory-bounded chunks: ``counts`` (rows × n) says how often each unit was drawn in each resample of the
    chunk, and ``stats`` maps it to one value per row (a weighted sum per row is one matrix product)."""
    return np.concatenate([stats(counts) for counts in resample_counts(n, bootstrap)])


def resample_counts(n: int, bootstrap: Bootstrap) -> Iterable[np.ndarray]:
    """The draws of :func:`resample_stats`, tallied per resample, chunk by chunk (float: they multiply).

    A report resamples the same documents with the same seed for every pair of configurations and every
    metric, so draws of up to one chunk are kept (a few, 32 MB at most each) and drawn once."""
    if n * bootstrap.resamples <= _MAX_DRAWS:
        return _kept_counts(n, bootstrap.resamples, bootstrap.seed)
    return _drawn_counts(n, bootstrap.resamples, bootstrap.seed)


@functools.lru_cache(maxsize=4)
def _kept_counts(n: int, resamples: int, seed: int) -> tuple[np.ndarray, ...]:
    chunks = tuple(_drawn_counts(n, resamples, seed))
    for counts in chunks:
        counts.flags.writeable = False
    return chunks


def _drawn_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_DRAWS // max(n, 1))
    for done in range(0, resamples, chunk):
        rows = min(chunk, resamples - done)
        units = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]  # unit ids per row
        yield np.bincount(units.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def resampled_means(values: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    """``rows`` bootstrap means of ``values``: the counts of each distinct value in a resample of
    ``len(values)`` are multinomial, so 0/1 or 0/±1 scores cost three numbers per resample, not n."""
    distinct, counts = np.unique(values, return_counts=True)
    chunk = max(1, _MAX_DRAWS // distinct.size)
    out = [
        rng.multinomial(values.size, counts / values.size, size=min(chunk, rows - done)) @ distinct
        for done in range(0, rows, chunk)
    ]
    return np.concatenate(out) / values.size


def paired_mean(
    baseline: np.ndarray, current: np.ndarray, bootstrap: Bootstrap = DEFAULT_BOOTSTRAP
) -> PairedEstimate:
    """Per-unit scores averaged (accuracy and friends): mean difference, CI and p from one bootstrap."""
    base, cur = paired_arrays(baseline, current)
    diff = cur - base
    draws = resampled_means(diff, bootstrap.resamples, np.random.default_rng(bootstrap.seed))
    return bootstrap_estimate(
        base.mean(), cur.mean(), diff.mean(), draws, "paired bootstrap, CI and p", bootstrap, diff.size
    )


def paired_stratified_mean(
    baseline: np.ndarray, current: np.ndarray, strata: np.ndarray, bootstrap: Bootstrap = DEFAULT_BOOTSTRAP
) -> PairedEstimate:
    """The unweighted mean over strata (tasks) of each stratum's mean score, both sides, with a bootstrap
    that resamples documents within their stratum: the paper's mean of five task accuracies, where a pool of
    every question would weight HellaSwag's ~10k questions 25 times ARC-Challenge's."""
    base, cur = paired_arrays(baseline, current)
    labels = np.asarray(strata)
    if labels.shape != base.shape:
        raise ValueError(f"strata must name one stratum per unit ({base.size}), got shape {labels.shape}")
    names = list(dict.fromkeys(labels.tolist()))
    rng = np.random.default_rng(bootstrap.seed)
    per_stratum = [(base[labels == s], cur[labels == s]) for s in names]
    draws = np.mean([resampled_means(c - b, bootstrap.resamples, rng) for b, c in per_stratum], axis=0)
    base_value = float(np.mean([b.mean() for b, _ in per_stratum]))
    cur_value = float(np.mean([c.mean() for _, c in per_stratum]))
    method = f"paired bootstrap stratified by task ({len(names)} tasks, mean of task means), CI and p"
    return bootstrap_estimate(
        base_value, cur_value, cur_value - base_value, draws, method, bootstrap, base.size
    )


def corpus_delta_draws(
    base: np.ndarray, cur: np.ndarray, weights: np.ndarray, aggregation: str, bootstrap: Bootstrap
) -> np.ndarray:
    """Corpus value of current − baseline on ``bootstrap.resamples`` document resamples shared by both."""

    def delta_of(counts: np.ndarray) -> np.ndarray:
        return aggregate_resampled(counts, cur, weights, aggregation) - aggregate_resampled(
            counts, base, weights, aggregation
        )

    return resample_stats(base.size, delta_of, bootstrap)


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
    base, cur, weights = corpus_arrays(baseline_ll, current_ll, weights, aggregation)
    draws = corpus_delta_draws(base, cur, weights, aggregation, bootstrap)
    base_value, cur_value = aggregate(base, weights, aggregation), aggregate(cur, weights, aggregation)
    method = "paired bootstrap over documents, CI and p"
    return bootstrap_estimate(
        base_value, cur_value, cur_value - base_value, draws, method, bootstrap, base.size
    )


def corpus_arrays(
    baseline_ll: np.ndarray, current_ll: np.ndarray, weights: np.ndarray, aggregation: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked float arrays for a corpus comparison; the aggregation must be a corpus-level one."""
    if aggregation not in CORPUS_AGGREGATIONS:
        raise ValueError(f"paired_corpus aggregates {CORPUS_AGGREGATIONS}, got {aggregation!r}")
    base, cur = paired_arrays(baseline_ll, current_ll)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != base.shape or not np.all(weights > 0):
        raise ValueError(f"weights must be {base.shape[0]} positive counts, one per document")
    return base, cur, weights


def bootstrap_estimate(
    base: float, cur: float, delta: float, draws: np.ndarray, method: str, bootstrap: Bootstrap, n: int
) -> PairedEstimate:
    """Assemble a bootstrap estimate (CI and p by :func:`draws_ci_p`); the MDE is the resampled differences'
    standard deviation in units of the test's detectable effect, unknown (NaN) when they never varied."""
    low, high, p_value = draws_ci_p(draws, bootstrap.confidence)
    spread = float(draws.std(ddof=1))
    mde = mde_factor(bootstrap.confidence) * spread if spread > 0 else math.nan
    return PairedEstimate(
        n=n,
        baseline=float(base),
        current=float(cur),
        delta=float(delta),
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        mde=mde,
        method=f"{method} ({bootstrap.resamples} resamples)",
        confidence=bootstrap.confidence,
        resamples=bootstrap.resamples,
        seed=bootstrap.seed,
        draws=draws,
    )


def t_estimate(
    base: float,
    cur: float,
    delta: float,
    standard_error: float,
    dof: float,
    method: str,
    confidence: float,
    n: int,
) -> PairedEstimate:
    """A t-based estimate: CI ``delta ± t·se`` and the two-sided t-test p on the same ``dof``, so the CI
    excludes zero exactly when p < alpha; MDE ``(t_(1-alpha/2) + t_power) · se``. A zero standard error
    (every pair differed by the same amount) has a zero-width CI and p 0, or 1 when the difference is 0."""
    crit = float(student_t.ppf(1 - alpha_of(confidence) / 2, dof))
    if standard_error > 0:
        p_value = float(2 * student_t.sf(abs(delta) / standard_error, dof))
        mde = (crit + float(student_t.ppf(POWER, dof))) * standard_error
    else:
        p_value, mde = (1.0 if delta == 0 else 0.0), math.nan
    half = crit * standard_error
    return PairedEstimate(
        n=n,
        baseline=float(base),
        current=float(cur),
        delta=float(delta),
        ci_low=delta - half,
        ci_high=delta + half,
        p_value=p_value,
        mde=mde,
        method=method,
        confidence=confidence,
        resamples=None,
        seed=None,
        standard_error=standard_error,
        dof=dof,
    )


def paired_arrays(baseline: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    base, cur = np.asarray(baseline, dtype=np.float64), np.asarray(current, dtype=np.float64)
    if base.ndim != 1 or base.shape != cur.shape or base.size == 0:
        raise ValueError(
            f"paired values must be two non-empty 1-d arrays of one length, got {base.shape} and {cur.shape}"
        )
    if not (np.all(np.isfinite(base)) and np.all(np.isfinite(cur))):
        raise ValueError("paired values must be finite")
    return base, cur
