"""Which differences between a report's configurations are real: paired comparisons and value intervals.

Every configuration is compared with the reference row and with every other row, on the units both share:

- **seeds**: when two rows share >= 2 seeds, per-seed paired differences (t-interval, paired t-test);
- **documents**: one shared seed, both jobs with ``samples.parquet``: the per-document paired bootstrap
  and exact McNemar of :func:`harness.stats.compare_samples` on the documents both scored;
- **training steps**: one shared seed: the mean per-step loss difference after the warm-up steps, with a
  moving-block bootstrap (jobs of one sweep train on the same batches in the same order).

Each value in the results table gets a 95 % interval: a t-interval over seeds, else a bootstrap over the
job's documents, else lm-eval's stderr × 1.96; a job with neither is shown without one and named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from statistics import NormalDist

import numpy as np
import pandas as pd

from harness.quant import SIXTEEN_BIT_TYPES
from harness.report.metrics import Metric, Row, config_labels, metric_frame, show
from harness.stats import (
    Bootstrap,
    PairedEstimate,
    aggregate,
    compare_samples,
    paired_loss,
    paired_seeds,
    t_interval,
)
from harness.stats.paired import percentile_ci, resample_stats

SEED = "config.seed"
WARMUP = "config.train.warmup_steps_excluded"
LOSS = "train.loss"
MIN_DOCUMENTS = 10  # fewer, and a bootstrap over documents cannot see their spread
_EVAL_BLOCKS = ("eval", "eval_delta")
COLUMNS = [
    "task",
    "metric",
    "config",
    "reference",
    "n",
    "value",
    "reference_value",
    "delta",
    "ci_low",
    "ci_high",
    "p_value",
    "mde",
    "significant",
    "units",
    "method",
    "resamples",
    "bootstrap_seed",
    "note",
]


class SelectorError(ValueError):
    """A ``--reference`` selector that is malformed or does not pick exactly one row."""


@dataclass(frozen=True)
class Comparison:
    """``config`` − ``reference`` for one results-table column (``source``), in the column's raw units."""

    source: str
    config: int  # index into Statistics.rows
    reference: int
    estimate: PairedEstimate
    units: str  # what was paired, ``estimate.n`` of them: seeds | documents | steps
    note: str = ""

    @property
    def task(self) -> str:
        """The lm-eval task of an ``eval.<task>.<metric>`` column, else the block (``train``, ``quant``)."""
        block, _, rest = self.source.partition(".")
        return rest.split(".")[0] if block in _EVAL_BLOCKS else block

    @property
    def metric(self) -> str:
        block, _, rest = self.source.partition(".")
        if block not in _EVAL_BLOCKS:
            return rest
        metric = rest.split(".", 1)[1]
        return f"{metric} (after−before)" if block == "eval_delta" else metric


@dataclass(frozen=True)
class ValueInterval:
    """The 95 % interval of one table value (raw units) and how it was obtained: seeds, documents, stderr."""

    low: float
    high: float
    method: str


@dataclass
class Statistics:
    """Everything a report needs to say which differences are real."""

    rows: list[Row]
    reference: int
    bootstrap: Bootstrap
    comparisons: list[Comparison] = field(default_factory=list)
    intervals: dict[tuple[int, str], ValueInterval] = field(default_factory=dict)
    without_samples: list[str] = field(default_factory=list)

    def between(self, source: str, a: int, b: int) -> PairedEstimate | None:
        """Row ``a`` − row ``b`` on ``source``, whichever way round it was computed; None if not compared."""
        for c in self.comparisons:
            if c.source == source and (c.config, c.reference) == (a, b):
                return c.estimate
            if c.source == source and (c.config, c.reference) == (b, a):
                e = c.estimate
                return replace(
                    e,
                    baseline=e.current,
                    current=e.baseline,
                    delta=-e.delta,
                    ci_low=-e.ci_high,
                    ci_high=-e.ci_low,
                )
        return None

    def best(self, source: str, direction: int) -> int | None:
        """The row significantly better than every other row on ``source``, if there is one."""
        for a in range(len(self.rows)):
            others = [self.between(source, a, b) for b in range(len(self.rows)) if b != a]
            if others and all(e is not None and e.significant and direction * e.delta > 0 for e in others):
                return a
        return None

    def frame(self) -> pd.DataFrame:
        """``comparisons.csv``: one row per (task, metric, config, reference)."""
        records = [
            {
                "task": c.task,
                "metric": c.metric,
                "config": self.rows[c.config].name,
                "reference": self.rows[c.reference].name,
                "n": c.estimate.n,
                "units": c.units,
                "value": c.estimate.current,
                "reference_value": c.estimate.baseline,
                "delta": c.estimate.delta,
                "ci_low": c.estimate.ci_low,
                "ci_high": c.estimate.ci_high,
                "p_value": c.estimate.p_value,
                "mde": c.estimate.mde,
                "significant": c.estimate.significant,
                "method": c.estimate.method,
                "resamples": c.estimate.resamples,
                "bootstrap_seed": c.estimate.seed,
                "note": c.note,
            }
            for c in self.comparisons
        ]
        return pd.DataFrame(records, columns=COLUMNS)


