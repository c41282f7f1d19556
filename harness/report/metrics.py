"""The numbers a report shows per job (the main metric of each task, the resource costs) and how values print.

Each number gets a header that carries its unit and which direction is better, so tables and figure axes
say what they show without per-sweep code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd

HIGHER, LOWER, UNRANKED = 1, -1, 0

# The paper reports acc_norm where a task has it; perplexity tasks report word perplexity.
_PREFERRED = ("acc_norm", "acc", "exact_match", "word_perplexity", "bits_per_byte", "byte_perplexity")
_PERCENT = frozenset({"acc", "acc_norm", "exact_match", "f1", "mc1", "mc2"})
_LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "loss", "error")
_MIB = 2**20


def label(value: Any) -> Any:
    """A hashable, readable value for grouping: lists become ``a,b``, dicts JSON; scalars stay as they are."""
    if isinstance(value, list | tuple):
        return ",".join(str(label(v)) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def show(value: Any) -> str:
    """A value as printed: missing is an em dash, a whole float (an int column with gaps) an int."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


@dataclass(frozen=True)
class Metric:
    """One reported number: its column header (unit and direction included) and how to rank and print it."""

    header: str
    role: str  # score | delta | bits | memory | throughput | loss_start | loss_end
    direction: int
    digits: int


def tasks(table: pd.DataFrame) -> list[str]:
    """Evaluated task names, in column order (from ``eval.<task>.<metric>``)."""
    names = [c.split(".")[1] for c in table.columns if c.startswith("eval.") and c.count(".") >= 2]
    return list(dict.fromkeys(names))


def main_metric(table: pd.DataFrame, task: str) -> str | None:
    """The metric that stands for ``task``: acc_norm, else acc, else word perplexity, else the first one."""
    prefix = f"eval.{task}."
    metrics = [c.removeprefix(prefix) for c in table.columns if c.startswith(prefix)]
    metrics = [m for m in metrics if m != "n" and not m.endswith("_stderr") and "." not in m]
    preferred = [m for m in _PREFERRED if m in metrics]
    return (preferred or metrics or [None])[0]


def direction(metric: str) -> int:
    """Whether a higher or a lower value of ``metric`` is better."""
    return LOWER if any(word in metric for word in _LOWER_IS_BETTER) else HIGHER


def _arrow(direction_: int) -> str:
    return {HIGHER: " ↑", LOWER: " ↓"}.get(direction_, "")


def _numeric(table: pd.DataFrame, column: str) -> pd.Series | None:
    """The column as floats, or None when the table has no value for it."""
    if column not in table:
        return None
    values = pd.to_numeric(table[column], errors="coerce")
    return values if values.notna().any() else None


def _unique(table: pd.DataFrame, column: str) -> list[str]:
    if column not in table:
        return []
    return sorted({show(v) for v in table[column].dropna()})


def _task_unit(table: pd.DataFrame, task: str, metric: str) -> str:
    """``%`` for accuracies, ``ppl`` for perplexities, plus the number of examples when all jobs agree."""
    unit = "%" if metric in _PERCENT else "ppl" if "perplexity" in metric else metric.replace("_", " ")
    counts = _unique(table, f"eval.{task}.n")
    return f"{unit}, n={counts[0]}" if len(counts) == 1 else unit


def _delta(table: pd.DataFrame, task: str, metric: str) -> pd.Series | None:
    """After − before training: ``eval_delta`` as written by the job, else computed from ``eval_before``."""
    written = _numeric(table, f"eval_delta.{task}.{metric}")
    if written is not None:
        return written
    before = _numeric(table, f"eval_before.{task}.{metric}")
    after = _numeric(table, f"eval.{task}.{metric}")
    return None if before is None or after is None else after - before


def _task_metrics(table: pd.DataFrame) -> Iterator[tuple[Metric, pd.Series | None]]:
    """Main metric of each task, and its change through training when the job evaluated before too."""
    for task in tasks(table):
        metric = main_metric(table, task)
        if metric is None:
            continue
        percent = metric in _PERCENT
        scale, digits, sign = (100.0 if percent else 1.0), (1 if percent else 2), direction(metric)
        score, delta = _numeric(table, f"eval.{task}.{metric}"), _delta(table, task, metric)
        unit = _task_unit(table, task, metric)
        delta_unit = "pp" if percent else unit.split(",")[0]
        yield (
            Metric(f"{task} {metric} ({unit}){_arrow(sign)}", "score", sign, digits),
            None if score is None else score * scale,
        )
        yield (
            Metric(f"Δ {task} {metric} ({delta_unit}, after−before){_arrow(sign)}", "delta", sign, digits),
            None if delta is None else delta * scale,
        )


def _resource_metrics(table: pd.DataFrame) -> Iterator[tuple[Metric, pd.Series | None]]:
    """Storage cost, memory, speed and the loss at the first and last step."""
    memory = _numeric(table, "train.peak_memory_bytes")
    kind = "/".join(_unique(table, "train.peak_memory_kind")) or "kind unknown"
    yield Metric("bits/param (bits) ↓", "bits", LOWER, 3), _numeric(table, "quant.bits_per_param")
    yield (
        Metric(f"peak memory (MiB, {kind}) ↓", "memory", LOWER, 1),
        None if memory is None else memory / _MIB,
    )
    yield Metric("throughput (tokens/s) ↑", "throughput", HIGHER, 1), _numeric(table, "train.tokens_per_s")
    yield Metric("loss start (nats)", "loss_start", UNRANKED, 3), _numeric(table, "train.loss_start")
    yield Metric("loss end (nats) ↓", "loss_end", LOWER, 3), _numeric(table, "train.loss_end")


def metric_frame(ok: pd.DataFrame) -> tuple[pd.DataFrame, list[Metric]]:
    """One column per reported number, named by its header and in its display unit, aligned with ``ok``."""
    present = [(m, v) for m, v in [*_task_metrics(ok), *_resource_metrics(ok)] if v is not None]
    frame = pd.DataFrame({m.header: v for m, v in present}, index=ok.index)
    return frame, [m for m, _ in present]
