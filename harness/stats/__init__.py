"""Statistics that decide comparisons: per-sample results, paired CIs and p-values, seeds, training loss.

- :mod:`harness.stats.samples`: the ``samples.parquet`` layout (job and report directories), read/write.
- :mod:`harness.stats.paired`: paired bootstrap (accuracy-type means, corpus perplexity), exact McNemar, MDE.
- :mod:`harness.stats.jobs`: every paired metric comparison between two jobs' samples.
- :mod:`harness.stats.seeds`: t-interval over seeds, paired per-seed differences.
- :mod:`harness.stats.steps`: per-step training-loss difference with a moving-block bootstrap.
"""

from harness.stats.jobs import MetricComparison, compare_samples
from harness.stats.paired import Bootstrap, PairedEstimate, mcnemar_exact, paired_corpus, paired_mean
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
    "compare_samples",
    "load_samples",
    "mcnemar_exact",
    "paired_corpus",
    "paired_loss",
    "paired_mean",
    "paired_seeds",
    "read_samples",
    "t_interval",
    "write_report_samples",
    "write_samples",
]
