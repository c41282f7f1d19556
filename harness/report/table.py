"""Load any number of result directories into one pandas table, one row per job."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from harness.result import ResultError, find_results, flatten, read_result


@dataclass
class LoadedResults:
    """The jobs that could be read, and one message per file that could not."""

    table: pd.DataFrame
    errors: list[str] = field(default_factory=list)


def load_results(paths: Iterable[str | os.PathLike]) -> LoadedResults:
    """Read every ``result.json`` under ``paths`` (failed jobs included); unreadable files become errors.

    Columns are the flattened record with dotted names (``config.quant.storage``, ``eval.arc_easy_local.acc``);
    ``path`` names the file each row came from.
    """
    rows: list[dict] = []
    errors: list[str] = []
    for root in paths:
        if not os.path.exists(root):
            errors.append(f"{root}: no such file or directory")
            continue
        for path in find_results(root):
            try:
                record = read_result(path)
            except ResultError as exc:
                errors.append(str(exc))
                continue
            rows.append({"path": str(path), **flatten(record)})
    return LoadedResults(pd.DataFrame(rows), errors)
