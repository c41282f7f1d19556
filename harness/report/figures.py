"""Seaborn/matplotlib figures of a sweep, each drawn only when the results hold what it needs.

Bars and lines are configuration means with their 95 % interval (the table's: t over seeds, bootstrap over
documents, or lm-eval's stderr), and every caption says so. Legends sit outside the axes, right of the
panels, so no legend hides data. Figures are built on ``matplotlib.figure.Figure`` (Agg canvas, no
pyplot state), saved as PNG and SVG.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator, ScalarFormatter

from harness.report.comparisons import Statistics
from harness.report.legibility import fit_text, place_labels
from harness.report.metrics import HIGHER, Metric, config_labels, metric_frame, row_keys, show
from harness.report.pairwise import forest_figure, matrix_figure
from harness.report.style import display, panels, storage_colour

STORAGE, BLOCKSIZE, DOUBLE_QUANT = (
    "config.quant.storage",
    "config.quant.blocksize",
    "config.quant.double_quant",
)
RANK, TARGETS = "config.lora.r", "config.lora.targets"
_CATEGORIES = (STORAGE, DOUBLE_QUANT, TARGETS)
_AXIS_NAMES = {
    STORAGE: "storage type",
    BLOCKSIZE: "block size (weights per scale, log₂ axis)",
    DOUBLE_QUANT: "double quant",
    RANK: "LoRA rank r (log₂ axis)",
    TARGETS: "LoRA targets",
}
_LOSS = "training loss (nats)"
_HATCH = "///"


@dataclass(frozen=True)
class PlotData:
    """Finished jobs and configuration rows as tidy frames for plotting.

    ``frame`` has one row per job (config labels, ``variant``, ``job`` dir, metric headers); ``rows`` one per
    configuration (its key labels, ``variant``, the mean of each metric header and its interval as
    ``<header> low`` / ``<header> high``).
    """

    frame: pd.DataFrame
    rows: pd.DataFrame
    keys: list[str]  # the config columns the jobs differ in (``variant`` joins their values)
    metrics: list[Metric]
    losses: pd.DataFrame  # job, variant, step, training loss
    stats: Statistics

    def varies(self, column: str | None) -> bool:
        return column is not None and column in self.rows and self.rows[column].nunique() > 1

    def hue(self, column: str) -> str | None:
        """``column`` as colour when it varies; one colour otherwise."""
        return column if self.varies(column) else None

    def role(self, role: str) -> list[Metric]:
        return [m for m in self.metrics if m.role == role and self.rows[m.header].notna().any()]

    def held_fixed(self, free: Sequence[str | None]) -> tuple[pd.DataFrame, str]:
        """Rows whose varied settings other than ``free`` sit at their most common value, and which those are.

        Without this, a block-size line would average over ranks too.
        """
        rows, held = self.rows, []
        for key in [k for k in self.keys if k not in free and self.varies(k)]:
            common = rows[key].mode()
            if common.empty:
                continue
            rows = rows[rows[key] == common.iloc[0]]
            held.append(f"{key.removeprefix('config.')} = {show(common.iloc[0])}")
        return rows, ", ".join(held)

    def jobs_of(self, variants: pd.Series) -> pd.DataFrame:
        return self.frame[self.frame["variant"].isin(set(variants))]


@dataclass(frozen=True)
class SavedFigure:
    """A figure as saved; ``problems`` are the legibility problems found in it (none, normally)."""

    name: str
    png: Path
    svg: Path
    caption: str
    problems: list[str]


def _low(metric: Metric) -> str:
    return f"{metric.header} low"


def _high(metric: Metric) -> str:
    return f"{metric.header} high"


def _loss_rows(ok: pd.DataFrame, variants: pd.Series) -> pd.DataFrame:
    """One row per (job, step) from the ``train.loss`` lists."""
    rows = [
        {"job": job, "variant": variant, "step": step, _LOSS: float(loss)}
        for job, variant, losses in zip(ok["job_dir"], variants, ok.get("train.loss", []), strict=False)
        if isinstance(losses, list)
        for step, loss in enumerate(losses, start=1)
    ]
    return pd.DataFrame(rows, columns=["job", "variant", "step", _LOSS])


def _categorical(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical config values as strings, so they colour and group rather than scale."""
    for column in [c for c in _CATEGORIES if c in frame]:
        frame[column] = frame[column].map(show)
    return frame


