"""Every paired comparison between two jobs' per-sample results (the frames of :mod:`harness.stats.samples`).

qlora-compare (baseline vs current) and qlora-report (each configuration vs the reference) both call
:func:`compare_samples`. Documents are paired on ``(task, doc_id, doc_hash)``: jobs with different
``eval.limit`` compare the documents they share, and each comparison says how many that was.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from harness.stats.paired import (
    DEFAULT_BOOTSTRAP,
    Bootstrap,
    PairedEstimate,
    paired_corpus,
    paired_mean,
    paired_stratified_mean,
)
from harness.stats.samples import DOC_KEY, metric_column, pool_stratum


@dataclass(frozen=True)
class MetricComparison:
    """One (phase, task, metric) compared on the documents both jobs scored.

    ``column`` is the results-table column (``eval.arc_easy_local.acc``); ``n_baseline``/``n_current`` are
    the documents each job scored for it, ``estimate.n`` the documents they share.
    """

    phase: str
    task: str
    metric: str
    column: str
    n_baseline: int
    n_current: int
    estimate: PairedEstimate

    @property
    def all_shared(self) -> bool:
        return self.estimate.n == self.n_baseline == self.n_current

    def shared_note(self) -> str:
        """Empty when both jobs scored the same documents, else how many were compared."""
        if self.all_shared:
            return ""
        return (
            f"paired on the {self.estimate.n} shared documents "
            f"(baseline {self.n_baseline}, current {self.n_current})"
        )


def compare_samples(
    baseline: pd.DataFrame, current: pd.DataFrame, bootstrap: Bootstrap = DEFAULT_BOOTSTRAP
) -> list[MetricComparison]:
    """current − baseline for every (phase, task, metric) both frames hold with at least one shared document.

    Bootstrap metrics are resampled with the same ``bootstrap`` (seed and count) each, so every comparison
    is reproducible on its own.
    """
    keys = ["phase", "task", "metric", "aggregation"]
    current_groups = dict(iter(current.groupby(keys, sort=True)))
    out = []
    for key, base_rows in baseline.groupby(keys, sort=True):
        cur_rows = current_groups.get(key)
        if cur_rows is None:
            continue
        pairs = base_rows.merge(cur_rows, on=DOC_KEY, suffixes=("_base", "_cur"))
        if pairs.empty:
            continue
        phase, task, metric, aggregation = key
        out.append(
            MetricComparison(
                phase=phase,
                task=task,
                metric=metric,
                column=metric_column(phase, task, metric),
                n_baseline=len(base_rows),
                n_current=len(cur_rows),
                estimate=_estimate(pairs, aggregation, bootstrap),
            )
        )
    return out


def _estimate(pairs: pd.DataFrame, aggregation: str, bootstrap: Bootstrap) -> PairedEstimate:
    base, cur = pairs["value_base"].to_numpy(), pairs["value_cur"].to_numpy()
    if aggregation == "mean":
        return paired_mean(base, cur, bootstrap)
    if aggregation == "task_mean":
        strata = pairs["doc_hash"].map(pool_stratum).to_numpy()
        return paired_stratified_mean(base, cur, strata, bootstrap)
    if not pairs["weight_base"].equals(pairs["weight_cur"]):
        raise ValueError("paired documents have different word/byte counts: the documents differ")
    return paired_corpus(base, cur, pairs["weight_base"].to_numpy(), aggregation, bootstrap)
