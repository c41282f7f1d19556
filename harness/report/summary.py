"""What the results say: the table (each value with its 95 % interval) and the findings in words.

A value is bold only when it is significantly better than every other row (paired comparisons of
:mod:`harness.report.comparisons`, p < 0.05); a difference that noise could explain is never highlighted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.report.comparisons import LOSS, MIN_DOCUMENTS, Comparison, Statistics
from harness.report.metrics import HIGHER, LOWER, Metric, Row, key_header, metric_frame, show
from harness.report.render import Bullets, Cell, Paragraph, Table

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


def _p(p_value: float) -> str:
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"


def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}".replace("-", "−")


def _finding(comparison: Comparison, rows: list[Row], metric: Metric) -> str:
    """One comparison in words, in the metric's display unit."""
    e, scale, digits = comparison.estimate, metric.scale, metric.digits
    unit = f" {metric.unit}" if metric.unit else ""
    what = f"{rows[comparison.config].name} vs {rows[comparison.reference].name}, {metric.name}"
    low, high = _signed(e.ci_low * scale, digits), _signed(e.ci_high * scale, digits)
    delta = f"{_signed(e.delta * scale, digits)}{unit} [{low}, {high}]"
    where = f"n={e.n} {comparison.units}" + (f"; {comparison.note}" if comparison.note else "")
    if math.isnan(e.p_value):
        return f"{what}: {_signed(e.delta * scale, digits)}{unit} at {where}, too few to test (no CI, no p)."
    if e.significant:
        return f"{what}: {delta}, {_p(e.p_value)} ({where}; {e.method})."
    unclear = f"{what}: no significant difference at {where} ({delta}, {_p(e.p_value)})"
    if e.ci_low > 0 or e.ci_high < 0:  # only with an exact McNemar p: the bootstrap CI is what is too narrow
        unclear += (
            "; the bootstrap CI excludes 0 but the exact McNemar test does not reject: too few documents "
            "differ for the bootstrap interval to be trusted"
        )
    if not math.isfinite(e.mde):
        return f"{unclear}; MDE unknown (no pair differed)."
    needed = (
        f"; ≈{e.n_to_detect(e.delta)} {comparison.units} would detect a difference this size"
        if e.delta
        else ""
    )
    return f"{unclear}; MDE {e.mde * scale:.{digits}f}{unit}{needed}."


_LOSS_METRIC = Metric("training loss per step after warm-up (nats)", "loss", LOWER, 3, LOSS, unit="nats")


def findings(stats: Statistics, metrics: list[Metric]) -> list[Paragraph | Bullets]:
    """Each configuration against the reference, then every other pair, on every task and training loss."""
    shown = {m.source: m for m in metrics if m.role == "score"} | {LOSS: _LOSS_METRIC}
    chosen = [c for c in stats.comparisons if c.source in shown]
    if not chosen:
        return [Paragraph("No paired comparison was possible (one configuration, or no shared seeds).")]
    reference = stats.rows[stats.reference].name
    against = [_finding(c, stats.rows, shown[c.source]) for c in chosen if c.reference == stats.reference]
    others = [_finding(c, stats.rows, shown[c.source]) for c in chosen if c.reference != stats.reference]
    boot = stats.bootstrap
    blocks: list[Paragraph | Bullets] = [
        Paragraph(
            f"Differences are current − reference with {boot.confidence:.0%} CI and p-value; bootstraps "
            f"use {boot.resamples:,} resamples, seed {boot.seed}; fewer than {MIN_DOCUMENTS} paired "
            "documents are too few to test. MDE: the smallest difference the comparison could detect "
            "(α = 0.05, 80 % power). All comparisons are in comparisons.csv."
        ),
        Paragraph(f"Against the reference ({reference}):"),
        Bullets(against),
    ]
    if others:
        blocks += [Paragraph("Other pairs:"), Bullets(others)]
    return blocks
