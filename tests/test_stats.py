"""harness.stats against textbook cases: McNemar by hand, CI coverage, identical jobs, planted shifts,
corpus perplexity resampled on both sides at once, t-intervals, block bootstrap, the samples layout."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from harness.stats import (
    Bootstrap,
    SamplesError,
    aggregate,
    compare_samples,
    draws_ci_p,
    load_samples,
    paired_corpus,
    paired_loss,
    paired_mean,
    paired_seeds,
    paired_stratified_mean,
    read_samples,
    t_interval,
    write_report_samples,
    write_samples,
)
from harness.stats import paired as paired_module
from harness.stats.paired import mde_factor, resample_counts
from harness.stats.samples import COLUMNS, pool_tasks

FAST = Bootstrap(resamples=500, seed=7)


def two_by_two(both: int, only_base: int, only_cur: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-item 0/1 scores with the given McNemar table (right on both, baseline only, current only, none)."""
    base = [1] * both + [1] * only_base + [0] * only_cur + [0] * neither
    cur = [1] * both + [0] * only_base + [1] * only_cur + [0] * neither
    return np.array(base, float), np.array(cur, float)


def test_paired_mean_on_a_hand_made_table_reads_ci_and_p_off_one_bootstrap():
    """0/1 scores: the mean difference, and CI and p from the same resampled differences (no McNemar)."""
    base, cur = two_by_two(both=10, only_base=1, only_cur=6, neither=3)
    estimate = paired_mean(base, cur, FAST)
    assert estimate.n == 20
    assert (estimate.baseline, estimate.current, estimate.delta) == pytest.approx((0.55, 0.80, 0.25))
    assert (estimate.ci_low, estimate.ci_high, estimate.p_value) == pytest.approx(
        draws_ci_p(estimate.draws, 0.95)
    )
    assert "McNemar" not in estimate.method and "500 resamples" in estimate.method
    assert (estimate.resamples, estimate.seed, estimate.confidence) == (500, 7, 0.95)


def test_identical_jobs_give_zero_difference_zero_width_ci_and_p_one():
    rng = np.random.default_rng(0)
    scores = (rng.random(300) < 0.4).astype(float)
    ll, words = -rng.uniform(100, 900, 40), rng.integers(50, 400, 40).astype(float)
    for estimate in (paired_mean(scores, scores), paired_corpus(ll, ll, words, "weighted_perplexity")):
        assert (estimate.delta, estimate.ci_low, estimate.ci_high, estimate.p_value) == (0, 0, 0, 1)
        assert not estimate.significant
        assert math.isnan(estimate.mde)  # the pairs never differed: their spread is unknown


def test_paired_bootstrap_ci_covers_the_known_difference_about_95_percent_of_the_time():
    """200 simulated paired data sets with a true shift of 0.05: the 95 % CI covers it ~95 % of the time."""
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(200):
        base = (rng.random(400) < 0.5).astype(float)
        cur = base.copy()
        noise = rng.random(400) < 0.2  # the models disagree on ~20 % of items, in both directions
        cur[noise] = (rng.random(noise.sum()) < 0.5 + 0.05 / 0.2).astype(float)  # E[cur - base] = +0.05
        estimate = paired_mean(base, cur, Bootstrap(resamples=400, seed=int(rng.integers(1 << 30))))
        covered += estimate.ci_low <= 0.05 <= estimate.ci_high
    assert 0.89 <= covered / 200 <= 0.99


