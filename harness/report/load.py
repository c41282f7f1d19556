"""Load any number of result directories into one pandas table, one row per job."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from harness.env import COMMIT_KEY
from harness.result import ResultError, find_results, flatten, identity_columns, read_result
from harness.stats.samples import (
    ACCURACY_METRICS,
    COLUMNS,
    JOB_COLUMN,
    PHASE_PREFIX,
    SAMPLES_FILE,
    aggregate,
    load_samples,
    pool_tasks,
)

# write_result stores NaN/inf as these strings (JSON has no such numbers); only measured fields get them back.
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_MEASURED_PREFIXES = ("eval", "train.", "quant.", "lora.", "timings_s.")
RESULTS_FILE = "results.parquet"


@dataclass
class LoadedResults:
    """The jobs that could be read, and one message per file that could not."""

    table: pd.DataFrame
    errors: list[str] = field(default_factory=list)


def _revive_nonfinite(value: Any) -> Any:
    """Turn ``"nan"``/``"inf"`` strings back into floats so metric columns stay numeric."""
    if isinstance(value, str):
        return _NONFINITE.get(value, value)
    if isinstance(value, list):
        return [_revive_nonfinite(v) for v in value]
    return value


def _row(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """One table row: where it came from, then the flattened record."""
    flat = {
        key: _revive_nonfinite(value) if key.startswith(_MEASURED_PREFIXES) else value
        for key, value in flatten(record).items()
    }
    return {"path": str(path), "job_dir": str(path.parent), **flat}


def load_results(paths: Iterable[str | os.PathLike]) -> LoadedResults:
    """Read every ``result.json`` under ``paths`` (failed jobs included); unreadable files become errors.

    Columns are the flattened record with dotted names (``config.quant.storage``, ``eval.<task>.acc``);
    ``path`` names the file each row came from and ``job_dir`` its directory. A file reached through two
    overlapping paths is read once.
    """
    rows: list[dict] = []
    errors: list[str] = []
    seen: set[Path] = set()
    for root in paths:
        if not os.path.exists(root):
            errors.append(f"{root}: no such file or directory")
            continue
        for path in find_results(root):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                record = read_result(path)
            except ResultError as exc:
                errors.append(str(exc))
                continue
            rows.append(_row(path, record))
    return LoadedResults(pd.DataFrame(rows), errors)


def ok_jobs(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of jobs that finished (``status == "ok"``), renumbered from 0."""
    if "status" not in table:
        return table.iloc[0:0]
    return table[table["status"] == "ok"].reset_index(drop=True)


TASKS_COLUMN = "config.eval.tasks"


def merge_task_jobs(table: pd.DataFrame, samples: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict]:
    """Finished jobs that are one configuration evaluated a task at a time (the same identity but for
    ``eval.tasks``, which do not overlap) as one job: so a long evaluation can run as one resumable job per
    task and still be compared as a whole (a pool over all its tasks, say).

    The merged row is the first job's (its ``job_dir`` keys the joined samples) with every job's metric
    columns, the union of the tasks, ``timings_s.*`` summed, every commit the jobs ran at (comma-joined, so
    a verdict row built on them is checked for staleness against each), and ``merged_jobs`` naming each
    job directory.
    Failed jobs and jobs whose tasks overlap stay as they are; a table without such groups is returned as
    given, so merging twice changes nothing.
    """
    if table.empty or TASKS_COLUMN not in table or "status" not in table:
        return table, samples
    keys = [c for c in identity_columns(table.columns) if c != TASKS_COLUMN]
    ok = table[table["status"] == "ok"]
    spelled = ok[keys].map(lambda v: json.dumps(_unpacked(v), sort_keys=True, default=str))
    identity = spelled.agg("|".join, axis=1)
    merged, dropped = [], []
    for _, group in ok.groupby(identity, sort=False):
        flat = [task for value in group[TASKS_COLUMN] for task in _task_list(value)]
        if len(group) < 2 or len(flat) != len(set(flat)):
            continue
        merged.append(_merged_row(group, flat))
        dropped += list(group.index)
        jobs = [str(j) for j in group[JOB_COLUMN]]
        frames = [samples[j] for j in jobs if j in samples]
        samples = {j: f for j, f in samples.items() if j not in jobs}
        if frames:
            samples[jobs[0]] = pd.concat(frames, ignore_index=True)
    if not merged:
        return table, samples
    columns = [*table.columns, *(["merged_jobs"] if "merged_jobs" not in table else [])]
    return pd.concat([table.drop(index=dropped), pd.DataFrame(merged)], ignore_index=True)[columns], samples