def _row_frame(
    values: pd.DataFrame, metrics: list[Metric], keys: list[str], stats: Statistics
) -> pd.DataFrame:
    """One record per configuration: key labels, name, mean of every metric and its interval."""
    records = []
    for index, row in enumerate(stats.rows):
        means = values.loc[row.jobs].mean()
        record = {**dict(zip(keys, row.values, strict=True)), "variant": row.name}
        for m in metrics:
            interval = stats.intervals.get((index, m.source))
            record[m.header] = means[m.header]
            record[_low(m)] = math.nan if interval is None else interval.low * m.scale
            record[_high(m)] = math.nan if interval is None else interval.high * m.scale
        records.append(record)
    return _categorical(pd.DataFrame(records))


def plot_data(ok: pd.DataFrame, stats: Statistics) -> PlotData:
    """Tidy frames for plotting; settings that do not apply to a job's storage type read ``n/a``."""
    keys = row_keys(ok)
    variants = pd.Series(index=ok.index, dtype=object)
    for row in stats.rows:
        variants[row.jobs] = row.name
    config = _categorical(config_labels(ok, [c for c in ok.columns if c.startswith("config.")]))
    values, metrics = metric_frame(ok)
    frame = pd.concat([config, values], axis=1).assign(variant=variants, job=ok["job_dir"])
    rows = _row_frame(values, metrics, keys, stats)
    return PlotData(frame, rows, keys, metrics, _loss_rows(ok, frame["variant"]), stats)


def _legend_outside(fig: Figure, axes: list[Axes], title: str | None) -> None:
    """One legend for the whole figure, right of the panels, instead of one per panel over the data."""
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            if not text.startswith("_"):
                handles.setdefault(text, handle)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            title=title,
            loc="outside right upper",
            fontsize=8,
            frameon=False,
        )


def _per_metric(
    metrics: list[Metric],
    draw: Callable[[Axes, Metric], None],
    legend: str | None,
    size: tuple[float, float] = (4.6, 3.6),
) -> Figure:
    """One panel per metric (one per task for scores), drawn by ``draw``; one legend outside."""
    fig, axes = panels(len(metrics), *size)
    for ax, metric in zip(axes, metrics, strict=True):
        draw(ax, metric)
    _legend_outside(fig, axes, legend)
    return fig


def _log2_axis(ax: Axes, values: pd.Series) -> None:
    """Log₂ x axis with a tick at every value that occurs (block sizes and ranks are powers of two)."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(values.dropna().unique()))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())


def _label_axes(ax: Axes, x: str, y: str, held: str) -> None:
    """Axis labels as a reader reads them (``fit_text`` wraps them to the panel later)."""
    ax.set_xlabel(display(x))
    ax.set_ylabel(display(y))
    if held:
        ax.set_title(f"at {held}", fontsize=9)


def _yerr(rows: pd.DataFrame, metric: Metric) -> np.ndarray:
    """Asymmetric error bars from the interval columns; zero where a row has no interval."""
    mean = rows[metric.header].to_numpy(dtype=float)
    below = np.nan_to_num(mean - rows[_low(metric)].to_numpy(dtype=float))
    above = np.nan_to_num(rows[_high(metric)].to_numpy(dtype=float) - mean)
    return np.vstack([below, above])


def _colours(rows: pd.DataFrame) -> list[str]:
    """Each row's storage-type colour (the one palette of :mod:`harness.report.style`)."""
    storage = rows[STORAGE] if STORAGE in rows else pd.Series("", index=rows.index)
    return [storage_colour(str(s)) for s in storage]


