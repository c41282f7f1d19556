"""Paper-style results table: one row per configuration the sweep varied, mean ± std over seeds.

The row keys are detected from the config columns that differ between finished jobs, so any sweep gets a
sensible table without per-sweep code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.report.metrics import HIGHER, LOWER, Metric, label, metric_frame, show
from harness.report.render import Cell, Table

# Config keys that differ between jobs without being what a sweep compares (any key named ``seed`` too).
_NOT_VARIATIONS = frozenset(
    {
        "config.output_dir",
        "config.fault",
        "config.data.data_dir",
        "config.model.cache_dir",
        "config.eval.include_path",
    }
)
_CONFIG_UNITS = {
    "quant.blocksize": "weights/scale",
    "lora.r": "rank",
    "lora.alpha": "scale",
    "train.steps": "steps",
    "train.seq_len": "tokens",
    "train.batch_size": "sequences",
}
_DEFAULT_KEY = "config.model.name_or_path"


@dataclass(frozen=True)
class Summary:
    """The results table and, per row, the job directories its numbers come from."""

    table: Table
    sources: list[str]
    keys: list[str]


def varied_columns(ok: pd.DataFrame) -> list[str]:
    """Config columns whose value differs between finished jobs, leaving out seeds and paths."""
    candidates = [
        c
        for c in ok.columns
        if c.startswith("config.") and c not in _NOT_VARIATIONS and c.rsplit(".", 1)[-1] != "seed"
    ]
    return [c for c in candidates if ok[c].map(label).nunique(dropna=False) > 1]


def row_keys(ok: pd.DataFrame) -> list[str]:
    """The varied config columns, or the model name when every job ran the same configuration."""
    return varied_columns(ok) or [_DEFAULT_KEY]


def key_header(column: str) -> str:
    """``config.quant.blocksize`` → ``quant.blocksize (weights/scale)``."""
    short = column.removeprefix("config.")
    unit = _CONFIG_UNITS.get(short)
    return f"{short} ({unit})" if unit else short


def key_frame(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The row-key columns of ``table`` as groupable labels (missing columns read as missing values)."""
    return table.reindex(columns=keys).map(label)


def variant_labels(keys: pd.DataFrame) -> pd.Series:
    """One readable name per row from its key values (``nf4 · 64 · 16``), for sources and legends."""
    return keys.apply(lambda row: " · ".join(show(v) for v in row), axis=1).astype(str)


def _format(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _best_rows(means: pd.Series, metric: Metric) -> set[int]:
    """Rows holding the best mean as printed (ties share it); none when the rows do not differ."""
    shown = means.round(metric.digits).dropna()
    if metric.direction not in (HIGHER, LOWER) or shown.nunique() < 2:
        return set()
    best = shown.max() if metric.direction == HIGHER else shown.min()
    return set(shown.index[shown == best])


def _metric_cells(means: pd.DataFrame, stds: pd.DataFrame, metrics: list[Metric]) -> list[list[Cell]]:
    """Per row, ``mean ± std`` of every metric, the best of each column marked."""
    best = {m.header: _best_rows(means[m.header], m) for m in metrics}
    return [
        [
            Cell(_format(means.at[i, m.header], stds.at[i, m.header], m.digits), best=i in best[m.header])
            for m in metrics
        ]
        for i in means.index
    ]


def summarize(ok: pd.DataFrame) -> Summary:
    """Group finished jobs by what the sweep varied and report mean ± std (sample std, n seeds) per group."""
    keys = row_keys(ok)
    values, metrics = metric_frame(ok)
    headers = [m.header for m in metrics]
    grouped = pd.concat([key_frame(ok, keys), values, ok[["job_dir"]]], axis=1).groupby(
        keys, dropna=False, sort=True
    )
    groups = grouped.size().reset_index(name="n")
    means = grouped[headers].mean().reset_index(drop=True)
    stds = grouped[headers].std().reset_index(drop=True)
    rows = [
        [*(Cell(show(groups.at[i, k])) for k in keys), Cell(str(groups.at[i, "n"])), *cells]
        for i, cells in enumerate(_metric_cells(means, stds, metrics))
    ]
    dirs = grouped["job_dir"].agg(list).reset_index(drop=True)
    sources = [
        f"{name}: {', '.join(jobs)}" for name, jobs in zip(variant_labels(groups[keys]), dirs, strict=True)
    ]
    table = Table([*(key_header(k) for k in keys), "seeds (n)", *headers], rows)
    return Summary(table, sources, keys)