def noisy_pair(n: int, shift_items: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two models that disagree on 20 % of n items, balanced (as many losses as wins for current), plus
    ``shift_items`` planted wins: the observed difference is exactly ``shift_items / n``."""
    rng = np.random.default_rng(seed)
    base = (rng.random(n) < 0.5).astype(float)
    cur = base.copy()
    swaps = n // 10
    cur[rng.choice(np.flatnonzero(base == 1), swaps, replace=False)] = 0
    cur[rng.choice(np.flatnonzero(base == 0), swaps + shift_items, replace=False)] = 1
    return base, cur


def test_planted_five_point_shift_on_2000_items_is_significant():
    base, cur = noisy_pair(2000, shift_items=100, seed=3)
    estimate = paired_mean(base, cur)
    assert estimate.delta == pytest.approx(0.05)
    assert estimate.significant and estimate.p_value < 0.001
    assert 0 < estimate.ci_low < 0.05 < estimate.ci_high
    assert estimate.mde < 0.05  # this comparison could detect the 5 points it found


def test_one_point_shift_on_50_items_is_not_significant_and_says_what_n_would_be():
    """At n = 50 the smallest shift is one item (2 points); even that, amid 10 disagreements, is noise."""
    base, cur = noisy_pair(50, shift_items=1, seed=4)
    estimate = paired_mean(base, cur)
    assert estimate.delta == pytest.approx(0.02)
    assert not estimate.significant
    assert estimate.ci_low < 0 < estimate.ci_high
    assert estimate.mde > 0.1  # ~2.8 paired standard errors at n = 50
    assert estimate.n_to_detect(0.01) > 5000


def test_mde_is_2_8_standard_errors_of_the_resampled_differences():
    """The bootstrap SD of a mean of n paired differences is their population SD / sqrt(n); with 20,000
    resamples it is estimated to ~0.5 % (relative SE 1/sqrt(2B)), so 3 % is six standard errors."""
    base, cur = noisy_pair(500, shift_items=0, seed=5)
    estimate = paired_mean(base, cur, Bootstrap(resamples=20_000))
    diff = cur - base
    assert mde_factor(0.95) == pytest.approx(2.8016, abs=1e-4)
    assert estimate.mde == pytest.approx(mde_factor(0.95) * diff.std() / math.sqrt(500), rel=0.03)
    assert estimate.n_to_detect(estimate.mde) == 500


def test_mde_is_detected_with_about_80_percent_power_by_the_test_that_reports_it():
    """Simulated paired 0/1 data (400 items, ~10 % discordant) with the true shift set to the MDE of
    no-shift pilots: the same bootstrap test rejects in ~80 % of 300 data sets (binomial SE 2.3 %)."""
    rng = np.random.default_rng(21)

    def draw(shift: float) -> tuple[np.ndarray, np.ndarray]:
        base = (rng.random(400) < 0.5).astype(float)
        cur = base.copy()
        noise = rng.random(400) < 0.2
        cur[noise] = (rng.random(noise.sum()) < 0.5 + shift / 0.2).astype(float)
        return base, cur

    # the median over 50 pilots: one pilot's spread is itself noisy (its MDE varies by ~15 %)
    mde = np.median([paired_mean(*draw(0.0), Bootstrap(resamples=1000, seed=i)).mde for i in range(50)])
    power = np.mean(
        [paired_mean(*draw(mde), Bootstrap(resamples=1000, seed=i)).significant for i in range(300)]
    )
    assert 0.72 <= power <= 0.88, (mde, power)


def test_non_binary_scores_use_the_same_bootstrap():
    rng = np.random.default_rng(6)
    base = rng.random(300)  # e.g. per-document Brier scores
    estimate = paired_mean(base, base + 0.05 + rng.normal(0, 0.1, 300), FAST)
    draws = estimate.draws  # no resample on the far side of zero: p < 1/B, read off the draws' normal tail
    assert estimate.p_value == pytest.approx(2 * NormalDist().cdf(-draws.mean() / draws.std(ddof=1)))
    assert estimate.p_value < 1 / 500
    assert estimate.ci_low < 0.05 < estimate.ci_high


@pytest.mark.parametrize("shift", [0.0, 0.01, 0.02, 0.03, 0.05])
def test_p_value_and_ci_agree_on_skewed_corpus_perplexity(shift):
    """The CI excludes zero exactly when p < 0.05, also for a skewed statistic (corpus perplexity)."""
    rng = np.random.default_rng(11)
    words = rng.integers(5, 400, 60).astype(float)
    base_ll = -words * rng.lognormal(1.0, 0.4, 60)
    cur_ll = base_ll - words * (shift + rng.normal(0, 0.05, 60))
    estimate = paired_corpus(base_ll, cur_ll, words, "weighted_perplexity", FAST)
    excludes_zero = estimate.ci_low > 0 or estimate.ci_high < 0
    assert excludes_zero == (estimate.p_value < 0.05), (estimate.ci_low, estimate.ci_high, estimate.p_value)


def test_corpus_perplexity_is_recomputed_on_both_sides_of_the_same_resample():
    """The CI equals the quantiles of ppl(current) - ppl(baseline) over one set of document resamples."""
    rng = np.random.default_rng(8)
    words = rng.integers(100, 3000, 30).astype(float)
    base_ll = -words * rng.uniform(2.5, 4.0, 30)
    cur_ll = base_ll - words * rng.uniform(0.0, 0.2, 30)
    estimate = paired_corpus(base_ll, cur_ll, words, "weighted_perplexity", FAST)

    idx = np.random.default_rng(FAST.seed).integers(0, 30, size=(FAST.resamples, 30))
    by_hand = np.sort(
        np.exp(-cur_ll[idx].sum(1) / words[idx].sum(1)) - np.exp(-base_ll[idx].sum(1) / words[idx].sum(1))
    )
    k = math.ceil(0.025 * FAST.resamples)  # the 13th smallest and largest of 500
    assert (estimate.ci_low, estimate.ci_high) == pytest.approx((by_hand[k - 1], by_hand[-k]))
    assert estimate.baseline == pytest.approx(math.exp(-base_ll.sum() / words.sum()))
    assert estimate.ratio == pytest.approx(estimate.current / estimate.baseline)
    assert estimate.significant and estimate.ci_low > 0


def test_bits_per_byte_is_the_log2_of_byte_perplexity():
    ll, nbytes = np.array([-700.0, -1200.0]), np.array([500.0, 800.0])
    assert aggregate(ll, nbytes, "bits_per_byte") == pytest.approx(
        math.log2(aggregate(ll, nbytes, "weighted_perplexity"))
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: paired_mean([1, 0], [1]), "one length"),
        (lambda: paired_mean([], []), "non-empty"),
        (lambda: paired_mean([1, math.nan], [1, 0]), "finite"),
        (lambda: paired_corpus([-1.0], [-1.0], [0.0], "weighted_perplexity"), "positive counts"),
        (lambda: paired_corpus([-1.0], [-1.0], [1.0], "mean"), "paired_corpus aggregates"),
        (lambda: Bootstrap(resamples=10), "resamples must be an int >= 100, got 10"),
        (lambda: Bootstrap(confidence=1.0), "confidence must be in"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_t_interval_matches_the_textbook_value():
    interval = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(n), s = 1
    assert (interval.mean, interval.low, interval.high, interval.n) == pytest.approx(
        (2, 2 - half, 2 + half, 3)
    )
    one = t_interval([0.5])
    assert one.mean == 0.5 and math.isnan(one.low) and math.isnan(one.high)


def test_seed_comparison_pairs_matching_seeds_only():
    base = {0: 0.50, 1: 0.52, 2: 0.49, 7: 0.1}
    cur = {0: 0.55, 1: 0.56, 2: 0.52, 9: 0.9}
    estimate = paired_seeds(base, cur)
    diffs = np.array([0.05, 0.04, 0.03])
    half = 4.302652729911275 * diffs.std(ddof=1) / math.sqrt(3)
    assert estimate.n == 3 and estimate.delta == pytest.approx(0.04)
    assert (estimate.ci_low, estimate.ci_high) == pytest.approx((0.04 - half, 0.04 + half))
    assert estimate.significant and "[0, 1, 2]" in estimate.method
    same = paired_seeds(base, base)
    assert (same.delta, same.p_value) == (0, 1)
    with pytest.raises(ValueError, match=r"needs >= 2 shared seeds; baseline has \[0\], current has \[1\]"):
        paired_seeds({0: 0.5}, {1: 0.5})


def test_loss_comparison_skips_warmup_and_covers_a_constant_offset():
    rng = np.random.default_rng(2)
    base = 2.5 * np.exp(-np.arange(60) / 30) + rng.normal(0, 0.05, 60)
    cur = base + 0.1 + rng.normal(0, 0.02, 60)
    cur[:2] += 5  # warm-up steps that must not count
    estimate = paired_loss(base, cur, skip=2)
    assert estimate.n == 58
    assert estimate.ci_low < 0.1 < estimate.ci_high and estimate.significant
    assert "(6 dof)" in estimate.method  # round(0.4 * 58 ** (2/3)) = round(5.99)
    same = paired_loss(base, base, skip=2)
    assert (same.delta, same.ci_low, same.ci_high, same.p_value) == (0, 0, 0, 1)
    with pytest.raises(ValueError, match="same number of steps"):
        paired_loss(base, base[:-1])
    with pytest.raises(ValueError, match="skip=53 must leave at least 8 of the 60 steps"):
        paired_loss(base, cur, skip=53)


def frame(task: str, scores: list[float], metric: str = "acc", aggregation: str = "mean", weights=None):
    """A samples frame (without phase) for one task and metric, doc ids 0..n-1."""
    n = len(scores)
    return pd.DataFrame(
        {
            "task": task,
            "doc_id": range(n),
            "doc_hash": [f"h{i}" for i in range(n)],
            "metric": metric,
            "aggregation": aggregation,
            "value": scores,
            "weight": weights if weights is not None else [1.0] * n,
        }
    )


def test_write_and_read_samples_round_trip(tmp_path: Path):
    before = frame("arc", [1, 0, 1, 1])
    after = pd.concat(
        [
            frame("arc", [1, 1, 1, 1]),
            frame("wiki", [-50.0, -80.0], "word_perplexity", "weighted_perplexity", [10.0, 20.0]),
        ]
    )
    path = write_samples(tmp_path, {"before": before, "after": after, "skipped": None})
    assert path == tmp_path / "samples.parquet"
    back = read_samples(path)
    assert list(back.columns) == list(COLUMNS)
    assert back.groupby("phase").size().to_dict() == {"after": 6, "before": 4}
    assert write_samples(tmp_path / "none", {"before": None}) is None


def test_bad_samples_frame_names_the_value_and_the_allowed_ones(tmp_path: Path):
    with pytest.raises(SamplesError, match=r"phase value\(s\) \['during'\]; allowed: \['before', 'after'\]"):
        write_samples(tmp_path, {"during": frame("arc", [1, 0])})
    with pytest.raises(SamplesError, match=r"missing column\(s\) \['weight'\]"):
        write_samples(tmp_path, {"after": frame("arc", [1]).drop(columns="weight")})


def test_report_layout_joins_samples_to_results_rows_by_job_dir(tmp_path: Path):
    jobs = [tmp_path / "runs" / name for name in ("a", "b", "c")]
    write_samples(jobs[0], {"after": frame("arc", [1, 0])})
    write_samples(jobs[1], {"after": frame("arc", [0, 0, 1])})  # c: no samples (log_samples=false)
    table = pd.DataFrame({"job_dir": [str(j) for j in jobs], "status": "ok"})
    report = tmp_path / "report"
    report.mkdir()
    assert write_report_samples(table, report) == report / "samples.parquet"
    table.to_csv(report / "results.csv", index=False)

    from_report = load_samples(pd.read_csv(report / "results.csv"), report / "results.csv")
    from_jobs = load_samples(table, tmp_path / "runs")
    assert sorted(from_report) == sorted(from_jobs) == [str(jobs[0]), str(jobs[1])]
    for job in from_jobs:
        pd.testing.assert_frame_equal(from_report[job], from_jobs[job])


def test_compare_samples_pairs_shared_documents_only_and_says_how_many():
    base = frame("arc", [1, 0, 1, 1, 0, 1]).assign(phase="after")
    cur = frame("arc", [1, 1, 1, 1]).assign(phase="after")  # a smaller eval.limit: the first 4 documents
    cur.loc[3, "doc_hash"] = "changed"  # a different document under the same id is not paired
    [comparison] = compare_samples(base, cur, FAST)
    assert comparison.column == "eval.arc.acc"
    assert (comparison.n_baseline, comparison.n_current, comparison.estimate.n) == (6, 4, 3)
    assert comparison.shared_note() == "paired on the 3 shared documents (baseline 6, current 4)"
    assert comparison.estimate.delta == pytest.approx(1 / 3)


def test_compare_samples_rejects_documents_whose_word_counts_differ():
    base = frame("wiki", [-50.0, -80.0], "word_perplexity", "weighted_perplexity", [10.0, 20.0])
    cur = frame("wiki", [-50.0, -80.0], "word_perplexity", "weighted_perplexity", [10.0, 21.0])
    with pytest.raises(ValueError, match="different word/byte counts"):
        compare_samples(base.assign(phase="after"), cur.assign(phase="after"), FAST)


def test_pool_tasks_takes_each_tasks_main_accuracy_in_phases_where_all_were_scored() -> None:
    """acc_norm where a task has it, else acc; a phase missing one of the tasks gets no pooled rows."""
    rows = [
        ("after", "a", 0, "h0", "acc", 0.0),
        ("after", "a", 0, "h0", "acc_norm", 1.0),
        ("after", "a", 1, "h1", "acc", 0.0),
        ("after", "a", 1, "h1", "acc_norm", 1.0),
        ("after", "b", 0, "g0", "acc", 0.0),
        ("before", "a", 0, "h0", "acc", 1.0),
    ]
    frame = pd.DataFrame(rows, columns=["phase", "task", "doc_id", "doc_hash", "metric", "value"])
    frame = frame.assign(aggregation="mean", weight=1.0)
    pooled = pool_tasks(frame, "mean", ["a", "b"])
    mean = pooled[pooled["task"] == "mean"]
    assert set(mean["phase"]) == {"after"}
    assert (mean["metric"] == "acc").all() and (mean["aggregation"] == "task_mean").all() and len(mean) == 3
    assert mean["value"].tolist() == [1.0, 1.0, 0.0]  # a's two acc_norm (not acc), then b's acc
    assert mean["doc_hash"].tolist() == ["a/h0", "a/h1", "b/g0"]  # each document keeps its task
    assert aggregate(mean["value"], mean["weight"], "task_mean") == 0.5  # mean of a's 1.0 and b's 0.0
    assert len(pooled) == len(frame) + 3


def test_boundary_50_of_2000_draws_at_or_below_zero_is_not_significant_and_the_ci_says_so():
    """Exactly alpha/2 of the draws <= 0: p = 2 * 50 / 2000 = 0.05 is not < 0.05, and the CI's lower end (the
    50th smallest draw) is <= 0. The interpolated percentile CI put its end above zero here."""
    draws = np.concatenate([-np.linspace(0.01, 0.5, 50), np.linspace(0.001, 1.0, 1950)])
    low, high, p = draws_ci_p(draws, 0.95)
    assert p == pytest.approx(0.05) and low < 0 < high
    low, high, p = draws_ci_p(draws[1:], 0.95)  # 49 of 1999 below: k = ceil(49.975) = 50
    assert p == pytest.approx(98 / 1999) and low > 0


def _agrees(estimate) -> bool:
    excludes_zero = estimate.ci_low > 0 or estimate.ci_high < 0
    return excludes_zero == estimate.significant


def test_significant_iff_the_ci_excludes_zero_on_many_random_paired_samples():
    """Every method, 400 random paired data sets near the decision boundary: never a CI that excludes zero
    beside a p >= 0.05, or the reverse."""
    rng = np.random.default_rng(31)
    disagreements = []
    for i in range(400):
        n = int(rng.integers(10, 120))
        boot = Bootstrap(resamples=int(rng.choice([100, 999, 2000])), seed=i)
        base = (rng.random(n) < 0.5).astype(float)
        cur = np.where(rng.random(n) < 0.25, 1 - base, base)  # ~25 % discordant, drifting either way
        words = rng.integers(5, 300, n).astype(float)
        ll = -words * rng.lognormal(1.0, 0.3, n)
        steps = rng.normal(rng.normal(0, 0.05), 0.1, n)
        estimates = [
            paired_mean(base, cur, boot),
            paired_mean(rng.random(n), rng.random(n) + rng.normal(0, 0.05), boot),
            paired_corpus(ll, ll - words * rng.normal(0, 0.02, n), words, "weighted_perplexity", boot),
            paired_stratified_mean(base, cur, np.arange(n) % 3, boot),
            paired_loss(np.zeros(n), steps),
            paired_seeds(dict(enumerate(rng.normal(0, 1, 4))), dict(enumerate(rng.normal(1, 1, 4)))),
        ]
        disagreements += [(i, e.method) for e in estimates if not _agrees(e)]
    assert not disagreements


def ar1(rho: float, steps: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """``reps`` stationary AR(1) series of unit variance and lag-1 correlation ``rho`` (mean 0)."""
    noise = rng.standard_normal((reps, steps))
    out = np.empty_like(noise)
    out[:, 0] = noise[:, 0]
    for t in range(1, steps):
        out[:, t] = rho * out[:, t - 1] + math.sqrt(1 - rho**2) * noise[:, t]
    return out


@pytest.mark.parametrize("steps", [8, 30, 150])
@pytest.mark.parametrize("rho", [0.0, 0.3, 0.6])
def test_per_step_loss_interval_covers_at_least_90_percent_under_ar1_differences(steps, rho):
    """20,000 simulated AR(1) difference series: the EWC t-interval of paired_loss covers the true mean
    (0) in >= 90 % (binomial SE 0.2 %; measured 90.6 % at 8 steps and rho 0.6, the hardest case, and
    93-95 % elsewhere). The moving-block bootstrap it replaces covered 56 % there."""
    from scipy.stats import t as student_t

    from harness.stats.steps import cosine_projections, ewc_standard_error

    series = ar1(rho, steps, 20_000, np.random.default_rng(steps * 10 + int(rho * 10)))
    dof = cosine_projections(steps)
    half = student_t.ppf(0.975, dof) * ewc_standard_error(series, dof)
    coverage = np.mean(np.abs(series.mean(axis=1)) <= half)
    assert coverage >= 0.90, coverage
    one = paired_loss(np.zeros(steps), series[0])  # the vectorised formula is the function's
    assert (one.ci_high - one.delta) == pytest.approx(half[0], rel=1e-9)


def test_stratified_mean_is_the_mean_of_task_means_and_resamples_within_tasks():
    """Task a: 1000 items, no difference; task b: 10 items, half +1 and half 0. The pooled per-item mean
    (5/1010) would hide b; the mean of task means is (0 + 0.5) / 2. Resampling within tasks, a never varies,
    so the draws' variance is b's mean variance / 4 = 0.25 / 10 / 4 (20,000 resamples: ~1 % relative SE)."""
    strata = np.array(["a"] * 1000 + ["b"] * 10)
    base = np.zeros(1010)
    cur = np.concatenate([np.zeros(1000), np.tile([1.0, 0.0], 5)])
    estimate = paired_stratified_mean(base, cur, strata, Bootstrap(resamples=20_000))
    assert estimate.delta == pytest.approx(0.25) and estimate.n == 1010
    assert "stratified by task (2 tasks" in estimate.method
    assert np.var(estimate.draws) == pytest.approx(0.25 / 10 / 4, rel=0.05)


def test_two_level_bootstrap_carries_seed_and_document_variance():
    """Synthetic two-level data: seed effects u_s and document noise e_sd. Conditional on the data, the
    two-level bootstrap's variance is exactly (1/S) * [mean_s (m_s - m)^2 + mean_s v_s / n] (m_s: seed means,
    v_s: their within-seed variances); 40,000 resamples estimate it to ~0.7 % (relative SE 1/sqrt(2B)).
    With seed variance 200 times the mean's document variance, the interval is far wider than a document
    bootstrap of one seed, which cannot see it."""
    from harness.stats import paired_hierarchical

    rng = np.random.default_rng(41)
    seeds, docs = 5, 200
    seed_effect = rng.normal(0.0, 0.1, seeds)  # sigma_seed^2 = 0.01
    diffs = seed_effect[:, None] + rng.normal(0.0, 0.1, (seeds, docs))  # doc variance/n = 0.01/200
    per_seed = [(np.zeros(docs), diffs[s], np.ones(docs)) for s in range(seeds)]
    estimate = paired_hierarchical(per_seed, "mean", Bootstrap(resamples=40_000))
    means, within = diffs.mean(axis=1), diffs.var(axis=1)
    expected = (np.mean((means - means.mean()) ** 2) + np.mean(within) / docs) / seeds
    assert np.var(estimate.draws) == pytest.approx(expected, rel=0.04)
    assert estimate.delta == pytest.approx(diffs.mean()) and estimate.n == seeds
    assert "seeds [0, 1, 2, 3, 4], then documents" in estimate.method
    one_seed = paired_mean(*per_seed[0][:2], Bootstrap(resamples=4000))
    assert estimate.ci_high - estimate.ci_low > 2 * (one_seed.ci_high - one_seed.ci_low)
    with pytest.raises(ValueError, match="needs >= 3 seeds, got 2"):
        paired_hierarchical(per_seed[:2], "mean")


def test_two_level_bootstrap_of_corpus_perplexity_recomputes_each_seed_on_shared_documents():
    from harness.stats import paired_hierarchical

    rng = np.random.default_rng(42)
    words = rng.integers(50, 500, 40).astype(float)
    per_seed = []
    for _ in range(3):
        base_ll = -words * rng.uniform(2.5, 3.5, 40)
        per_seed.append((base_ll, base_ll - words * 0.05, words))  # current: +5 % per word in every seed
    estimate = paired_hierarchical(per_seed, "weighted_perplexity", Bootstrap(resamples=1000))
    by_seed = [
        aggregate(c, w, "weighted_perplexity") - aggregate(b, w, "weighted_perplexity")
        for b, c, w in per_seed
    ]
    assert estimate.delta == pytest.approx(np.mean(by_seed))
    assert estimate.significant and estimate.ci_low > 0


def test_resamples_scale_with_the_number_of_tests_up_to_a_cap():
    """4 · tests / alpha, rounded up to thousands (40 tests: 3,200 -> 4,000), never below what was asked,
    at most 20,000 (beyond, a p below 1/B is the draws' normal tail)."""
    assert Bootstrap().for_tests(40).resamples == 4000
    assert Bootstrap(resamples=9000).for_tests(40).resamples == 9000
    assert Bootstrap().for_tests(10_000).resamples == 20_000


def test_resample_counts_tally_the_index_draws_across_chunks_and_keep_small_draws(monkeypatch) -> None:
    """The counts are the per-row tallies of units drawn with replacement by one generator across
    memory-bounded chunks; a draw of up to one chunk is kept, read-only, and not drawn again."""
    monkeypatch.setattr(paired_module, "_MAX_DRAWS", 1000)
    boot = Bootstrap(resamples=100, seed=3)
    chunks = list(resample_counts(30, boot))
    assert [c.shape for c in chunks] == [(33, 30), (33, 30), (33, 30), (1, 30)]
    drawn = np.random.default_rng(3).integers(0, 30, size=(100, 30))
    tallies = np.stack([np.bincount(row, minlength=30) for row in drawn])
    np.testing.assert_array_equal(np.concatenate(chunks), tallies)

    kept = resample_counts(10, boot)  # 100 x 10 = one chunk of 1000 draws
    assert kept is resample_counts(10, boot) and len(kept) == 1 and not kept[0].flags.writeable
    np.testing.assert_array_equal(kept[0].sum(axis=1), np.full(100, 10.0))
