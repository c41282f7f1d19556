"""Match baseline and current jobs by config and judge every metric against its tolerance.

When both jobs have per-sample results for a metric (``samples.parquet``, :mod:`harness.stats.samples`),
the metric is judged on the paired CI of current − baseline over the documents both scored: it regresses
only when the whole CI lies beyond the tolerance on the bad side, and improves only when the whole CI lies
beyond it on the good side. Otherwise the tolerance rule applies to the two values, widened by their
stderrs (:meth:`harness.compare.tolerances.Rule.allowed`). Under a ``two_sided`` rule a move beyond the
tolerance on the good side is ``CHANGED`` and fails like a regression: the baseline must be refreshed on
purpose.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness.compare.errors import CompareInputError
from harness.compare.inputs import JobKey, Side, job_keys, job_labels, key_columns, load_side
from harness.compare.tolerances import STDERR_SUFFIX, Rule, Tolerances, load_tolerances
from harness.result import column
from harness.stats.jobs import MetricComparison, compare_samples
from harness.stats.paired import DEFAULT_BOOTSTRAP, Bootstrap

OK, IMPROVED, REGRESSED, CHANGED, INFO = "ok", "improved", "REGRESSED", "CHANGED", "info"
FAILING = (REGRESSED, CHANGED)


@dataclass
class Row:
    """One verdict: a metric of a job, or the job's status when it failed or exists on one side only.

    ``ci_low``/``ci_high``/``p_value``/``n`` are set when the verdict came from the paired CI over ``n``
    shared documents; then ``baseline``/``current`` are the values on those documents.
    """

    job: str
    metric: str
    baseline: float | str | None
    current: float | str | None
    delta: float | None
    allowed: float | None
    verdict: str
    note: str = ""
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    n: int | None = None


@dataclass
class Comparison:
    """Every row plus what the jobs were matched on; ``exit_code`` is the CI verdict.

    ``notes`` say which jobs were judged without per-sample results and why; ``bootstrap`` is how every
    paired CI was resampled.
    """

    rows: list[Row]
    key_columns: list[str]
    ignored_key_columns: list[str]
    jobs_baseline: int
    jobs_current: int
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        """Rows that fail CI: worsened beyond tolerance, or moved at all under a two-sided rule."""
        return [row for row in self.rows if row.verdict in FAILING]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0

    def summary(self) -> dict[str, Any]:
        return {
            "verdict": min((row.verdict for row in self.regressions), key=FAILING.index, default=OK),
            "exit_code": self.exit_code,
            "jobs_baseline": self.jobs_baseline,
            "jobs_current": self.jobs_current,
            "counts": {
                v: sum(row.verdict == v for row in self.rows)
                for v in (OK, IMPROVED, REGRESSED, CHANGED, INFO)
            },
            "regressions": [f"{row.job}: {row.metric}" for row in self.regressions],
            "key_columns": self.key_columns,
            "ignored_key_columns": self.ignored_key_columns,
            "paired_rows": sum(row.ci_low is not None for row in self.rows),
            "bootstrap": asdict(self.bootstrap),
            "notes": self.notes,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "rows": [asdict(row) for row in self.rows]}


def compare_results(
    baseline_paths: Sequence[str | os.PathLike],
    current_paths: Sequence[str | os.PathLike],
    tolerances: Tolerances | None = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
) -> Comparison:
    """Compare two sets of results (tables or result.json directories); paired where both have samples.

    Raises :class:`CompareInputError` for input that cannot be compared: unreadable, empty, a job key
    used twice on one side, or a baseline job that current lacks.
    """
    tolerances = tolerances or load_tolerances()
    baseline, current = load_side(baseline_paths, "baseline"), load_side(current_paths, "current")
    columns, ignored = key_columns(baseline.table, current.table)
    base_keys, cur_keys = job_keys(baseline.table, columns), job_keys(current.table, columns)
    labels = job_labels(base_keys + cur_keys, columns)
    base_jobs = _index(baseline.table, base_keys, labels, "baseline")
    cur_jobs = _index(current.table, cur_keys, labels, "current")
    missing = [labels[key] for key in base_jobs if key not in cur_jobs]
    if missing:
        raise CompareInputError(f"baseline job(s) missing from current: {'; '.join(missing)}")
    metrics = _metric_rules([baseline.table, current.table], tolerances)
    matched = [(labels[key], base, cur_jobs[key]) for key, base in base_jobs.items()]
    rows = [
        row
        for job, base, cur in matched
        for row in _compare_job(
            job, base, cur, metrics, tolerances, _paired(base, cur, baseline, current, bootstrap)
        )
    ]
    rows += [
        Row(labels[key], "job", None, None, None, None, INFO, "only in current")
        for key in cur_jobs
        if key not in base_jobs
    ]
    notes = _sample_notes(matched, baseline, current)
    return Comparison(rows, columns, ignored, len(base_jobs), len(cur_jobs), bootstrap, notes)


def _samples_of(job: pd.Series, side: Side) -> pd.DataFrame | None:
    return side.samples.get(str(job.get("job_dir")))


def _paired(
    base: pd.Series, cur: pd.Series, baseline: Side, current: Side, bootstrap: Bootstrap
) -> dict[str, MetricComparison]:
    """Paired comparisons by results column, for a job whose two sides both have per-sample results."""
    base_samples, cur_samples = _samples_of(base, baseline), _samples_of(cur, current)
    if base_samples is None or cur_samples is None:
        return {}
    try:
        comparisons = compare_samples(base_samples, cur_samples, bootstrap)
    except ValueError as exc:
        raise CompareInputError(
            f"per-sample results of {base.get('job_dir')} and {cur.get('job_dir')}: {exc}"
        ) from exc
    return {comparison.column: comparison for comparison in comparisons}


def _sample_notes(
    matched: list[tuple[str, pd.Series, pd.Series]], baseline: Side, current: Side
) -> list[str]:
    """Name the matched jobs that cannot be judged on paired CIs, per side that lacks per-sample results."""
    notes = []
    for name, side, position in (("baseline", baseline, 1), ("current", current, 2)):
        lacking = [pair[0] for pair in matched if _samples_of(pair[position], side) is None]
        if lacking:
            notes.append(
                f"{name} has no per-sample results (samples.parquet) for {len(lacking)} of {len(matched)} "
                f"jobs ({'; '.join(lacking)}): their metrics fall back to the tolerance rules, unpaired"
            )
    return notes


def _index(
    table: pd.DataFrame, keys: list[JobKey], labels: dict[JobKey, str], side: str
) -> dict[JobKey, pd.Series]:
    """Rows by job key; two rows with one key would make the comparison ambiguous."""
    jobs: dict[JobKey, pd.Series] = {}
    for key, (_, row) in zip(keys, table.iterrows(), strict=True):
        if key in jobs:
            paths = [str(r.get("path", "?")) for r in (jobs[key], row)]
            raise CompareInputError(f"{side}: two results for job {labels[key]} ({', '.join(paths)})")
        jobs[key] = row
    return jobs


def _metric_rules(tables: list[pd.DataFrame], tolerances: Tolerances) -> dict[str, Rule]:
    """Every column either side has that some rule matches, in column order, with its rule."""
    rules = {c: tolerances.rule_for(c) for table in tables for c in table.columns}
    return {metric: rule for metric, rule in rules.items() if rule is not None}


def _compare_job(
    job: str,
    base: pd.Series,
    cur: pd.Series,
    metrics: dict[str, Rule],
    tol: Tolerances,
    paired: dict[str, MetricComparison],
) -> list[Row]:
    """A failed job has no metrics to compare, so its status is the verdict."""
    base_ok, cur_ok = base.get("status") == "ok", cur.get("status") == "ok"
    if base_ok and not cur_ok:
        return [Row(job, "status", "ok", "failed", None, None, REGRESSED, _error(cur))]
    if not base_ok:
        verdict, note = (
            (IMPROVED, "failed in baseline") if cur_ok else (INFO, f"failed in both: {_error(cur)}")
        )
        return [Row(job, "status", "failed", str(cur.get("status")), None, None, verdict, note)]
    rows = (
        _judge_paired(job, metric, rule, paired[metric], tol.gated(rule, metric))
        if metric in paired
        else _compare_metric(job, metric, rule, base, cur, tol.gated(rule, metric))
        for metric, rule in metrics.items()
    )
    return [row for row in rows if row is not None]


def _compare_metric(
    job: str, metric: str, rule: Rule, base: pd.Series, cur: pd.Series, gated: bool
) -> Row | None:
    base_value, cur_value = _number(base.get(metric)), _number(cur.get(metric))
    if base_value is None and cur_value is None:
        return None
    if base_value is None:
        return Row(job, metric, None, cur_value, None, None, INFO, "not in baseline")
    if cur_value is None:
        verdict = REGRESSED if gated else INFO
        return Row(job, metric, base_value, None, None, None, verdict, "missing or NaN in current")
    delta = cur_value - base_value
    allowed = rule.allowed(base_value, _stderr(metric, base, cur))
    worsening = delta if rule.direction == "lower" else -delta
    verdict = _verdict(rule, gated, worse=worsening > allowed, better=-worsening > allowed)
    return Row(job, metric, base_value, cur_value, delta, allowed, verdict, "" if gated else "not gated")


def _verdict(rule: Rule, gated: bool, worse: bool, better: bool) -> str:
    """Beyond the tolerance on the bad side: regressed; on the good side: improved, or changed (failing)
    under a two-sided rule; an ungated metric's failure is only info."""
    if worse or (better and rule.two_sided):
        return (REGRESSED if worse else CHANGED) if gated else INFO
    return IMPROVED if better else OK