def _double_quant(rows: pd.DataFrame, split: str | None) -> list[bool]:
    return [split is not None and v == "True" for v in rows.get(split, pd.Series(index=rows.index))]


def _bar_rows(data: PlotData) -> int:
    """How many bars a storage panel holds: its height follows, so bars and names never crowd."""
    split = data.hue(DOUBLE_QUANT)
    return len(data.held_fixed([STORAGE, split])[0])


def _bars(data: PlotData, level: str, metric: Metric, ax: Axes) -> None:
    """One horizontal bar per configuration with its 95 % interval, one axis row per ``level`` value (names
    read horizontally, one per row, so they cannot collide); colour: storage type, hatched: double
    quantization; every job as a dot."""
    split = data.hue(DOUBLE_QUANT) if level == STORAGE else None
    rows, held = data.held_fixed([level, split])
    rows = rows.sort_values([level, split] if split else [level])
    levels = list(dict.fromkeys(rows[level]))
    height = 0.8 / max(rows.groupby(level).size().max(), 1)
    # Bars of one level sit side by side, centred: a level with fewer settings leaves no gaps.
    rank = rows.groupby(level).cumcount().to_numpy()
    count = rows.groupby(level)[level].transform("size").to_numpy()
    positions = np.array([levels.index(v) for v in rows[level]]) + (rank - (count - 1) / 2) * height
    bars = ax.barh(positions, rows[metric.header], height * 0.95, color=_colours(rows), alpha=0.85)
    for bar, hatched in zip(bars.patches, _double_quant(rows, split), strict=True):
        if hatched:
            bar.set_hatch(_HATCH)
            bar.set_edgecolor("white")
    ax.errorbar(
        rows[metric.header], positions, xerr=_yerr(rows, metric), fmt="none", ecolor="black", capsize=3
    )
    place = dict(zip(rows["variant"], positions, strict=True))
    jobs = data.jobs_of(rows["variant"])
    ax.scatter(jobs[metric.header], jobs["variant"].map(place), s=10, color="black", zorder=3)
    if any(_double_quant(rows, split)):
        ax.barh([0], [0], 0, color="grey", hatch=_HATCH, edgecolor="white", label="+ double quant")
    ax.set_yticks(range(len(levels)), levels)
    ax.set_ylim(len(levels) - 0.5, -0.5)  # first level on top, as in the table
    _label_axes(ax, metric.header, _AXIS_NAMES[level], held)


def _lines(data: PlotData, x: str, hue: str, metric: Metric, ax: Axes) -> None:
    """Configuration means against a power-of-two setting with 95 % intervals, one line per ``hue`` value.

    Rows the setting does not apply to (16-bit storage has no block size) are dashed horizontal lines.
    """
    rows, held = data.held_fixed([x, hue])
    positions = pd.to_numeric(rows[x], errors="coerce")
    on_axis, flat = rows[positions.notna()].assign(**{x: positions}), rows[positions.isna()]
    groups = on_axis.groupby(hue) if data.varies(hue) else [("", on_axis)]
    for level, part in groups:
        part = part.sort_values(x)
        colour = _colours(part)[0] if hue == STORAGE and data.varies(STORAGE) else None
        ax.errorbar(
            part[x],
            part[metric.header],
            yerr=_yerr(part, metric),
            marker="o",
            capsize=3,
            color=colour,
            label=show(level),
        )
    for colour, (_, row) in zip(_colours(flat), flat.iterrows(), strict=True):
        ax.axhline(
            row[metric.header],
            ls="--",
            lw=1,
            color=colour,
            label=f"{row['variant']} (no {_AXIS_NAMES[x].split(' (')[0]})",
        )
    _log2_axis(ax, on_axis[x])
    _label_axes(ax, _AXIS_NAMES[x], metric.header, held)