def parse_selector(selector: str) -> dict[str, str]:
    """``"quant.storage=nf4 quant.double_quant=true"`` (or comma-separated) → ``{key: value}``."""
    pairs = [p for p in selector.replace(",", " ").split() if p]
    bad = [p for p in pairs if p.count("=") != 1 or not p.split("=")[0] or not p.split("=")[1]]
    if not pairs or bad:
        raise SelectorError(
            f"--reference {selector!r}: expected key=value pairs like 'quant.storage=bf16', "
            f"got {bad or pairs}"
        )
    return dict(p.split("=") for p in pairs)


def _matches(job: pd.Series, wanted: dict[str, str]) -> bool:
    return all(show(job[f"config.{key}"]).lower() == value.lower() for key, value in wanted.items())


def select_reference(ok: pd.DataFrame, rows: list[Row], selector: str | None) -> int:
    """The reference row: the one ``selector`` matches; by default the 16-bit row if any, else the first.

    A selector naming an unknown key, or matching no row or several, raises :class:`SelectorError` naming
    the selector and the candidates.
    """
    if selector is None:
        storage = ok.get("config.quant.storage", pd.Series(index=ok.index, dtype=object))
        sixteen = [i for i, row in enumerate(rows) if storage[row.jobs].isin(SIXTEEN_BIT_TYPES).all()]
        return sixteen[0] if len(sixteen) == 1 else 0
    wanted = parse_selector(selector)
    unknown = [k for k in wanted if f"config.{k}" not in ok]
    if unknown:
        keys = sorted(c.removeprefix("config.") for c in ok.columns if c.startswith("config."))
        raise SelectorError(f"--reference {selector!r}: unknown key(s) {unknown}; config keys: {keys}")
    labels = config_labels(ok, [f"config.{k}" for k in wanted])
    hits = [i for i, row in enumerate(rows) if all(_matches(labels.loc[j], wanted) for j in row.jobs)]
    if len(hits) != 1:
        found = "no row" if not hits else f"{len(hits)} rows ({', '.join(rows[i].name for i in hits)})"
        candidates = ", ".join(row.name for row in rows)
        raise SelectorError(f"--reference {selector!r} matches {found}; the rows are: {candidates}")
    return hits[0]


def _seed_jobs(ok: pd.DataFrame, row: Row) -> dict[int, int]:
    """seed → job index of a row (the first job per seed)."""
    seeds = ok.get(SEED, pd.Series(0, index=ok.index))
    out: dict[int, int] = {}
    for job in row.jobs:
        out.setdefault(int(seeds[job]) if pd.notna(seeds[job]) else 0, job)
    return out


def _eval_columns(ok: pd.DataFrame) -> list[str]:
    """The ``eval.<task>.<metric>`` columns with numbers (no stderr, no document count)."""
    return [
        c
        for c in ok.columns
        if c.startswith("eval.")
        and c.count(".") == 2
        and not c.endswith(("_stderr", ".n"))
        and pd.to_numeric(ok[c], errors="coerce").notna().any()
    ]


def _loss_skip(ok: pd.DataFrame, job: int) -> int:
    value = ok[WARMUP][job] if WARMUP in ok else 0
    return int(value) if pd.notna(value) else 0