def _task_list(value: Any) -> list[str]:
    value = _unpacked(value)
    return [value] if isinstance(value, str) else list(value)


COMMIT_COLUMN = f"env.{COMMIT_KEY}"


def joined_commits(values: Iterable[Any]) -> str:
    """The distinct commits in ``values`` (each one commit or several comma-joined), sorted, comma-joined."""
    return ",".join(sorted({commit for value in values for commit in str(value).split(",") if commit}))


def _merged_row(group: pd.DataFrame, tasks: list[str]) -> pd.Series:
    row = group.bfill().iloc[0].copy()  # the first job's values, each metric column from whichever job has it
    for column in (c for c in group.columns if c.startswith("timings_s.")):
        row[column] = group[column].sum(min_count=1)
    if COMMIT_COLUMN in group:
        row[COMMIT_COLUMN] = joined_commits(group[COMMIT_COLUMN].dropna()) or None
    row[TASKS_COLUMN] = tasks
    row["merged_jobs"] = [str(j) for j in group[JOB_COLUMN]]
    return row


class PoolError(ValueError):
    """A ``--pool`` that names no tasks, too few, or tasks no job scored."""


def pool_samples(
    table: pd.DataFrame, samples: dict[str, pd.DataFrame], pools: dict[str, list[str]]
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Each pool ``name -> tasks`` as one more task of every job that scored all of them
    (:func:`harness.stats.samples.pool_tasks`): its rows join the job's samples, and its accuracy and document
    count join the table as ``eval.<name>.acc`` / ``.n`` (``eval_before.`` too when it was scored before).

    The report's samples.parquet keeps the pooled rows, so a report rebuilt from its folder has the pool
    without being told; given again, a pool replaces its former rows and columns."""
    if not pools:
        return table, samples
    # A rebuilt report's samples already hold its pools' rows: pooling again replaces them.
    samples = {job: frame[~frame["task"].isin(pools)] for job, frame in samples.items()}
    scored = {
        task
        for frame in samples.values()
        for task in frame.loc[frame["metric"].isin(ACCURACY_METRICS), "task"].unique()
    }
    for name, tasks in pools.items():
        missing = sorted(set(tasks) - scored)
        if len(tasks) < 2 or missing:
            raise PoolError(
                f"--pool {name}={','.join(tasks)}: needs >= 2 tasks that the jobs scored"
                + (f"; no job has accuracy samples for {missing}" if missing else "")
            )
        samples = {job: pool_tasks(frame, name, tasks) for job, frame in samples.items()}
    columns = {job: _pooled_values(frame, pools) for job, frame in samples.items()}
    values = pd.DataFrame.from_dict(columns, orient="index").rename_axis("job_dir").reset_index()
    stale = [c for c in values.columns if c in table and c != "job_dir"]  # a rebuilt report's own pools
    return table.drop(columns=stale).merge(values, on="job_dir", how="left"), samples


def _pooled_values(frame: pd.DataFrame, pools: dict[str, list[str]]) -> dict[str, float]:
    values = {}
    for (phase, task), rows in frame[frame["task"].isin(pools)].groupby(["phase", "task"]):
        values[f"{PHASE_PREFIX[phase]}.{task}.acc"] = aggregate(rows["value"], rows["weight"], "task_mean")
        values[f"{PHASE_PREFIX[phase]}.{task}.n"] = len(rows)
    return values


def _arrow_ready(column: pd.Series) -> bool:
    """Parquet takes a column as is unless it mixes types (``targets``: str or list) or holds empty dicts."""
    try:
        kind = pa.array(column, from_pandas=True).type
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return False
    return not pa.types.is_struct(kind)


def _as_json(value: Any) -> Any:
    """JSON text for containers and mixed values; missing values stay missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return json.dumps(value, default=str)


def write_samples_table(samples: dict[str, pd.DataFrame], out: Path) -> Path | None:
    """Every job's per-sample results in one ``out/samples.parquet`` (report layout: a ``job_dir`` column
    first, see :mod:`harness.stats.samples`); None when no job has any."""
    if not samples:
        return None
    parts = [frame.assign(**{JOB_COLUMN: job}) for job, frame in samples.items()]
    path = out / SAMPLES_FILE
    pd.concat(parts, ignore_index=True)[[JOB_COLUMN, *COLUMNS]].to_parquet(
        path, index=False, compression="zstd"
    )
    return path


def write_table(table: pd.DataFrame, out: Path, name: str) -> tuple[Path, Path]:
    """Write ``<name>.parquet`` and ``<name>.csv`` into ``out``; columns parquet cannot type become JSON."""
    fixed = {
        name: table[name].map(_as_json)
        for name in table.columns
        if table[name].dtype == object and not _arrow_ready(table[name])
    }
    ready = table.assign(**fixed)
    parquet, csv = out / f"{name}.parquet", out / f"{name}.csv"
    ready.to_parquet(parquet, index=False)
    ready.to_csv(csv, index=False)
    return parquet, csv


def _unpacked(value: Any) -> Any:
    """A results-table cell as ``result.json`` held it: arrays back to lists, :func:`_as_json` text parsed."""
    if isinstance(value, np.ndarray):
        return [_unpacked(v) for v in value.tolist()]
    if isinstance(value, list):
        return [_unpacked(v) for v in value]
    if isinstance(value, str) and value[:1] in ("[", "{", '"'):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def read_report(folder: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """A report folder's ``results.parquet`` and ``samples.parquet``, as :func:`load_results` and
    :func:`harness.stats.load_samples` would have read the runs themselves: every job's recorded config,
    environment (commit, machine, date) and metrics, and its per-document scores.

    Raises :class:`ReportFolderError` naming the folder when it holds no results table.
    """
    table_path = Path(folder) / RESULTS_FILE
    if not table_path.is_file():
        raise ReportFolderError(
            f"--from-report {folder}: no {RESULTS_FILE} there (a qlora-report folder has one)"
        )
    table = pd.read_parquet(table_path)
    table = table.assign(**{c: table[c].map(_unpacked) for c in table.columns if table[c].dtype == object})
    return table, load_samples(table, table_path)


class ReportFolderError(ValueError):
    """A ``--from-report`` folder without a results table."""


def portable(table: pd.DataFrame, samples: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict]:
    """Job directories (``job_dir``, ``path``) relative to the folder that holds all of them (the sweep), so
    no report names a machine's absolute path; ``samples`` is re-keyed the same way.

    Idempotent: paths already relative to their sweep stay as they are.
    """
    jobs = [str(j) for j in table.get(JOB_COLUMN, pd.Series(dtype=object)).dropna()]
    root = _common_root(jobs)
    if root is None:
        return table, samples
    relative = {job: os.path.relpath(job, root) for job in jobs}
    moved = table.assign(
        **{JOB_COLUMN: table[JOB_COLUMN].map(lambda j: relative.get(str(j), j))},
        **({"path": table["path"].map(lambda p: os.path.relpath(p, root))} if "path" in table else {}),
    )
    return moved, {relative.get(job, job): frame for job, frame in samples.items()}


def _common_root(jobs: list[str]) -> str | None:
    """The folder every job sits in (the parent when there is one job); None when they share none."""
    if not jobs or len({os.path.isabs(j) for j in jobs}) > 1:
        return None
    common = os.path.commonpath(jobs)
    if common in jobs:
        common = os.path.dirname(common)
    return common or None