def pareto_mask(x: Sequence[float], y: Sequence[float], higher_y_is_better: bool) -> list[bool]:
    """Points no other point beats: lower or equal x and better or equal y, strictly better in one."""
    sign = 1 if higher_y_is_better else -1

    def dominated(i: int) -> bool:
        return any(
            x[j] <= x[i] and sign * y[j] >= sign * y[i] and (x[j] < x[i] or sign * y[j] > sign * y[i])
            for j in range(len(x))
        )

    return [not dominated(i) for i in range(len(x))]


def _points_by_storage(means: pd.DataFrame, x: str, y: str, ax: Axes) -> None:
    """One scatter per storage type in its colour; double-quantized rows as squares."""
    split = DOUBLE_QUANT if DOUBLE_QUANT in means and means[DOUBLE_QUANT].nunique() > 1 else None
    keys = [k for k in (STORAGE, split) if k is not None and k in means]
    groups = means.groupby(keys, sort=True) if keys else [((), means)]
    for _, part in groups:
        squared = _double_quant(part, split)[0]
        name = show(part[STORAGE].iloc[0]) if STORAGE in part else None
        label = f"{name} + double quant" if squared else name
        ax.scatter(
            part[x], part[y], s=60, color=_colours(part)[0], marker="s" if squared else "o", label=label
        )


def _pareto(data: PlotData, cost: Metric, score: Metric, ax: Axes) -> tuple[list, list[str]]:
    """Configuration means of cost against score; the Pareto front as a red step line with ringed points.

    Returns the front's points and names, to be labelled once the figure is laid out.
    """
    means = data.rows.dropna(subset=[cost.header, score.header])
    ax.errorbar(
        means[cost.header], means[score.header], yerr=_yerr(means, score), fmt="none", ecolor="grey", lw=1
    )
    _points_by_storage(means, cost.header, score.header, ax)
    front = means[pareto_mask(list(means[cost.header]), list(means[score.header]), score.direction == HIGHER)]
    front = front.sort_values(cost.header)
    ax.plot(front[cost.header], front[score.header], drawstyle="steps-post", color="crimson", lw=1.2)
    ax.scatter(
        front[cost.header],
        front[score.header],
        s=160,
        facecolors="none",
        edgecolors="crimson",
        label="Pareto front",
    )
    _label_axes(ax, cost.header, score.header, "")
    return list(zip(front[cost.header], front[score.header], strict=True)), list(front["variant"])


def _pareto_figure(data: PlotData, role: str) -> Figure | None:
    costs, scores = data.role(role), data.role("score")
    if not costs or not scores or data.rows[costs[0].header].count() < 2:
        return None
    fronts = []
    fig = _per_metric(
        scores, lambda ax, m: fronts.append((ax, *_pareto(data, costs[0], m, ax))), _AXIS_NAMES[STORAGE]
    )
    fit_text(fig)  # labels go where the final layout leaves room
    for ax, points, names in fronts:
        place_labels(ax, points, names, fontsize=7)
    return fig


def _storage_bars(data: PlotData, role: str) -> Figure | None:
    if not data.varies(STORAGE) or not data.role(role):
        return None
    size = (4.6, max(2.4, 0.32 * _bar_rows(data) + 1.4))
    return _per_metric(data.role(role), lambda ax, m: _bars(data, STORAGE, m, ax), None, size)


def score_by_storage(data: PlotData) -> Figure | None:
    return _storage_bars(data, "score")


def score_vs_blocksize(data: PlotData) -> Figure | None:
    if not data.varies(BLOCKSIZE) or not data.role("score"):
        return None
    return _per_metric(
        data.role("score"), lambda ax, m: _lines(data, BLOCKSIZE, STORAGE, m, ax), _AXIS_NAMES[STORAGE]
    )


def score_vs_lora_r(data: PlotData) -> Figure | None:
    if not data.varies(RANK) or not data.role("score"):
        return None
    return _per_metric(
        data.role("score"), lambda ax, m: _lines(data, RANK, TARGETS, m, ax), _AXIS_NAMES[TARGETS]
    )


def bits_vs_score(data: PlotData) -> Figure | None:
    return _pareto_figure(data, "bits")


