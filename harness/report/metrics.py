"""What a report's rows and columns are, and how values print.

Rows are configurations: the config keys that differ between finished jobs, detected from the results, so
any sweep gets a sensible table without per-sweep code; a setting that does not apply to a row's storage
type (block size and double quantization of a 16-bit row) reads ``n/a``. Columns are numbers per job (the
main metric of each task, the resource costs), each with a header that carries its unit and which
direction is better, so tables and figure axes say what they show.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.quant.registry import STORAGE_SPECS
from harness.result import column, identity_columns

HIGHER, LOWER, UNRANKED = 1, -1, 0

# The paper reports acc_norm where a task has it; perplexity tasks report word perplexity.
_PREFERRED = ("acc_norm", "acc", "exact_match", "word_perplexity", "bits_per_byte", "byte_perplexity")
_PERCENT = frozenset({"acc", "acc_norm", "exact_match", "f1", "mc1", "mc2"})
_LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "loss", "error", "brier")
_MIB = 2**20

_CONFIG_UNITS = {
    "quant.blocksize": "weights/scale",
    "lora.r": "rank",
    "lora.alpha": "scale",
    "train.steps": "steps",
    "train.seq_len": "tokens",
    "train.batch_size": "sequences",
}
_DEFAULT_KEY = column("config", "model", "name_or_path")
STORAGE = column("config", "quant", "storage")
WEIGHT_ERROR = column("quant", "weight_error", "rel_rms")  # relative RMS error of the stored weights
BLOCKWISE_SETTINGS = (column("config", "quant", "blocksize"), column("config", "quant", "double_quant"))
NOT_APPLICABLE = "n/a"


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


def _applicable(table: pd.DataFrame, setting: str) -> pd.Series:
    """Whether ``setting`` applies to a job: block size and double quant only to blockwise (4-bit) types."""
    if setting not in BLOCKWISE_SETTINGS or STORAGE not in table:
        return pd.Series(True, index=table.index)
    return table[STORAGE].map(lambda s: s not in STORAGE_SPECS or STORAGE_SPECS[s].blockwise)


def config_labels(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Config columns as groupable labels; settings that do not apply to a job read ``n/a``."""
    labels = table.reindex(columns=columns).map(label)
    for name in columns:
        labels[name] = labels[name].where(_applicable(table, name), NOT_APPLICABLE)
    return labels


def varied_columns(ok: pd.DataFrame) -> list[str]:
    """Config columns whose (applicable) value differs between finished jobs: the columns of the jobs'
    identity (:func:`harness.result.identity_columns`), seeds left out."""
    candidates = [c for c in identity_columns(ok.columns) if c.rsplit(".", 1)[-1] != "seed"]
    labels = config_labels(ok, candidates)
    return [c for c in candidates if labels[c][labels[c] != NOT_APPLICABLE].nunique(dropna=False) > 1]


def row_keys(ok: pd.DataFrame) -> list[str]:
    """The varied config columns, or the model name when every job ran the same configuration."""
    return varied_columns(ok) or [_DEFAULT_KEY]


def key_header(column: str) -> str:
    """``config.quant.blocksize`` → ``quant.blocksize (weights/scale)``."""
    short = column.removeprefix("config.")
    unit = _CONFIG_UNITS.get(short)
    return f"{short} ({unit})" if unit else short


def variant_name(keys: list[str], values: tuple[Any, ...]) -> str:
    """One readable name per row from its key values: ``nf4 + double_quant · 64``.

    A true switch reads ``+ <name>`` and a false one is left out, like the paper's "NF4 + DQ"; settings that
    do not apply (``n/a``) are left out too.
    """
    name = ""
    for key, value in zip(keys, values, strict=True):
        if pd.api.types.is_bool(value) and value:
            name += f" + {key.rsplit('.', 1)[-1]}"
        elif not pd.api.types.is_bool(value) and value != NOT_APPLICABLE:
            name += f" · {show(value)}"
    return name.removeprefix(" · ").strip() or "default"


@dataclass(frozen=True)
class Row:
    """One configuration: its key values (labels), readable name and its jobs (index into ``ok``)."""

    values: tuple[Any, ...]
    name: str
    jobs: list[int]


def configurations(ok: pd.DataFrame, keys: list[str]) -> list[Row]:
    """Finished jobs grouped by the row keys, in sorted key order."""
    grouped = config_labels(ok, keys).groupby(keys, dropna=False, sort=True)
    return [Row(values, variant_name(keys, values), list(part.index)) for values, part in grouped]


