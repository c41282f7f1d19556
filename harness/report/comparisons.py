"""Which differences between a report's configurations are real: paired comparisons and value intervals.

Every configuration is compared with the reference row and with every other row, on the units both share:

- **seeds and documents**: when two rows share >= 3 seeds and every one of those jobs has
  ``samples.parquet``: the two-level bootstrap of :func:`harness.stats.paired_hierarchical` (seeds, then
  documents), which carries both training and evaluation-set variance;
- **seeds**: when two rows share >= 2 seeds, per-seed paired differences (t-interval, paired t-test) of
  every other column;
- **documents**: one shared seed, both jobs with ``samples.parquet``: the per-document paired bootstrap
  of :func:`harness.stats.compare_samples` on the documents both scored;
- **training steps**: one shared seed: the mean per-step loss difference after the warm-up steps, with an
  autocorrelation-robust t (jobs of one sweep train on the same batches in the same order).

Every row's CI and p come from one procedure (``significant`` ⇔ the CI excludes 0). ``q_value`` is the
Benjamini–Hochberg adjusted p over every row of the report: what to read when scanning many rows.
Bootstrap resamples are scaled to the number of comparisons, so a correction over all of them can reject.

Each value in the results table gets a 95 % interval: a t-interval over seeds, else a bootstrap over the
job's documents, else lm-eval's stderr × 1.96; a job with neither is shown without one and named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import pandas as pd

from harness.quant import SIXTEEN_BIT_TYPES
from harness.report.metrics import Metric, Row, config_labels, metric_frame, show
from harness.stats import (
    Bootstrap,
    PairedEstimate,
    benjamini_hochberg,
    compare_samples,
    draws_ci_p,
    paired_hierarchical,
    paired_loss,
    paired_seeds,
    t_interval,
)
from harness.stats.hierarchical import MIN_SEEDS
from harness.stats.paired import resample_stats
from harness.stats.samples import DOC_KEY, aggregate_resampled, metric_column
from harness.stats.steps import MIN_STEPS

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
    "q_value",
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
    units: str  # what was paired, ``estimate.n`` of them: seeds | seeds × documents | documents | steps
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
                return c.estimate.flipped()
        return None

    def best(self, source: str, direction: int) -> int | None:
        """The row significantly better than every other row on ``source``, if there is one."""
        for a in range(len(self.rows)):
            others = [self.between(source, a, b) for b in range(len(self.rows)) if b != a]
            if others and all(e is not None and e.significant and direction * e.delta > 0 for e in others):
                return a
        return None

    def frame(self) -> pd.DataFrame:
        """``comparisons.csv``: one row per (task, metric, config, reference), with its BH q-value."""
        q_values = benjamini_hochberg([c.estimate.p_value for c in self.comparisons])
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
                "q_value": q,
                "mde": c.estimate.mde,
                "significant": c.estimate.significant,
                "method": c.estimate.method,
                "resamples": c.estimate.resamples,
                "bootstrap_seed": c.estimate.seed,
                "note": c.note,
            }
            for c, q in zip(self.comparisons, q_values, strict=True)
        ]
        return pd.DataFrame(records, columns=COLUMNS)


def parse_selector(selector: str, what: str = "--reference") -> dict[str, str]:
    """``"quant.storage=nf4 quant.double_quant=true"`` (or comma-separated) → ``{key: value}``; ``what``
    names the selector's origin in errors (the option, or a declared hypothesis)."""
    pairs = [p for p in selector.replace(",", " ").split() if p]
    bad = [p for p in pairs if p.count("=") != 1 or not p.split("=")[0] or not p.split("=")[1]]
    if not pairs or bad:
        raise SelectorError(
            f"{what} {selector!r}: expected key=value pairs like 'quant.storage=bf16', got {bad or pairs}"
        )
    return dict(p.split("=") for p in pairs)


def _matches(job: pd.Series, wanted: dict[str, str]) -> bool:
    return all(show(job[f"config.{key}"]).lower() == value.lower() for key, value in wanted.items())