def _mean_loss(ok: pd.DataFrame, job: int) -> float:
    """Mean training loss after the warm-up steps; NaN for a job that did not train past them."""
    losses = ok[LOSS][job]
    kept = losses[_loss_skip(ok, job) :] if isinstance(losses, list) else []
    return float(np.mean(kept)) if kept else math.nan


def _by_seeds(
    ok: pd.DataFrame, raw: pd.DataFrame, a: dict[int, int], b: dict[int, int]
) -> dict[str, PairedEstimate]:
    """Per-seed paired comparisons of each column of ``raw`` and of the mean training loss, by source."""
    out = {}
    columns = {c: raw[c] for c in raw.columns}
    if LOSS in ok:
        columns[LOSS] = pd.Series({job: _mean_loss(ok, job) for job in [*a.values(), *b.values()]})
    for source, values in columns.items():
        current = {s: values[j] for s, j in a.items() if pd.notna(values.get(j))}
        reference = {s: values[j] for s, j in b.items() if pd.notna(values.get(j))}
        if len(set(current) & set(reference)) >= 2:
            out[source] = paired_seeds(reference, current)
    return out


def _by_documents(
    ok: pd.DataFrame, samples: dict[str, pd.DataFrame], job: int, ref: int, bootstrap: Bootstrap
) -> list[tuple[str, PairedEstimate, str]]:
    """Per-document paired comparisons of the evaluated (after-training) metrics of two jobs."""
    current, reference = samples.get(ok["job_dir"][job]), samples.get(ok["job_dir"][ref])
    if current is None or reference is None:
        return []
    compared = compare_samples(reference, current, bootstrap)
    return [(c.column, _testable(c.estimate), c.shared_note()) for c in compared if c.phase == "after"]


def _testable(estimate: PairedEstimate) -> PairedEstimate:
    """Too few documents have no spread a bootstrap can see (one document: every resample is that document;
    two: three distinct resamples), so its CI collapses and its p-value is spuriously tiny. WikiText-2 at a
    small eval.limit is one or two articles. Below :data:`MIN_DOCUMENTS` the CI, p and MDE are unknown."""
    if estimate.n >= MIN_DOCUMENTS:
        return estimate
    return replace(estimate, ci_low=math.nan, ci_high=math.nan, p_value=math.nan, mde=math.nan)


def _by_steps(ok: pd.DataFrame, job: int, ref: int, bootstrap: Bootstrap) -> PairedEstimate | None:
    """Per-step training-loss comparison of two jobs with the same schedule; None when not comparable."""
    if LOSS not in ok:
        return None
    current, reference, skip = ok[LOSS][job], ok[LOSS][ref], _loss_skip(ok, job)
    if not isinstance(current, list) or not isinstance(reference, list) or len(current) != len(reference):
        return None
    if len(current) - skip < 3:
        return None
    return paired_loss(reference, current, skip=skip, bootstrap=bootstrap)


def _compare_pair(
    ok: pd.DataFrame,
    raw: pd.DataFrame,
    samples: dict[str, pd.DataFrame],
    rows: list[Row],
    pair: tuple[int, int],
    bootstrap: Bootstrap,
) -> list[Comparison]:
    """Row ``pair[0]`` − row ``pair[1]`` on every column the two can be paired on."""
    a, b = (_seed_jobs(ok, rows[i]) for i in pair)
    by_seeds = _by_seeds(ok, raw, a, b)
    out = [Comparison(source, *pair, estimate, "seeds") for source, estimate in by_seeds.items()]
    shared = sorted(set(a) & set(b))
    if len(shared) == 1:
        job, ref = a[shared[0]], b[shared[0]]
        documents = _by_documents(ok, samples, job, ref, bootstrap)
        out += [Comparison(source, *pair, est, "documents", note) for source, est, note in documents]
        steps = _by_steps(ok, job, ref, bootstrap)
        if steps is not None:
            out.append(Comparison(LOSS, *pair, steps, "steps"))
    return out


