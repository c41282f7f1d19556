"""Per-sample results: what lm-eval scored for every document, stored as ``samples.parquet``.

Where the files live
--------------------
- **Job:** ``<job_dir>/samples.parquet`` beside ``result.json``, written by the job (``eval.log_samples``,
  default true) through :func:`write_samples`. A job without it (old job, ``eval.log_samples=false``, no
  evaluation) simply has no per-sample results; readers fall back and say so.
- **Report or baseline directory:** ``qlora-report`` writes ``<out>/samples.parquet`` beside
  ``results.csv``/``results.parquet``: every finished job's rows, concatenated, with one more leading
  column ``job_dir`` holding exactly that job's ``job_dir`` value in the results table. Results rows and
  sample rows join on ``job_dir``; :func:`write_report_samples` writes it, :func:`load_samples` reads both
  layouts. A committed baseline (``reports/baselines/smoke/``) is a report directory, so its samples
  travel with it as ``reports/baselines/smoke/samples.parquet``.

Columns (long format, one row per phase, task, document and metric)
--------------------------------------------------------------------
``phase``        ``before`` (``eval_before`` in result.json: the quantized model before training) or
                 ``after`` (``eval``: the trained model)
``task``         lm-eval task name, as in result.json's ``eval.<task>``
``doc_id``       lm-eval's ``doc_id`` (position in the task's evaluation split)
``doc_hash``     first 16 hex digits of lm-eval's ``doc_hash``: two jobs pair a document only when both the
                 id and the hash agree, so a changed data file is not paired by position
``metric``       metric name as in result.json (``acc``, ``acc_norm``, ``word_perplexity``,
                 ``exact_match/strict-match`` for a filter other than ``none``)
``aggregation``  how the task's value is rebuilt from the rows: ``mean`` (value per document; acc, acc_norm,
                 exact_match, and Brier score per document), ``weighted_perplexity`` (exp(-Σvalue / Σweight)),
                 ``bits_per_byte`` (-Σvalue / Σweight / ln 2) or ``task_mean`` (a pool of tasks,
                 :func:`pool_tasks`: Σvalue·weight / Σweight with weight 1 / the task's document count, the
                 mean of the task means)
``value``        the document's score; for the two weighted aggregations its log-likelihood
``weight``       1 for ``mean``; the document's word count (``word_perplexity``) or byte count
                 (``byte_perplexity``, ``bits_per_byte``), as lm-eval's task counted them; 1 / the task's
                 document count for ``task_mean``, whose ``doc_hash`` is ``<task>/<hash>``: the task a pooled
                 document came from, which the paired bootstrap resamples within

Metrics whose aggregation is corpus-level and not a (weighted) mean (f1, mcc, bleu, …) are not stored.
:func:`aggregate` rebuilds lm-eval's task value from the rows exactly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

SAMPLES_FILE = "samples.parquet"
PHASES = ("before", "after")
PHASE_PREFIX = {"before": "eval_before", "after": "eval"}  # result.json block (and table column prefix)
CORPUS_AGGREGATIONS = ("weighted_perplexity", "bits_per_byte")
AGGREGATIONS = ("mean", *CORPUS_AGGREGATIONS, "task_mean")
COLUMNS = ("phase", "task", "doc_id", "doc_hash", "metric", "aggregation", "value", "weight")
JOB_COLUMN = "job_dir"
REPORT_TABLES = (".csv", ".parquet")  # results.csv / results.parquet: their samples are beside them
DOC_KEY = ["task", "doc_id", "doc_hash"]


class SamplesError(ValueError):
    """A samples file or frame that does not follow the layout above; the message names it."""


def aggregate(values: np.ndarray, weights: np.ndarray, aggregation: str) -> float:
    """The task-level value lm-eval reports, rebuilt from per-document rows."""
    if aggregation == "mean":
        return float(np.mean(values))
    if aggregation == "task_mean":
        return float(np.sum(values * weights) / np.sum(weights))
    if aggregation in CORPUS_AGGREGATIONS:
        return float(corpus_value(np.sum(values), np.sum(weights), aggregation))
    raise SamplesError(f"aggregation {aggregation!r} is not one of {AGGREGATIONS}")


def aggregate_resampled(
    counts: np.ndarray, values: np.ndarray, weights: np.ndarray, aggregation: str
) -> np.ndarray:
    """:func:`aggregate` of every resample in ``counts`` (resamples × documents: how often each document
    was drawn), as weighted sums: one matrix product per resampled column instead of a gather per row."""
    if aggregation == "mean":
        return counts @ values / values.size
    if aggregation == "task_mean":
        return counts @ (values * weights) / (counts @ weights)
    if aggregation in CORPUS_AGGREGATIONS:
        return corpus_value(counts @ values, counts @ weights, aggregation)
    raise SamplesError(f"aggregation {aggregation!r} is not one of {AGGREGATIONS}")


def corpus_value(ll_sum: np.ndarray, weight_sum: np.ndarray, aggregation: str) -> np.ndarray:
    """Corpus perplexity or bits per byte from summed log-likelihoods and word/byte counts."""
    mean_ll = ll_sum / weight_sum
    return np.exp(-mean_ll) if aggregation == "weighted_perplexity" else -mean_ll / math.log(2)


def metric_column(phase: str, task: str, metric: str) -> str:
    """The results-table column a sample metric belongs to: ``("after", "arc", "acc")`` → ``eval.arc.acc``."""
    return f"{PHASE_PREFIX[phase]}.{task}.{metric}"


def check_frame(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """``frame`` with the layout's columns and types; a missing column or unknown phase/aggregation raises."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise SamplesError(f"{where}: missing column(s) {missing}; a samples frame has {list(COLUMNS)}")
    for column, allowed in (("phase", PHASES), ("aggregation", AGGREGATIONS)):
        unknown = sorted(set(frame[column].astype(str)) - set(allowed))
        if unknown:
            raise SamplesError(f"{where}: {column} value(s) {unknown}; allowed: {list(allowed)}")
    return frame.astype({"doc_id": "int64", "value": "float64", "weight": "float64"})