def _judge_paired(job: str, metric: str, rule: Rule, paired: MetricComparison, gated: bool) -> Row:
    """Regressed (improved) only when the whole paired CI is beyond the tolerance on the bad (good) side;
    the CI replaces the stderr allowance of the unpaired rule."""
    estimate = paired.estimate
    allowed = rule.allowed(estimate.baseline, 0.0)
    sign = 1 if rule.direction == "lower" else -1  # worsening = sign * delta
    least_worse, most_worse = sorted((sign * estimate.ci_low, sign * estimate.ci_high))
    verdict = _verdict(rule, gated, worse=least_worse > allowed, better=most_worse < -allowed)
    note = "; ".join(n for n in (paired.shared_note() or "paired", "" if gated else "not gated") if n)
    return Row(
        job,
        metric,
        estimate.baseline,
        estimate.current,
        estimate.delta,
        allowed,
        verdict,
        note,
        ci_low=estimate.ci_low,
        ci_high=estimate.ci_high,
        p_value=estimate.p_value,
        n=estimate.n,
    )


def _stderr(metric: str, base: pd.Series, cur: pd.Series) -> float:
    """Standard error of the difference, from whichever sides report one (0 when neither does)."""
    errors = [_number(side.get(metric + STDERR_SUFFIX)) for side in (base, cur)]
    return math.sqrt(sum(e * e for e in errors if e is not None))


def _number(value: Any) -> float | None:
    """A finite-or-infinite float, or None for absent, NaN and non-numeric values (such as CSV'd lists)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return None if math.isnan(number) else number


def _error(row: pd.Series) -> str:
    """``Type: message`` of a failed job, for the row's note."""
    parts = [row.get(column("error", name)) for name in ("type", "message")]
    return ": ".join(p for p in parts if isinstance(p, str) and p) or "no error recorded"