def _document_interval(rows: pd.DataFrame, bootstrap: Bootstrap) -> tuple[float, float]:
    """Bootstrap interval of one job's task value, resampling its documents."""
    values, weights = rows["value"].to_numpy(), rows["weight"].to_numpy()
    how = rows["aggregation"].iloc[0]
    draws = resample_stats(
        len(values), lambda idx: np.array([aggregate(values[i], weights[i], how) for i in idx]), bootstrap
    )
    return percentile_ci(draws, bootstrap)


def _phase_rows(frame: pd.DataFrame, phase: str, task: str, metric: str) -> pd.DataFrame:
    return frame[(frame["phase"] == phase) & (frame["task"] == task) & (frame["metric"] == metric)]


def _job_interval(
    ok: pd.DataFrame,
    job: int,
    source: str,
    value: float,
    samples: dict[str, pd.DataFrame],
    bootstrap: Bootstrap,
) -> ValueInterval | None:
    """One job's interval: a bootstrap over its documents (for a change through training, paired before
    and after on the same documents), else lm-eval's stderr × z; None when neither exists."""
    block, task, metric = source.split(".", 2)
    frame = samples.get(ok["job_dir"][job])
    if frame is not None and block == "eval":
        rows = _phase_rows(frame, "after", task, metric)
        if len(rows) >= MIN_DOCUMENTS:
            return ValueInterval(*_document_interval(rows, bootstrap), "documents")
    if frame is not None and block == "eval_delta":
        before = _phase_rows(frame, "before", task, metric).assign(phase="after")
        compared = compare_samples(before, _phase_rows(frame, "after", task, metric), bootstrap)
        if compared and compared[0].estimate.n >= MIN_DOCUMENTS:
            return ValueInterval(compared[0].estimate.ci_low, compared[0].estimate.ci_high, "documents")
    stderr = pd.to_numeric(ok[f"{source}_stderr"], errors="coerce")[job] if f"{source}_stderr" in ok else None
    if block == "eval" and stderr is not None and pd.notna(stderr):
        half = NormalDist().inv_cdf(1 - bootstrap.alpha / 2) * stderr
        return ValueInterval(value - half, value + half, "stderr")
    return None


def _interval(
    ok: pd.DataFrame, row: Row, source: str, values: pd.Series, samples: dict[str, pd.DataFrame], bootstrap
) -> ValueInterval | None:
    """The 95 % interval of one row's value of ``source`` (raw units), or None when nothing supports one."""
    finite = values[row.jobs].dropna()
    if len(finite) >= 2:
        interval = t_interval(list(finite), bootstrap.confidence)
        return ValueInterval(interval.low, interval.high, "seeds")
    if len(finite) == 1 and source.split(".")[0] in _EVAL_BLOCKS:
        return _job_interval(ok, finite.index[0], source, finite.iloc[0], samples, bootstrap)
    return None


def _raw_values(ok: pd.DataFrame) -> tuple[pd.DataFrame, list[Metric]]:
    """Every table column and evaluated metric per job, in raw (result.json) units, keyed by source."""
    display, metrics = metric_frame(ok)
    raw = pd.DataFrame({m.source: display[m.header] / m.scale for m in metrics}, index=ok.index)
    for column in _eval_columns(ok):
        raw[column] = pd.to_numeric(ok[column], errors="coerce")
    return raw, metrics


def compute_statistics(
    ok: pd.DataFrame,
    rows: list[Row],
    samples: dict[str, pd.DataFrame],
    reference: int,
    bootstrap: Bootstrap,
) -> Statistics:
    """Compare each row with the reference, then every other pair; an interval for each table value."""
    raw, metrics = _raw_values(ok)
    others = [i for i in range(len(rows)) if i != reference]
    pairs = [(i, reference) for i in others] + [(j, i) for i in others for j in others if j > i]
    stats = Statistics(rows, reference, bootstrap)
    for pair in pairs:
        stats.comparisons += _compare_pair(ok, raw, samples, rows, pair, bootstrap)
    for index, row in enumerate(rows):
        for metric in metrics:
            interval = _interval(ok, row, metric.source, raw[metric.source], samples, bootstrap)
            if interval is not None:
                stats.intervals[index, metric.source] = interval
    stats.without_samples = [str(job) for job in ok["job_dir"] if str(job) not in samples]
    return stats
