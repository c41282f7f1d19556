"""What the results say: the table (each value with its 95 % interval) and a few lines on the comparisons.

A value is bold only when it is significantly better than every other row (paired comparisons of
:mod:`harness.report.comparisons`, p < 0.05); a difference that noise could explain is never highlighted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.report.comparisons import MIN_DOCUMENTS, Statistics
from harness.report.metrics import HIGHER, LOWER, Metric, key_header, metric_frame, show
from harness.report.pairwise import compared_metrics, pairs
from harness.report.render import Bullets, Cell, Paragraph, Table
from harness.report.style import display

_INTERVALS = {
    "seeds": "t-interval over the row's seeds",
    "documents": f"bootstrap over the job's documents, when it scored >= {MIN_DOCUMENTS}",
    "stderr": "lm-eval's stderr × 1.96 (no per-sample results)",
}


@dataclass(frozen=True)
class Summary:
    """The results table, what its intervals and bold mean, and per row the job directories it comes from."""

    table: Table
    legend: str
    sources: list[str]


def _format(value: float, low: float | None, high: float | None, digits: int) -> str:
    if math.isnan(value):
        return "—"
    if low is None or high is None or math.isnan(low) or math.isnan(high) or low == high:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _cell(stats: Statistics, index: int, metric: Metric, mean: float, best: int | None) -> Cell:
    interval = stats.intervals.get((index, metric.source))
    low, high = (
        (None, None) if interval is None else (interval.low * metric.scale, interval.high * metric.scale)
    )
    return Cell(_format(mean, low, high, metric.digits), best=best == index)


def _legend(stats: Statistics, metrics: list[Metric], bold: int) -> str:
    methods = sorted({i.method for i in stats.intervals.values()})
    intervals = "; ".join(_INTERVALS[m] for m in methods) or "none could be computed"
    test = f"paired comparisons, p < {stats.bootstrap.alpha:g}; a column nothing is paired on is never bold"
    highlight = (
        f"Bold: significantly better than every other row ({test}); {bold} column(s) have such a row."
        if bold
        else f"No value is bold: no row is significantly better than every other row in any column ({test})."
    )
    return (
        "Rows are the configurations the jobs differ in; n/a marks a setting that does not apply to the "
        "row's storage type. Each cell is the mean over the row's seeds with its "
        f"{stats.bootstrap.confidence:.0%} interval in brackets ({intervals}). ↑ higher is better, "
        f"↓ lower is better. {highlight} Per-job values are in results.csv and results.parquet."
    )


def summarize(ok: pd.DataFrame, keys: list[str], stats: Statistics) -> Summary:
    """One row per configuration: key values, number of seeds, then every metric with its interval."""
    values, metrics = metric_frame(ok)
    best = {m.source: stats.best(m.source, m.direction) for m in metrics if m.direction in (HIGHER, LOWER)}
    rows = []
    for index, row in enumerate(stats.rows):
        means = values.loc[row.jobs].mean()
        cells = [_cell(stats, index, m, means[m.header], best.get(m.source)) for m in metrics]
        rows.append([*(Cell(show(v)) for v in row.values), Cell(str(len(row.jobs))), *cells])
    table = Table([*(key_header(k) for k in keys), "seeds (n)", *(m.header for m in metrics)], rows)
    bold = sum(b is not None for b in best.values())
    sources = [f"{row.name}: {', '.join(str(ok['job_dir'][j]) for j in row.jobs)}" for row in stats.rows]
    return Summary(table, _legend(stats, metrics, bold), sources)


def _counts(stats: Statistics, metric: Metric) -> str:
    """How many comparisons against the reference and in all were significant, and after BH if known."""
    found = pairs(stats, metric)
    unique = {tuple(sorted(k)): p for k, p in found.items()}
    against = [p for (a, b), p in found.items() if b == stats.reference]
    text = (
        f"{display(metric.name)}: {sum(p.significant for p in against)} of {len(against)} configurations "
        f"differ significantly from the reference; {sum(p.significant for p in unique.values())} of "
        f"{len(unique)} pairs in all"
    )
    if "q_value" in stats.frame():
        text += f", {sum(p.mark == '**' for p in unique.values())} after Benjamini–Hochberg"
    untested = sum(math.isnan(p.low) for p in unique.values())
    if untested:
        text += f"; {untested} of {len(unique)} pairs too few to test (no CI, no p)"
    return text + "."


def paired_summary(stats: Statistics, metrics: list[Metric]) -> list[Paragraph | Bullets]:
    """What was compared and how, one line per metric; the pictures and comparisons.csv hold the rest."""
    shown = compared_metrics(stats, metrics)
    if not shown:
        return [Paragraph("No paired comparison was possible (one configuration, or no shared seeds).")]
    boot = stats.bootstrap
    return [
        Paragraph(
            f"Each configuration against the reference ({stats.rows[stats.reference].name}) and every "
            "other pair, paired on what both share (documents, seeds or training steps), with "
            f"{boot.confidence:.0%} CI and p-value (bootstraps: {boot.resamples:,} resamples, seed "
            f"{boot.seed}; fewer than {MIN_DOCUMENTS} paired documents are too few to test). Every "
            "comparison, with its MDE, is in comparisons.csv; the hypotheses the sweep declared are "
            "decided in words under Verdicts."
        ),
        Bullets([_counts(stats, m) for m in shown]),
    ]
