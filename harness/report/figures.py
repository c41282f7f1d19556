"""Seaborn/matplotlib figures of a sweep, each drawn only when the results hold what it needs.

Bars and lines are configuration means with their 95 % interval (the table's: t over seeds, bootstrap over
documents, or lm-eval's stderr), and every caption says so. Legends sit outside the axes, right of the
panels, so no legend hides data. Figures are built on ``matplotlib.figure.Figure`` (Agg canvas, no
pyplot state), saved as PNG and SVG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator, ScalarFormatter

from harness.report.comparisons import Statistics
from harness.report.metrics import HIGHER, Metric, config_labels, metric_frame, row_keys, show

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
    name: str
    png: Path
    svg: Path
    caption: str


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
    return PlotData(frame, rows, keys, metrics, _loss_rows(ok, frame["variant"]))


def _panels(count: int, width: float = 4.6, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    """A figure with ``count`` panels, at most three to a row."""
    ncols = min(count, 3)
    nrows = math.ceil(count / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


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


def _per_metric(metrics: list[Metric], draw: Callable[[Axes, Metric], None], legend: str | None) -> Figure:
    """One panel per metric (one per task for scores), drawn by ``draw``; one legend outside."""
    fig, axes = _panels(len(metrics))
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


def _label_axes(ax: Axes, x: str, metric: Metric, held: str) -> None:
    ax.set_xlabel(_AXIS_NAMES[x])
    ax.set_ylabel(metric.header)
    if held:
        ax.set_title(f"at {held}", fontsize=9)


def _yerr(rows: pd.DataFrame, metric: Metric) -> np.ndarray:
    """Asymmetric error bars from the interval columns; zero where a row has no interval."""
    mean = rows[metric.header].to_numpy(dtype=float)
    below = np.nan_to_num(mean - rows[_low(metric)].to_numpy(dtype=float))
    above = np.nan_to_num(rows[_high(metric)].to_numpy(dtype=float) - mean)
    return np.vstack([below, above])


def _bars(data: PlotData, x: str, metric: Metric, ax: Axes) -> None:
    """One bar per configuration with its 95 % interval, grouped by ``x``; every job as a dot."""
    hue = data.hue(DOUBLE_QUANT) if x == STORAGE else None
    rows, held = data.held_fixed([x, hue])
    rows = rows.sort_values([x, hue] if hue else [x])
    levels = list(dict.fromkeys(rows[x]))
    hues = sorted(rows[hue].unique()) if hue else []
    colours = dict(zip(hues, sns.color_palette(n_colors=max(len(hues), 1)), strict=False))
    width = 0.8 / max(rows.groupby(x).size().max(), 1)
    # Bars of one x level sit side by side, centred: a level with fewer settings leaves no gaps.
    rank = rows.groupby(x).cumcount().to_numpy()
    count = rows.groupby(x)[x].transform("size").to_numpy()
    positions = np.array([levels.index(v) for v in rows[x]]) + (rank - (count - 1) / 2) * width
    colour = [colours[h] for h in rows[hue]] if hue else sns.color_palette()[0]
    ax.bar(positions, rows[metric.header], width * 0.95, color=colour, alpha=0.8)
    ax.errorbar(
        positions, rows[metric.header], yerr=_yerr(rows, metric), fmt="none", ecolor="black", capsize=3
    )
    place = dict(zip(rows["variant"], positions, strict=True))
    jobs = data.jobs_of(rows["variant"])
    ax.scatter(jobs["variant"].map(place), jobs[metric.header], s=10, color="black", zorder=3)
    for level in hues:
        ax.bar([0], [0], 0, color=colours[level], label=level)  # legend entry only
    ax.set_xticks(range(len(levels)), levels)
    _label_axes(ax, x, metric, held)


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
        ax.errorbar(
            part[x], part[metric.header], yerr=_yerr(part, metric), marker="o", capsize=3, label=show(level)
        )
    for _, row in flat.iterrows():
        ax.axhline(
            row[metric.header],
            ls="--",
            lw=1,
            color="grey",
            label=f"{row['variant']} (no {_AXIS_NAMES[x].split(' (')[0]})",
        )
    _log2_axis(ax, on_axis[x])
    _label_axes(ax, x, metric, held)


def pareto_mask(x: Sequence[float], y: Sequence[float], higher_y_is_better: bool) -> list[bool]:
    """Points no other point beats: lower or equal x and better or equal y, strictly better in one."""
    sign = 1 if higher_y_is_better else -1

    def dominated(i: int) -> bool:
        return any(
            x[j] <= x[i] and sign * y[j] >= sign * y[i] and (x[j] < x[i] or sign * y[j] > sign * y[i])
            for j in range(len(x))
        )

    return [not dominated(i) for i in range(len(x))]


def _pareto(data: PlotData, cost: Metric, score: Metric, ax: Axes) -> None:
    """Configuration means of cost against score; the Pareto front as a red step line with ringed points."""
    means = data.rows.dropna(subset=[cost.header, score.header])
    hue = data.hue(STORAGE)
    sns.scatterplot(means, x=cost.header, y=score.header, hue=hue, s=60, ax=ax)
    ax.errorbar(
        means[cost.header], means[score.header], yerr=_yerr(means, score), fmt="none", ecolor="grey", lw=1
    )
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
    for _, point in front.iterrows():
        ax.annotate(
            point["variant"],
            (point[cost.header], point[score.header]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )


def _pareto_figure(data: PlotData, role: str) -> Figure | None:
    costs, scores = data.role(role), data.role("score")
    if not costs or not scores or data.rows[costs[0].header].count() < 2:
        return None
    return _per_metric(scores, lambda ax, m: _pareto(data, costs[0], m, ax), _AXIS_NAMES[STORAGE])


def score_by_storage(data: PlotData) -> Figure | None:
    if not data.varies(STORAGE) or not data.role("score"):
        return None
    return _per_metric(
        data.role("score"), lambda ax, m: _bars(data, STORAGE, m, ax), _AXIS_NAMES[DOUBLE_QUANT]
    )


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


def loss_curves(data: PlotData) -> Figure | None:
    if data.losses.empty:
        return None
    fig, (ax,) = _panels(1, width=7.0, height=4.2)
    hue = "variant" if data.losses["variant"].nunique() > 1 else None
    sns.lineplot(data.losses, x="step", y=_LOSS, hue=hue, units="job", estimator=None, lw=1, ax=ax)
    ax.set_xlabel("training step")
    _legend_outside(fig, [ax], " · ".join(k.removeprefix("config.") for k in data.keys))
    return fig


def throughput_by_storage(data: PlotData) -> Figure | None:
    if not data.varies(STORAGE) or not data.role("throughput"):
        return None
    return _per_metric(
        data.role("throughput"), lambda ax, m: _bars(data, STORAGE, m, ax), _AXIS_NAMES[DOUBLE_QUANT]
    )


def error_vs_bits(data: PlotData) -> Figure | None:
    """Weight error against bits/param per configuration: colour storage type, marker block size."""
    errors, bits = data.role("weight_error"), data.role("bits")
    if not errors or not bits or data.rows[errors[0].header].count() < 2:
        return None
    fig, (ax,) = _panels(1, width=6.0, height=4.2)
    style = BLOCKSIZE if data.varies(BLOCKSIZE) else None
    sns.scatterplot(
        data.rows, x=bits[0].header, y=errors[0].header, hue=data.hue(STORAGE), style=style, s=70, ax=ax
    )
    _legend_outside(fig, [ax], _AXIS_NAMES[STORAGE] if style is None else None)
    return fig


_HELD = " Settings not on the axes are held at their most common value (panel title)."
_BARS = (
    "error bars: 95 % interval of each configuration's value — t over seeds when it has >= 2, else a "
    "bootstrap over the job's documents (>= 10), else lm-eval's stderr × 1.96; no bar where none exists"
)

# name, how to draw it, caption
FIGURES: list[tuple[str, Callable[[PlotData], Figure | None], str]] = [
    (
        "score_by_storage",
        score_by_storage,
        f"Main metric per task by storage type (bar: configuration mean; dots: jobs; {_BARS}).{_HELD}",
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
    """Draw every figure the results support into ``folder`` (PNG + SVG); stale files of the others go."""
    folder.mkdir(parents=True, exist_ok=True)
    data = plot_data(ok, stats) if stats is not None else None
    saved = []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        for name, draw, caption in FIGURES:
            png, svg = folder / f"{name}.png", folder / f"{name}.svg"
            fig = draw(data) if data is not None else None
            if fig is None:
                png.unlink(missing_ok=True)
                svg.unlink(missing_ok=True)
                continue
            fig.savefig(png, dpi=150)
            fig.savefig(svg)
            saved.append(SavedFigure(name, png, svg, caption))
    return saved