def memory_vs_score(data: PlotData) -> Figure | None:
    return _pareto_figure(data, "memory")


def _variant_colours(data: PlotData) -> dict[str, str] | None:
    """Each row's storage colour when the rows differ in storage type only, else None (seaborn's cycle)."""
    if not data.varies(STORAGE) or data.rows[STORAGE].nunique() < len(data.rows):
        return None
    return dict(zip(data.rows["variant"], _colours(data.rows), strict=True))


def loss_curves(data: PlotData) -> Figure | None:
    if data.losses.empty:
        return None
    fig, (ax,) = panels(1, 7.0, 4.2)
    hue = "variant" if data.losses["variant"].nunique() > 1 else None
    palette = _variant_colours(data) if hue else None
    sns.lineplot(
        data.losses, x="step", y=_LOSS, hue=hue, palette=palette, units="job", estimator=None, lw=1, ax=ax
    )
    ax.set_xlabel("training step")
    _legend_outside(fig, [ax], " · ".join(k.removeprefix("config.") for k in data.keys))
    return fig


def throughput_by_storage(data: PlotData) -> Figure | None:
    return _storage_bars(data, "throughput")


def error_vs_bits(data: PlotData) -> Figure | None:
    """Weight error against bits/param per configuration: colour storage type, marker block size."""
    errors, bits = data.role("weight_error"), data.role("bits")
    if not errors or not bits or data.rows[errors[0].header].count() < 2:
        return None
    fig, (ax,) = panels(1, 6.0, 4.2)
    names = {STORAGE: _AXIS_NAMES[STORAGE], BLOCKSIZE: "block size"}
    rows = data.rows.rename(columns=names)
    hue, style = data.hue(STORAGE), BLOCKSIZE if data.varies(BLOCKSIZE) else None
    sns.scatterplot(
        rows,
        x=bits[0].header,
        y=errors[0].header,
        hue=names[hue] if hue else None,
        palette={s: storage_colour(s) for s in data.rows[STORAGE]} if hue else None,
        style=names[style] if style else None,
        s=70,
        ax=ax,
    )
    _legend_outside(fig, [ax], _AXIS_NAMES[STORAGE] if style is None else None)
    return fig


_HELD = " Settings not on the axes are held at their most common value (panel title)."
_BARS = (
    "error bars: 95 % interval of each configuration's value — t over seeds when it has >= 2, else a "
    "bootstrap over the job's documents (>= 10), else lm-eval's stderr × 1.96; no bar where none exists"
)

_MARKS = (
    "*: significant (p < 0.05, the comparisons table's `significant`); **: also after Benjamini–Hochberg "
    "(q < 0.05) where the table has a q_value"
)


def _storages(data: PlotData) -> dict[str, str]:
    """Row name → storage type, for colouring rows by storage in the comparison figures."""
    return dict(zip(data.rows["variant"], data.rows[STORAGE], strict=True)) if STORAGE in data.rows else {}


def forest(data: PlotData) -> Figure | None:
    return forest_figure(data.stats, data.metrics, _storages(data))


def pairwise(data: PlotData) -> Figure | None:
    return matrix_figure(data.stats, data.metrics)


PAIRED_FIGURES = ("forest", "pairwise")  # shown with the paired comparisons, not among the other figures