@dataclass(frozen=True)
class Metric:
    """One reported number: its column header (unit and direction included) and how to rank and print it.

    ``source`` is the results-table column it is read from (``eval.arc_easy.acc_norm``) and ``scale`` the
    factor to its display unit (100 for accuracies shown in %); ``unit`` names a difference of it in words.
    """

    header: str
    role: str  # score, delta, bits, weight_error, adapter_params, memory, throughput, loss_start, loss_end
    direction: int
    digits: int
    source: str
    scale: float = 1.0
    unit: str = ""

    @property
    def name(self) -> str:
        """The header without unit and arrow: ``arc_easy acc_norm``."""
        return self.header.split(" (")[0]


def tasks(table: pd.DataFrame) -> list[str]:
    """Evaluated task names, in column order (from ``eval.<task>.<metric>``)."""
    prefix = column("eval") + "."
    names = [c.split(".")[1] for c in table.columns if c.startswith(prefix) and c.count(".") >= 2]
    return list(dict.fromkeys(names))


def main_metric(table: pd.DataFrame, task: str) -> str | None:
    """The metric that stands for ``task``: acc_norm, else acc, else word perplexity, else the first one."""
    prefix = column("eval", task) + "."
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
    counts = _unique(table, column("eval", task, "n"))
    return f"{unit}, n={counts[0]}" if len(counts) == 1 else unit


def _delta(table: pd.DataFrame, task: str, metric: str) -> pd.Series | None:
    """After − before training: ``eval_delta`` as written by the job, else computed from ``eval_before``."""
    written = _numeric(table, column("eval_delta", task, metric))
    if written is not None:
        return written
    before = _numeric(table, column("eval_before", task, metric))
    after = _numeric(table, column("eval", task, metric))
    return None if before is None or after is None else after - before


def _task_metrics(table: pd.DataFrame) -> Iterator[tuple[Metric, pd.Series | None]]:
    """Main metric of each task, and its change through training when the job evaluated before too."""
    for task in tasks(table):
        metric = main_metric(table, task)
        if metric is None:
            continue
        percent = metric in _PERCENT
        scale, digits, sign = (100.0 if percent else 1.0), (1 if percent else 2), direction(metric)
        source = column("eval", task, metric)
        score, delta = _numeric(table, source), _delta(table, task, metric)
        unit = _task_unit(table, task, metric)
        delta_unit = "pp" if percent else unit.split(",")[0]
        words = "points" if percent else ""
        header = f"{task} {metric} ({unit}){_arrow(sign)}"
        yield (
            Metric(header, "score", sign, digits, source, scale, words),
            None if score is None else score * scale,
        )
        header = f"Δ {task} {metric} ({delta_unit}, after−before){_arrow(sign)}"
        yield (
            Metric(header, "delta", sign, digits, column("eval_delta", task, metric), scale, words),
            None if delta is None else delta * scale,
        )


def _resource_metrics(table: pd.DataFrame) -> Iterator[tuple[Metric, pd.Series | None]]:
    """Storage cost and its weight error, memory, speed and the loss at the first and last step (the training
    numbers only for jobs that trained: ``train.steps=0`` records 0 tokens/s, which is no measurement)."""
    kind = "/".join(_unique(table, column("train", "peak_memory_kind"))) or "kind unknown"
    resources = [
        Metric("bits/param (bits) ↓", "bits", LOWER, 3, column("quant", "bits_per_param")),
        Metric("weight error (rel. RMS) ↓", "weight_error", LOWER, 4, WEIGHT_ERROR),
        Metric("adapter params (M)", "adapter_params", UNRANKED, 2, column("lora", "trainable_params"), 1e-6),
        Metric(
            f"peak memory (MiB, {kind}) ↓", "memory", LOWER, 1, column("train", "peak_memory_bytes"), 1 / _MIB
        ),
        Metric("throughput (tokens/s) ↑", "throughput", HIGHER, 1, column("train", "tokens_per_s")),
        Metric("loss start (nats)", "loss_start", UNRANKED, 3, column("train", "loss_start")),
        Metric("loss end (nats) ↓", "loss_end", LOWER, 3, column("train", "loss_end")),
    ]
    steps = _numeric(table, column("config", "train", "steps"))
    trained = None if steps is None else steps > 0
    for metric in resources:
        values = _numeric(table, metric.source)
        if values is not None and trained is not None and metric.source.startswith(column("train") + "."):
            values = values.where(trained)  # a job without training steps measured no training speed or peak
            values = values if values.notna().any() else None
        yield metric, None if values is None else values * metric.scale


def metric_frame(ok: pd.DataFrame) -> tuple[pd.DataFrame, list[Metric]]:
    """One column per reported number, named by its header and in its display unit, aligned with ``ok``."""
    present = [(m, v) for m, v in [*_task_metrics(ok), *_resource_metrics(ok)] if v is not None]
    frame = pd.DataFrame({m.header: v for m, v in present}, index=ok.index)
    return frame, [m for m, _ in present]