def select_reference(ok: pd.DataFrame, rows: list[Row], selector: str | None) -> int:
    """The reference row: the one ``selector`` matches; by default the 16-bit row if any, else the first.

    A selector naming an unknown key, or matching no row or several, raises :class:`SelectorError` naming
    the selector and the candidates.
    """
    if selector is not None:
        return select_row(ok, rows, selector)
    storage = ok.get("config.quant.storage", pd.Series(index=ok.index, dtype=object))
    sixteen = [i for i, row in enumerate(rows) if storage[row.jobs].isin(SIXTEEN_BIT_TYPES).all()]
    return sixteen[0] if len(sixteen) == 1 else 0


def select_row(ok: pd.DataFrame, rows: list[Row], selector: str, what: str = "--reference") -> int:
    """The one row ``selector`` (override-style ``key=value`` pairs) matches; else :class:`SelectorError`
    naming ``what``, the selector and the candidates."""
    wanted = parse_selector(selector, what)
    unknown = [k for k in wanted if f"config.{k}" not in ok]
    if unknown:
        keys = sorted(c.removeprefix("config.") for c in ok.columns if c.startswith("config."))
        raise SelectorError(f"{what} {selector!r}: unknown key(s) {unknown}; config keys: {keys}")
    labels = config_labels(ok, [f"config.{k}" for k in wanted])
    hits = [i for i, row in enumerate(rows) if all(_matches(labels.loc[j], wanted) for j in row.jobs)]
    if len(hits) != 1:
        found = "no row" if not hits else f"{len(hits)} rows ({', '.join(rows[i].name for i in hits)})"
        candidates = ", ".join(row.name for row in rows)
        raise SelectorError(f"{what} {selector!r} matches {found}; the rows are: {candidates}")
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
    ok: pd.DataFrame, raw: pd.DataFrame, a: dict[int, int], b: dict[int, int], confidence: float
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
            out[source] = paired_seeds(reference, current, confidence)
    return out


def _paired_rows(reference: pd.DataFrame, current: pd.DataFrame) -> dict[tuple[str, str, str], pd.DataFrame]:
    """(task, metric, aggregation) → the after-training rows both jobs scored, merged on the document."""
    keys = ["task", "metric", "aggregation"]
    ref, cur = (frame[frame["phase"] == "after"] for frame in (reference, current))
    merged = ref.merge(cur, on=[*DOC_KEY, *keys], suffixes=("_base", "_cur"))
    return {key: rows for key, rows in merged.groupby(keys, sort=True)}


def _by_seed_documents(
    ok: pd.DataFrame, samples: dict[str, pd.DataFrame], a: dict[int, int], b: dict[int, int], bootstrap
) -> dict[str, PairedEstimate]:
    """Two-level (seeds, then documents) comparisons of every after-training metric that all of the
    >= :data:`MIN_SEEDS` shared seeds' jobs scored on the same documents; empty when a job lacks samples."""
    shared = sorted(set(a) & set(b))
    frames = [(samples.get(ok["job_dir"][b[s]]), samples.get(ok["job_dir"][a[s]])) for s in shared]
    if len(shared) < MIN_SEEDS or any(ref is None or cur is None for ref, cur in frames):
        return {}
    per_seed = [_paired_rows(ref, cur) for ref, cur in frames]
    out = {}
    for key in sorted(set.intersection(*(set(rows) for rows in per_seed))):
        task, metric, aggregation = key
        parts = [rows[key] for rows in per_seed]
        if aggregation == "task_mean" or min(len(part) for part in parts) < MIN_DOCUMENTS:
            continue
        arrays = [
            (p["value_base"].to_numpy(), p["value_cur"].to_numpy(), p["weight_base"].to_numpy())
            for p in parts
        ]
        source = metric_column("after", task, metric)
        out[source] = paired_hierarchical(arrays, aggregation, bootstrap, seeds=shared)
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
    return estimate if estimate.n >= MIN_DOCUMENTS else estimate.untested()


