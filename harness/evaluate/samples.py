"""lm-eval's own per-document output (``log_samples=True``) as a tidy frame; nothing is scored again.

Each logged sample carries the values its task's ``process_results`` returned: a number for mean-aggregated
metrics, ``(loglikelihood, words_or_bytes)`` for perplexity metrics, ``(gold, probabilities)`` for the Brier
score. :func:`sample_frame` keeps what a paired comparison needs, in the layout of
:mod:`harness.stats.samples` (without ``phase``: the caller knows whether this was before or after training).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from lm_eval.api.registry import get_metric_aggregation

from harness.evaluate.metrics import metric_name
from harness.stats.samples import COLUMNS

FRAME_COLUMNS = [c for c in COLUMNS if c != "phase"]
_HASH_DIGITS = 16
_WEIGHTED = ("weighted_perplexity", "bits_per_byte")


def _brier(value: Any) -> float:
    """One document's Brier score, Σ(p − onehot(gold))²; lm-eval's task value is the mean of these."""
    gold, probabilities = value
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return float(np.sum((probabilities - np.eye(probabilities.size)[gold]) ** 2))


def _row_value(aggregation: str, value: Any) -> tuple[str, float, float] | None:
    """(stored aggregation, value, weight) of one logged metric; None for corpus-level metrics (f1, bleu…)."""
    if aggregation == "mean" and isinstance(value, int | float | np.number):
        return "mean", float(value), 1.0
    if aggregation in _WEIGHTED:
        loglikelihood, count = value
        return aggregation, float(loglikelihood), float(count)
    if aggregation == "brier_score":
        return "mean", _brier(value), 1.0
    return None


def _aggregations(config: Mapping[str, Any]) -> dict[str, str]:
    """Metric → aggregation name from the task's ``metric_list``, else lm-eval's registered default."""
    names = {}
    for entry in config.get("metric_list") or []:
        aggregation = entry.get("aggregation")
        if isinstance(aggregation, str):
            names[entry["metric"]] = aggregation
    return names


def _default_aggregation(metric: str) -> str | None:
    try:
        return getattr(get_metric_aggregation(metric), "__name__", None)
    except (KeyError, AttributeError):
        return None


def sample_frame(results: Mapping[str, Any]) -> pd.DataFrame:
    """``simple_evaluate(..., log_samples=True)`` output → rows ``task, doc_id, doc_hash, metric, aggregation,
    value, weight`` (see :mod:`harness.stats.samples`)."""
    rows = []
    for task, samples in results.get("samples", {}).items():
        declared = _aggregations(results.get("configs", {}).get(task, {}))
        for sample in samples:
            for metric in sample["metrics"]:
                aggregation = declared.get(metric) or _default_aggregation(metric)
                stored = _row_value(aggregation, sample[metric]) if aggregation else None
                if stored is None:
                    continue
                rows.append(
                    (
                        task,
                        int(sample["doc_id"]),
                        str(sample["doc_hash"])[:_HASH_DIGITS],
                        metric_name(f"{metric},{sample['filter']}"),
                        *stored,
                    )
                )
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)
