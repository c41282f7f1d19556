"""The paired comparisons as pictures: a forest plot against the reference and a row × column matrix.

Both read :class:`~harness.report.comparisons.Statistics` (every configuration against the reference, then
every other pair) and the comparisons table it writes, so a column added there (a Benjamini–Hochberg
``q_value``) shows up here without code of its own. Differences are in each metric's display unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from seaborn.utils import relative_luminance

from harness.report.comparisons import LOSS, Statistics
from harness.report.metrics import HIGHER, LOWER, Metric
from harness.report.style import display, panels, storage_colour

LOSS_METRIC = Metric("training loss per step after warm-up (nats) ↓", "loss", LOWER, 3, LOSS, unit="nats")
_ANNOTATED_ROWS = 8  # up to this many configurations a matrix cell prints its number, beyond only its mark
_CELL_IN = {True: 0.62, False: 0.34}  # matrix cell size (inches), with and without numbers
_NAME_IN_PER_CHAR = 0.075  # width of one tick-label character at the report's font size


@dataclass(frozen=True)
class Pair:
    """One comparison in display units, oriented row − column, with its significance mark."""

    delta: float
    low: float
    high: float
    significant: bool
    mark: str


def compared_metrics(stats: Statistics, metrics: list[Metric]) -> list[Metric]:
    """The task scores and the training loss that at least one pair of configurations was compared on."""
    sources = {c.source for c in stats.comparisons}
    return [m for m in [*(m for m in metrics if m.role == "score"), LOSS_METRIC] if m.source in sources]


def _marks(stats: Statistics) -> dict[tuple[str, str, str, str], str]:
    """``*`` per significant row of the comparisons table; ``**`` when its ``q_value`` (if the table has
    one: Benjamini–Hochberg over the table's rows) is below α too."""
    frame = stats.frame()
    alpha = stats.bootstrap.alpha
    marks = {}
    for row in frame.itertuples(index=False):
        q = getattr(row, "q_value", math.nan)
        mark = ("**" if q < alpha else "*") if bool(row.significant) else ""
        marks[row.task, row.metric, row.config, row.reference] = mark
    return marks


def pairs(stats: Statistics, metric: Metric) -> dict[tuple[int, int], Pair]:
    """Every compared pair of rows on ``metric``, both ways round (row − column), in display units."""
    marks, names, scale = _marks(stats), [r.name for r in stats.rows], metric.scale
    out = {}
    for c in [c for c in stats.comparisons if c.source == metric.source]:
        e = c.estimate
        mark = marks.get((c.task, c.metric, names[c.config], names[c.reference]), "")
        out[c.config, c.reference] = Pair(
            e.delta * scale, e.ci_low * scale, e.ci_high * scale, e.significant, mark
        )
        out[c.reference, c.config] = Pair(
            -e.delta * scale, -e.ci_high * scale, -e.ci_low * scale, e.significant, mark
        )
    return out


def _unit(metric: Metric) -> str:
    """The unit of a difference: the metric's word for it, else the first part of its header's unit."""
    if metric.unit:
        return metric.unit
    inside = metric.header.split(" (", 1)[1].rsplit(")", 1)[0] if " (" in metric.header else ""
    return inside.split(",")[0]


def _better(metric: Metric) -> str:
    return "higher is better" if metric.direction == HIGHER else "lower is better"


def _forest_panel(ax: Axes, stats: Statistics, metric: Metric, storages: dict[str, str]) -> None:
    reference = stats.reference
    found = pairs(stats, metric)
    rows = [i for i in range(len(stats.rows)) if i != reference and (i, reference) in found]
    for y, i in enumerate(rows):
        pair, name = found[i, reference], stats.rows[i].name
        colour = storage_colour(storages[name]) if name in storages else "C0"
        if math.isfinite(pair.low) and math.isfinite(pair.high):
            ax.plot([pair.low, pair.high], [y, y], color=colour, lw=2, solid_capstyle="butt")
        face = colour if pair.significant else "white"
        ax.plot([pair.delta], [y], "o", color=colour, markerfacecolor=face, markersize=7, zorder=3)
    ax.axvline(0, color="black", lw=0.8, ls="--")
    ax.set_yticks(range(len(rows)), [stats.rows[i].name for i in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_title(display(metric.name), fontsize=10)
    ax.set_xlabel(f"row − {stats.rows[reference].name} ({_unit(metric)}; {_better(metric)})")


def _name_width(stats: Statistics) -> float:
    return _NAME_IN_PER_CHAR * max(len(r.name) for r in stats.rows)


def forest_figure(stats: Statistics, metrics: list[Metric], storages: dict[str, str]) -> Figure | None:
    """Each configuration's paired difference from the reference with its 95 % CI, one panel per metric;
    filled dot: significant, hollow: not; colour: the configuration's storage type (``storages``: row
    name → storage)."""
    against = [
        m for m in compared_metrics(stats, metrics) if (stats.reference in {k[1] for k in pairs(stats, m)})
    ]
    shown = against
    if not shown:
        return None
    height = max(2.2, 0.32 * (len(stats.rows) - 1) + 1.3)
    fig, axes = panels(len(shown), 3.2 + _name_width(stats), height, columns=2)
    for ax, metric in zip(axes, shown, strict=True):
        _forest_panel(ax, stats, metric, storages)
    return fig


def _matrix(stats: Statistics, metric: Metric) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names, the row − column differences (NaN where not compared) and their cell texts."""
    found = pairs(stats, metric)
    kept = sorted({i for i, _ in found})
    annotated = len(kept) <= _ANNOTATED_ROWS
    deltas = np.full((len(kept), len(kept)), np.nan)
    texts = np.full((len(kept), len(kept)), "", dtype=object)
    for a, i in enumerate(kept):
        for b, j in enumerate(kept):
            if (i, j) in found:
                pair = found[i, j]
                deltas[a, b] = pair.delta
                number = f"{pair.delta:.{metric.digits}f}".replace("-", "−") if annotated else ""
                texts[a, b] = number + pair.mark
    return [stats.rows[i].name for i in kept], deltas, texts


def _heatmap(ax: Axes, deltas: np.ndarray, texts: np.ndarray, cmap: str, largest: float, label: str) -> None:
    """seaborn's heatmap without the two whole-figure draws it makes to turn tick labels that collide (this
    figure sets their rotation itself): NaN cells left blank, each cell's text in a colour that reads on
    it, a colour bar."""
    cells = np.ma.masked_invalid(deltas)
    mesh = ax.pcolormesh(cells, cmap=cmap, vmin=-largest, vmax=largest, edgecolors="white", linewidth=0.5)
    ax.set(xlim=(0, deltas.shape[1]), ylim=(deltas.shape[0], 0))  # the first row on top
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.figure.colorbar(mesh, ax=ax, label=label, shrink=0.8).outline.set_linewidth(0)
    blank = np.ma.getmaskarray(cells)
    for (row, column), text in np.ndenumerate(texts):
        if text and not blank[row, column]:
            light = relative_luminance(mesh.cmap(mesh.norm(deltas[row, column]))) > 0.408
            colour = ".15" if light else "w"
            ax.text(column + 0.5, row + 0.5, text, color=colour, ha="center", va="center", fontsize=7)


def _matrix_panel(ax: Axes, stats: Statistics, metric: Metric) -> None:
    names, deltas, texts = _matrix(stats, metric)
    largest = np.nanmax(np.abs(deltas)) if np.isfinite(deltas).any() else 1.0
    # Blue where the row is better than the column, red where worse, whichever direction is better.
    cmap = "RdBu" if metric.direction == HIGHER else "RdBu_r"
    _heatmap(ax, deltas, texts, cmap, largest, f"row − column ({_unit(metric)})")
    ax.grid(False)
    ax.set_xticks(np.arange(len(names)) + 0.5, names, rotation=90)
    ax.set_yticks(np.arange(len(names)) + 0.5, names, rotation=0, va="center")
    ax.set_title(f"{display(metric.name)} ({_better(metric)})", fontsize=10)


def matrix_figure(stats: Statistics, metrics: list[Metric]) -> Figure | None:
    """Per metric, every pair's paired difference row − column, coloured by which is better, with marks."""
    shown = [m for m in compared_metrics(stats, metrics) if len(pairs(stats, m)) >= 2]
    if not shown:
        return None
    count = max(len(_matrix(stats, m)[0]) for m in shown)
    side = _CELL_IN[count <= _ANNOTATED_ROWS] * count + _name_width(stats)
    columns = 3 if count <= 4 else 2 if count <= _ANNOTATED_ROWS else 1
    fig, axes = panels(len(shown), side + 1.4, side + 0.6, columns)
    for ax, metric in zip(axes, shown, strict=True):
        _matrix_panel(ax, stats, metric)
    return fig
