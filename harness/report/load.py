"""Load any number of result directories into one pandas table, one row per job."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from harness.result import ResultError, find_results, flatten, read_result
from harness.stats.samples import ACCURACY_METRICS, PHASE_PREFIX, aggregate, pool_tasks

# write_result stores NaN/inf as these strings (JSON has no such numbers); only measured fields get them back.
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_MEASURED_PREFIXES = ("eval", "train.", "quant.", "lora.", "timings_s.")


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


class PoolError(ValueError):
    """A ``--pool`` that names no tasks, too few, or tasks no job scored."""


def pool_samples(
    table: pd.DataFrame, samples: dict[str, pd.DataFrame], pools: dict[str, list[str]]
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Each pool ``name -> tasks`` as one more task of every job that scored all of them
    (:func:`harness.stats.samples.pool_tasks`): its rows join the job's samples, and its accuracy and document
    count join the table as ``eval.<name>.acc`` / ``.n`` (``eval_before.`` too when it was scored before)."""
    if not pools:
        return table, samples
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
    return table.merge(values, on="job_dir", how="left"), samples


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
