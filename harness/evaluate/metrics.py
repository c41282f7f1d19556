"""lm-eval's results as the ``eval`` block of ``result.json``: ``{task: {metric, metric_stderr, n}}``."""

from __future__ import annotations

import math
from typing import Any

_NOT_METRICS = {"name", "alias", "sample_len", "sample_count"}


def metric_name(key: str) -> str:
    """``"acc_stderr,none"`` → ``"acc_stderr"``; other filters stay: ``"exact_match/strict-match"``."""
    metric, _, filt = key.partition(",")
    stem = metric.removesuffix("_stderr")
    return (stem if filt in ("", "none") else f"{stem}/{filt}") + metric[len(stem) :]


def _number(value: Any) -> float | None:
    """A finite float, or ``None`` for lm-eval's "N/A" and NaN stderrs (left out of the result)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def task_metrics(results: dict[str, Any]) -> dict[str, dict[str, float | int]]:
    """Every task and group in ``simple_evaluate``'s output (MMLU: each subject and the macro average)."""
    out: dict[str, dict[str, float | int]] = {}
    for task, entry in results["results"].items():
        metrics: dict[str, float | int] = {}
        for key, value in entry.items():
            if key in _NOT_METRICS or (number := _number(value)) is None:
                continue
            metrics[metric_name(key)] = number
        metrics["n"] = int(entry["sample_len"])
        out[task] = metrics
    return out


def metric_delta(after: dict[str, dict], before: dict[str, dict]) -> dict[str, dict[str, float]]:
    """``after - before`` for each metric both runs have (stderrs and ``n`` are not metrics)."""
    return {
        task: {
            metric: float(value) - float(before[task][metric])
            for metric, value in scores.items()
            if metric != "n" and not metric.endswith("_stderr") and metric in before[task]
        }
        for task, scores in after.items()
        if task in before
    }