# name, how to draw it, caption
FIGURES: list[tuple[str, Callable[[PlotData], Figure | None], str]] = [
    (
        "forest",
        forest,
        "Each configuration minus the reference row, paired (per document, per seed or per training step), "
        "with its 95 % CI, one panel per metric; filled dot: significant at p < 0.05, hollow: not; colour: "
        "storage type.",
    ),
    (
        "pairwise",
        pairwise,
        f"Every pair of configurations, paired difference row − column per metric; blue: the row is "
        f"better, red: worse (whichever direction is better for the metric); {_MARKS}.",
    ),
    (
        "score_by_storage",
        score_by_storage,
        f"Main metric per task by storage type (bar: configuration mean, coloured by storage type, hatched "
        f"with double quantization; dots: jobs; {_BARS}).{_HELD}",
    ),
    (
        "score_vs_blocksize",
        score_vs_blocksize,
        f"Main metric per task against block size, one line per storage type ({_BARS}); dashed: rows "
        f"without block size (16-bit).{_HELD}",
    ),
    (
        "bits_vs_score",
        bits_vs_score,
        "Storage cost (bits/param) against main metric per configuration; ringed points: the Pareto front "
        f"({_BARS}).",
    ),
    (
        "memory_vs_score",
        memory_vs_score,
        "Peak training memory against main metric per configuration; ringed points: the Pareto front "
        f"({_BARS}).",
    ),
    (
        "score_vs_lora_r",
        score_vs_lora_r,
        f"Main metric per task against LoRA rank r, one line per target set ({_BARS}).{_HELD}",
    ),
    (
        "error_vs_bits",
        error_vs_bits,
        "Relative RMS error of the stored weights against bits/param, per storage type (colour) and block "
        "size (marker): what each bit buys. Exact per configuration, no error bars.",
    ),
    ("loss_curves", loss_curves, "Training loss per step, one line per job (no error bars: single runs)."),
    (
        "throughput_by_storage",
        throughput_by_storage,
        f"Training throughput by storage type (bar: configuration mean; dots: jobs; error bars: t-interval "
        f"over seeds, none for a single seed).{_HELD}",
    ),
]


def draw_figures(ok: pd.DataFrame, stats: Statistics | None, folder: Path) -> list[SavedFigure]:
    """Draw every figure the results support into ``folder`` (PNG + SVG); stale files of the others go.

    Each figure is drawn, checked and saved on its own (matplotlib's layout and the legibility pass take
    most of a report's time, on one core): where the OS forks, :data:`FIGURE_WORKERS` processes share them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    data = plot_data(ok, stats) if stats is not None else None
    tasks = [(index, data, folder) for index in range(len(FIGURES))]
    with _figure_pool(len(tasks) if data is not None else 0) as pool:
        drawn = list(pool.map(_draw_saved, tasks)) if pool is not None else [_draw_saved(t) for t in tasks]
    for (name, _, _), saved in zip(FIGURES, drawn, strict=True):
        if saved is None:
            (folder / f"{name}.png").unlink(missing_ok=True)
            (folder / f"{name}.svg").unlink(missing_ok=True)
    return [saved for saved in drawn if saved is not None]


# Processes drawing a report's figures: one per core, at most two (a report has about eight figures).
FIGURE_WORKERS = min(2, os.cpu_count() or 1)


@contextlib.contextmanager
def _figure_pool(figures: int) -> Iterator[ProcessPoolExecutor | None]:
    """Forked workers for ``figures`` figures, or None (draw in this process) where there is one core, one
    figure, no fork (a fresh interpreter would spend longer importing matplotlib than it saves) or this is a
    daemonic process (which may not start children)."""
    if (
        FIGURE_WORKERS < 2
        or figures < 2
        or "fork" not in multiprocessing.get_all_start_methods()
        or multiprocessing.current_process().daemon
    ):
        yield None
        return
    with ProcessPoolExecutor(FIGURE_WORKERS, mp_context=multiprocessing.get_context("fork")) as pool:
        yield pool


def _draw_saved(task: tuple[int, PlotData | None, Path]) -> SavedFigure | None:
    """Figure ``FIGURES[index]`` drawn, checked for legibility and saved as PNG and SVG; None when the
    results do not support it."""
    index, data, folder = task
    name, draw, caption = FIGURES[index]
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        fig = draw(data) if data is not None else None
        if fig is None:
            return None
        problems = fit_text(fig)
        fig.set_layout_engine("none")  # saved as checked, and neither save lays it out again
        png, svg = folder / f"{name}.png", folder / f"{name}.svg"
        fig.savefig(png, dpi=150)
        fig.savefig(svg)
    return SavedFigure(name, png, svg, caption, problems)
