"""The comparison as Markdown (for CI logs and job summaries) and as JSON (for tools)."""

from __future__ import annotations

import json
import math
from typing import Any

from harness.compare.compare import Comparison, Row

COLUMNS = ("job", "metric", "baseline", "current", "delta", "CI", "p", "allowed", "verdict", "note")


def to_markdown(comparison: Comparison) -> str:
    """A verdict line, what was matched, the regressions by name, then one table row per verdict."""
    summary = comparison.summary()
    regressions = comparison.regressions
    lines = [
        f"## qlora-compare: {summary['verdict']}" + (f" ({len(regressions)} failing)" if regressions else ""),
        "",
        f"baseline: {comparison.jobs_baseline} jobs, current: {comparison.jobs_current} jobs, "
        f"matched on {len(comparison.key_columns)} config columns; "
        + ", ".join(f"{n} {v}" for v, n in summary["counts"].items()),
    ]
    if comparison.ignored_key_columns:
        lines.append(
            f"config columns on one side only, not used to match: {', '.join(comparison.ignored_key_columns)}"
        )
    bootstrap = comparison.bootstrap
    lines.append(
        f"{summary['paired_rows']} metric(s) judged on the paired CI of current − baseline over shared "
        f"documents ({bootstrap.confidence:.0%} paired bootstrap, {bootstrap.resamples} resamples, seed "
        f"{bootstrap.seed}; p: exact McNemar for 0/1 scores, else bootstrap); the others on tolerances alone"
    )
    lines += [f"- {note}" for note in comparison.notes]
    lines += [f"- {row.verdict}: `{row.job}` {row.metric} {row.note}".rstrip() for row in regressions]
    lines += ["", _table_row(COLUMNS), _table_row(["---"] * len(COLUMNS))]
    lines += [_table_row(_cells(row)) for row in comparison.rows]
    return "\n".join(lines) + "\n"


def to_json(comparison: Comparison) -> str:
    """Rows and summary; infinities become strings so the file stays valid JSON."""
    return json.dumps(_finite(comparison.to_dict()), indent=2) + "\n"


def _cells(row: Row) -> list[str]:
    delta = _fmt(row.delta, signed=True)
    if row.delta is not None and isinstance(row.baseline, float) and row.baseline:
        delta += f" ({row.delta / abs(row.baseline):+.1%})"
    return [
        row.job,
        row.metric,
        _fmt(row.baseline),
        _fmt(row.current),
        delta,
        "–" if row.ci_low is None else f"[{_fmt(row.ci_low, signed=True)}, {_fmt(row.ci_high, signed=True)}]",
        _p(row.p_value),
        _fmt(row.allowed),
        row.verdict,
        row.note,
    ]


def _fmt(value: float | str | None, signed: bool = False) -> str:
    """Counts and bytes (1e4 to 1e15) with thousands separators, everything else to five significant digits
    (an untrained model's word perplexity can be 1e80)."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    sign = "+" if signed else ""
    return f"{value:{sign},.0f}" if 1e4 <= abs(value) < 1e15 else f"{value:{sign}.5g}"


def _p(p_value: float | None) -> str:
    if p_value is None:
        return "–"
    return "< 0.001" if p_value < 0.001 else f"{p_value:.3f}"


def _table_row(cells: Any) -> str:
    return "| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