def _by_steps(ok: pd.DataFrame, job: int, ref: int, confidence: float) -> PairedEstimate | None:
    """Per-step training-loss comparison of two jobs with the same schedule; None when not comparable or
    fewer than :data:`harness.stats.steps.MIN_STEPS` steps follow the warm-up."""
    if LOSS not in ok:
        return None
    current, reference, skip = ok[LOSS][job], ok[LOSS][ref], _loss_skip(ok, job)
    if not isinstance(current, list) or not isinstance(reference, list) or len(current) != len(reference):
        return None
    if len(current) - skip < MIN_STEPS:
        return None
    return paired_loss(reference, current, skip=skip, confidence=confidence)


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
    two_level = _by_seed_documents(ok, samples, a, b, bootstrap)
    out = [Comparison(source, *pair, est, "seeds × documents") for source, est in two_level.items()]
    by_seeds = _by_seeds(ok, raw, a, b, bootstrap.confidence)
    out += [
        Comparison(source, *pair, est, "seeds") for source, est in by_seeds.items() if source not in two_level
    ]
    shared = sorted(set(a) & set(b))
    if len(shared) == 1:
        job, ref = a[shared[0]], b[shared[0]]
        documents = _by_documents(ok, samples, job, ref, bootstrap)
        out += [Comparison(source, *pair, est, "documents", note) for source, est, note in documents]
        steps = _by_steps(ok, job, ref, bootstrap.confidence)
        if steps is not None:
            out.append(Comparison(LOSS, *pair, steps, "steps"))
    return out


def _document_interval(rows: pd.DataFrame, bootstrap: Bootstrap) -> tuple[float, float]:
    """Bootstrap interval of one job's task value, resampling its documents."""
    values, weights = rows["value"].to_numpy(), rows["weight"].to_numpy()
    how = rows["aggregation"].iloc[0]
    draws = resample_stats(
        len(values), lambda counts: aggregate_resampled(counts, values, weights, how), bootstrap
    )
    low, high, _ = draws_ci_p(draws, bootstrap.confidence)
    return low, high


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


def _tests_per_pair(ok: pd.DataFrame, raw: pd.DataFrame, samples: dict[str, pd.DataFrame]) -> int:
    """How many comparisons one pair of rows can make: every column over seeds, else every after-training
    sample metric, plus the training loss."""
    if ok.get(SEED, pd.Series(0, index=ok.index)).nunique() > 1:
        return len(raw.columns) + 1
    metrics = {
        tuple(key)
        for f in samples.values()
        for key in f.loc[f["phase"] == "after", ["task", "metric"]].values
    }
    return len(metrics) + 1


def compute_statistics(
    ok: pd.DataFrame,
    rows: list[Row],
    samples: dict[str, pd.DataFrame],
    reference: int,
    bootstrap: Bootstrap,
) -> Statistics:
    """Compare each row with the reference, then every other pair; an interval for each table value.

    Comparisons resample ``bootstrap`` scaled to the number of tests (:meth:`Bootstrap.for_tests`); the
    value intervals, which no correction reads, resample ``bootstrap`` as given.
    """
    raw, metrics = _raw_values(ok)
    others = [i for i in range(len(rows)) if i != reference]
    pairs = [(i, reference) for i in others] + [(j, i) for i in others for j in others if j > i]
    tests = bootstrap.for_tests(len(pairs) * _tests_per_pair(ok, raw, samples))
    stats = Statistics(rows, reference, tests)
    for pair in pairs:
        stats.comparisons += _compare_pair(ok, raw, samples, rows, pair, tests)
    for index, row in enumerate(rows):
        for metric in metrics:
            interval = _interval(ok, row, metric.source, raw[metric.source], samples, bootstrap)
            if interval is not None:
                stats.intervals[index, metric.source] = interval
    stats.without_samples = [str(job) for job in ok["job_dir"] if str(job) not in samples]
    return stats
