"""One side of a comparison: results tables or sweep directories, and the config key of each job.

A job is identified by the ``config.*`` columns of its identity (:func:`harness.result.identity_columns`:
:func:`harness.result.job_identity`, the one definition of "the same job", applied to the table's config
columns; machine-local paths and retired keys are not part of it). Columns present on only one side, such
as a config field added after the baseline was recorded, are left out of the key and reported.

Each side also carries its jobs' per-sample results where they exist (``samples.parquet`` in each job
directory, or beside a results table; layout in :mod:`harness.stats.samples`).
"""

from __future__ import annotations

import ast
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.compare.errors import CompareInputError
from harness.report.load import load_results
from harness.result import ADDED_KEYS, CONFIG_PREFIX, identity_columns
from harness.stats.samples import SamplesError, load_samples

TABLE_READERS: dict[str, Callable[[Path], pd.DataFrame]] = {".csv": pd.read_csv, ".parquet": pd.read_parquet}

JobKey = tuple[str, ...]


@dataclass
class Side:
    """The jobs of one side, one row each, and the per-sample results of those that have them (by job_dir)."""

    table: pd.DataFrame
    samples: dict[str, pd.DataFrame]


def load_side(paths: Sequence[str | os.PathLike], side: str) -> Side:
    """All jobs of one side; unreadable or empty input raises, naming ``side`` and the path."""
    if not paths:
        raise CompareInputError(f"{side}: no input given")
    tables, samples = [], {}
    for path in map(Path, paths):
        table = _load_path(path, side)
        try:
            samples.update(load_samples(table, path))
        except SamplesError as exc:
            raise CompareInputError(f"{side}: {exc}") from exc
        tables.append(table)
    return Side(pd.concat(tables, ignore_index=True), samples)


def _load_path(path: Path, side: str) -> pd.DataFrame:
    if not path.exists():
        raise CompareInputError(f"{side} {path}: no such file or directory")
    if path.is_file() and path.suffix in TABLE_READERS:
        return _read_table(path, side)
    loaded = load_results([path])
    if loaded.errors:
        raise CompareInputError(f"{side} {path}: unreadable results:\n  " + "\n  ".join(loaded.errors))
    if loaded.table.empty:
        raise CompareInputError(
            f"{side} {path}: no result.json found (pass a sweep directory, a result.json, or a results "
            f"table: {' / '.join(TABLE_READERS)})"
        )
    return loaded.table


def _read_table(path: Path, side: str) -> pd.DataFrame:
    """A table written by qlora-report; it must hold jobs, each with a status and config columns."""
    try:
        table = TABLE_READERS[path.suffix](path)
    except (OSError, ValueError) as exc:
        raise CompareInputError(f"{side} {path}: not a readable results table ({exc})") from exc
    if table.empty or "status" not in table or not any(c.startswith("config.") for c in table.columns):
        raise CompareInputError(f"{side} {path}: no jobs (a results table needs rows, 'status' and config.*)")
    # a table written before a key existed reads as read_result reads such a result.json
    missing = {CONFIG_PREFIX + k: v for k, v in ADDED_KEYS.items() if CONFIG_PREFIX + k not in table}
    return pd.concat([table, pd.DataFrame(missing, index=table.index)], axis=1) if missing else table


def key_columns(baseline: pd.DataFrame, current: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(columns both sides are keyed by, identity columns left out because only one side has them)."""
    base, cur = set(identity_columns(baseline.columns)), set(identity_columns(current.columns))
    return sorted(base & cur), sorted(base ^ cur)


def job_keys(table: pd.DataFrame, columns: Sequence[str]) -> list[JobKey]:
    """One key per row, spelled the same whether the row came from result.json, CSV or parquet."""
    return [tuple(canonical(value) for value in row) for row in table[list(columns)].itertuples(index=False)]


def job_labels(keys: Sequence[JobKey], columns: Sequence[str]) -> dict[JobKey, str]:
    """Short readable names: only the key columns whose values differ between jobs (``quant.storage=nf4``)."""
    varying = [i for i in range(len(columns)) if len({key[i] for key in keys}) > 1]
    if not varying and "config.model.name_or_path" in columns:
        varying = [list(columns).index("config.model.name_or_path")]
    return {
        key: " ".join(f"{columns[i].removeprefix('config.')}={key[i]}" for i in varying) or "job"
        for key in keys
    }


def canonical(value: Any) -> str:
    """One spelling per config value: table files turn lists into text, ints into floats and None into NaN."""
    if isinstance(value, np.ndarray | list | tuple):
        return json.dumps([canonical(item) for item in value])
    if isinstance(value, dict):
        return json.dumps({str(k): canonical(v) for k, v in sorted(value.items())})
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        parsed = _parse_text(value)
        return value if parsed is value else canonical(parsed)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value)


def _parse_text(text: str) -> Any:
    """A list, dict, quoted string or number that a table file wrote as text; other text is returned as is."""
    if text.startswith(("[", "{", '"')):
        for parse in (json.loads, ast.literal_eval):
            try:
                return parse(text)
            except (ValueError, TypeError, SyntaxError):
                continue
        return text
    try:
        return float(text)
    except ValueError:
        return text
