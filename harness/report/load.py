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
