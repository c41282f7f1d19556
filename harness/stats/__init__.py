"""Statistics that decide comparisons: per-sample results, paired CIs and p-values, seeds, training loss.

Every estimate draws its CI and p-value from one procedure, so ``significant`` ⇔ the CI excludes 0.

- :mod:`harness.stats.samples`: the ``samples.parquet`` layout (job and report directories), read/write.
- :mod:`harness.stats.paired`: paired bootstrap (accuracy-type means, task-stratified means, corpus
  perplexity), the CI/p rule, MDE.
- :mod:`harness.stats.jobs`: every paired metric comparison between two jobs' samples.
- :mod:`harness.stats.seeds`: t-interval over seeds, paired per-seed differences.
- :mod:`harness.stats.hierarchical`: >= 3 seeds with per-document scores: seeds, then documents.
- :mod:`harness.stats.steps`: per-step training-loss difference with an autocorrelation-robust t.
- :mod:`harness.stats.multiplicity`: Holm and Benjamini–Hochberg adjusted p-values.
"""

from harness.stats.hierarchical import paired_hierarchical
from harness.stats.jobs import MetricComparison, compare_samples
from harness.stats.multiplicity import benjamini_hochberg, holm
from harness.stats.paired import (
    Bootstrap,
    PairedEstimate,
    draws_ci_p,
    paired_corpus,
    paired_mean,
    paired_stratified_mean,
)
from harness.stats.samples import (
    SAMPLES_FILE,
    SamplesError,
    aggregate,
    load_samples,
    read_samples,
    write_report_samples,
    write_samples,
)
from harness.stats.seeds import Interval, paired_seeds, t_interval
from harness.stats.steps import paired_loss

__all__ = [
    "SAMPLES_FILE",
    "Bootstrap",
    "Interval",
    "MetricComparison",
    "PairedEstimate",
    "SamplesError",
    "aggregate",
    "benjamini_hochberg",
    "compare_samples",
    "draws_ci_p",
    "holm",
    "load_samples",
    "paired_corpus",
    "paired_hierarchical",
    "paired_loss",
    "paired_mean",
    "paired_seeds",
    "paired_stratified_mean",
    "read_samples",
    "t_interval",
    "write_report_samples",
    "write_samples",
]