def write_samples(job_dir: str | os.PathLike, frames: Mapping[str, pd.DataFrame | None]) -> Path | None:
    """Write ``job_dir/samples.parquet`` from ``{phase: frame}`` (frames as ``evaluate_model`` returns them,
    without a ``phase`` column); ``None`` frames are skipped. Returns the path, or None when nothing was
    logged (then an older file there is removed: the file always belongs to the result.json beside it).
    Written through a temporary file, so a killed job leaves no half file."""
    parts = [frame.assign(phase=phase) for phase, frame in frames.items() if frame is not None]
    path = Path(job_dir) / SAMPLES_FILE
    if not parts:
        path.unlink(missing_ok=True)  # a re-run without samples must not leave the old run's beside it
        return None
    table = check_frame(pd.concat(parts, ignore_index=True), f"samples for {job_dir}")[list(COLUMNS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{SAMPLES_FILE}.tmp")
    table.to_parquet(tmp, index=False, compression="zstd")
    os.replace(tmp, path)
    return path


def read_samples(path: str | os.PathLike) -> pd.DataFrame:
    """One samples file (a job's, or a report's with its ``job_dir`` column), checked against the layout."""
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise SamplesError(f"{path}: not a readable samples file ({exc})") from exc
    return check_frame(frame, str(path))


def write_report_samples(table: pd.DataFrame, out: str | os.PathLike) -> Path | None:
    """Concatenate the samples of every job in a results table into ``out/samples.parquet``.

    ``table`` is qlora-report's results table (its ``job_dir`` column names each job's directory). Jobs
    without a samples file are left out; returns None when no job has one.
    """
    found = load_samples(table, source=None)
    if not found:
        return None
    parts = [frame.assign(**{JOB_COLUMN: job}) for job, frame in found.items()]
    merged = pd.concat(parts, ignore_index=True)[[JOB_COLUMN, *COLUMNS]]
    path = Path(out) / SAMPLES_FILE
    merged.to_parquet(path, index=False, compression="zstd")
    return path


def load_samples(table: pd.DataFrame, source: str | os.PathLike | None) -> dict[str, pd.DataFrame]:
    """``{job_dir: samples}`` for the jobs of ``table`` that have per-sample results.

    ``source`` is where ``table`` came from: a results table file (its samples are the report layout's
    ``samples.parquet`` beside it), or a sweep directory, a result.json or ``None`` (each job's own
    ``job_dir/samples.parquet``).
    """
    if "job_dir" not in table:
        return {}
    jobs = [str(job) for job in table["job_dir"].dropna()]
    if source is not None and Path(source).suffix in REPORT_TABLES:
        return _report_samples(Path(source).with_name(SAMPLES_FILE), jobs)
    return {
        job: read_samples(Path(job) / SAMPLES_FILE) for job in jobs if (Path(job) / SAMPLES_FILE).is_file()
    }


def _report_samples(path: Path, jobs: Iterable[str]) -> dict[str, pd.DataFrame]:
    if not path.is_file():
        return {}
    frame = read_samples(path)
    if JOB_COLUMN not in frame:
        raise SamplesError(f"{path}: a report's samples file needs a {JOB_COLUMN!r} column")
    groups = {str(job): rows.drop(columns=JOB_COLUMN) for job, rows in frame.groupby(JOB_COLUMN, sort=False)}
    return {job: groups[job].reset_index(drop=True) for job in jobs if job in groups}


ACCURACY_METRICS = ("acc_norm", "acc")  # a task's main accuracy: length-normalised where lm-eval has it


def pool_tasks(frame: pd.DataFrame, name: str, tasks: Sequence[str]) -> pd.DataFrame:
    """``frame`` plus the rows of a pseudo-task ``name``: every document of ``tasks`` with its task's main
    accuracy (the first of :data:`ACCURACY_METRICS` it has), as metric ``acc``, in each phase where all of
    ``tasks`` were scored.

    Their value is the mean of the task accuracies (aggregation ``task_mean``), the paper's mean zero-shot
    accuracy (Figure 3) whatever each task's size; each row's ``doc_hash`` is prefixed with its own task, so
    the paired bootstrap resamples every task's questions within that task.
    """
    parts = []
    for _, rows in frame[frame["task"].isin(tasks)].groupby("phase", sort=False):
        picked = [_main_accuracy(rows[rows["task"] == task]) for task in tasks]
        if all(part is not None for part in picked):
            parts += [_pooled(part, name) for part in picked]
    return pd.concat([frame, *parts], ignore_index=True) if parts else frame


def pool_stratum(doc_hash: str) -> str:
    """The task a pooled document came from (the ``<task>/`` prefix :func:`pool_tasks` gives its hash)."""
    return doc_hash.split("/", 1)[0]


def _pooled(rows: pd.DataFrame, name: str) -> pd.DataFrame:
    return rows.assign(
        task=name,
        metric="acc",
        aggregation="task_mean",
        weight=1.0 / len(rows),
        doc_hash=rows["task"] + "/" + rows["doc_hash"].astype(str),
    )


def _main_accuracy(rows: pd.DataFrame) -> pd.DataFrame | None:
    metric = next((m for m in ACCURACY_METRICS if (rows["metric"] == m).any()), None)
    return None if metric is None else rows[rows["metric"] == metric]
