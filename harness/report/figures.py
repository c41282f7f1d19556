"""Seaborn figures of a sweep, each drawn only when the results hold what it needs.

Figures are built on ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state), saved as PNG and SVG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator, ScalarFormatter

from harness.report.metrics import HIGHER, Metric, label, metric_frame, show
from harness.report.summary import key_frame, row_keys, variant_labels

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
    """Finished jobs as one tidy frame: config columns, ``variant`` label, ``job`` dir and metric headers."""

    frame: pd.DataFrame
    keys: list[str]  # the config columns the jobs differ in (``variant`` joins their values)
    metrics: list[Metric]
    losses: pd.DataFrame  # job, variant, step, training loss

    def varies(self, column: str) -> bool:
        return column in self.frame and self.frame[column].nunique() > 1

    def hue(self, column: str) -> str | None:
        """``column`` as colour when it varies; one colour otherwise."""
        return column if self.varies(column) else None

    def role(self, role: str) -> list[Metric]:
        return [m for m in self.metrics if m.role == role and self.frame[m.header].notna().any()]

    def held_fixed(self, free: Sequence[str | None]) -> tuple[pd.DataFrame, str]:
        """Jobs whose varied settings other than ``free`` sit at their most common value, and which those are.

        Without this, a block-size line would average over ranks too and its error bar would not be seeds.
        """
        frame, held = self.frame, []
        for key in [k for k in self.keys if k not in free and self.varies(k)]:
            common = frame[key].mode()
            if common.empty:
                continue
            frame = frame[frame[key] == common.iloc[0]]
            held.append(f"{key.removeprefix('config.')} = {show(common.iloc[0])}")
        return frame, ", ".join(held)


@dataclass(frozen=True)
class SavedFigure:
    name: str
    png: Path
    svg: Path
    caption: str


def _loss_rows(ok: pd.DataFrame, variants: pd.Series) -> pd.DataFrame:
    """One row per (job, step) from the ``train.loss`` lists."""
    rows = [
        {"job": job, "variant": variant, "step": step, _LOSS: float(loss)}
        for job, variant, losses in zip(ok["job_dir"], variants, ok.get("train.loss", []), strict=False)
        if isinstance(losses, list)
        for step, loss in enumerate(losses, start=1)
    ]
    return pd.DataFrame(rows, columns=["job", "variant", "step", _LOSS])


def plot_data(ok: pd.DataFrame) -> PlotData:
    """Tidy frame for seaborn; categorical config values become strings so they colour, not scale."""
    keys = row_keys(ok)
    variants = variant_labels(key_frame(ok, keys))
    config = ok[[c for c in ok.columns if c.startswith("config.")]].map(label)
    for column in [c for c in _CATEGORIES if c in config]:
        config[column] = config[column].map(show)
    values, metrics = metric_frame(ok)
    frame = pd.concat([config, values], axis=1).assign(variant=variants, job=ok["job_dir"])
    return PlotData(frame, keys, metrics, _loss_rows(ok, frame["variant"]))


def _panels(count: int, width: float = 4.6, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    """A figure with ``count`` panels, at most three to a row."""
    ncols = min(count, 3)
    nrows = math.ceil(count / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


def _per_metric(metrics: list[Metric], draw: Callable[[Axes, Metric], None]) -> Figure:
    """One panel per metric (one per task for scores), drawn by ``draw``."""
    fig, axes = _panels(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        draw(ax, metric)
    return fig


def _log2_axis(ax: Axes, values: pd.Series) -> None:
    """Log₂ x axis with a tick at every value that occurs (block sizes and ranks are powers of two)."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(values.dropna().unique()))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())


def _label_axes(ax: Axes, x: str, held: str) -> None:
    ax.set_xlabel(_AXIS_NAMES[x])
    if held:
        ax.set_title(f"at {held}", fontsize=9)


def _bars(data: PlotData, x: str, metric: Metric, ax: Axes) -> None:
    """Mean bar with ±1 sd error bar over seeds, every job as a dot."""
    hue = data.hue(DOUBLE_QUANT) if x == STORAGE else None
    frame, held = data.held_fixed([x, hue])
    sns.barplot(frame, x=x, y=metric.header, hue=hue, errorbar="sd", capsize=0.2, alpha=0.75, ax=ax)
    dots = {"hue": hue, "dodge": True, "palette": "dark"} if hue else {"color": "black"}
    sns.stripplot(frame, x=x, y=metric.header, size=4, legend=False, ax=ax, **dots)
    _label_axes(ax, x, held)


def _lines(data: PlotData, x: str, hue: str, metric: Metric, ax: Axes) -> None:
    """Mean over seeds against a power-of-two setting, one line per ``hue`` value, ±1 sd bars."""
    frame, held = data.held_fixed([x, hue])
    sns.lineplot(
        frame,
        x=x,
        y=metric.header,
        hue=data.hue(hue),
        marker="o",
        errorbar="sd",
        err_style="bars",
        ax=ax,
    )
    _log2_axis(ax, frame[x])
    _label_axes(ax, x, held)
    if ax.get_legend() is not None:
        ax.get_legend().set_title(_AXIS_NAMES[hue])


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
    by = ["variant", STORAGE] if STORAGE in data.frame else ["variant"]
    means = data.frame.groupby(by)[[cost.header, score.header]].mean().dropna().reset_index()
    sns.scatterplot(means, x=cost.header, y=score.header, hue=data.hue(STORAGE), s=60, ax=ax)
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
    ax.legend(fontsize=8)


def _pareto_figure(data: PlotData, role: str) -> Figure | None:
    costs, scores = data.role(role), data.role("score")
    if not costs or not scores or data.frame.groupby("variant")[costs[0].header].mean().count() < 2:
        return None
    return _per_metric(scores, lambda ax, m: _pareto(data, costs[0], m, ax))


def score_by_storage(data: PlotData) -> Figure | None:
    if not data.varies(STORAGE) or not data.role("score"):
        return None
    return _per_metric(data.role("score"), lambda ax, m: _bars(data, STORAGE, m, ax))


def score_vs_blocksize(data: PlotData) -> Figure | None:
    if not data.varies(BLOCKSIZE) or not data.role("score"):
        return None
    return _per_metric(data.role("score"), lambda ax, m: _lines(data, BLOCKSIZE, STORAGE, m, ax))


def score_vs_lora_r(data: PlotData) -> Figure | None:
    if not data.varies(RANK) or not data.role("score"):
        return None
    return _per_metric(data.role("score"), lambda ax, m: _lines(data, RANK, TARGETS, m, ax))


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
    if ax.get_legend() is not None:
        ax.get_legend().set_title(" · ".join(k.removeprefix("config.") for k in data.keys))
        sns.move_legend(
            ax, "upper left", bbox_to_anchor=(1.01, 1), fontsize=8, title_fontsize=8, frameon=False
        )
    return fig


def throughput_by_storage(data: PlotData) -> Figure | None:
    if not data.varies(STORAGE) or not data.role("throughput"):
        return None
    return _per_metric(data.role("throughput"), lambda ax, m: _bars(data, STORAGE, m, ax))


_HELD = " Settings not on the axes are held at their most common value (panel title)."
_SEEDS = "mean over seeds, error bars ±1 sd"

# name, how to draw it, caption
FIGURES: list[tuple[str, Callable[[PlotData], Figure | None], str]] = [
    (
        "score_by_storage",
        score_by_storage,
        f"Main metric per task by storage type ({_SEEDS}, dots: jobs).{_HELD}",
    ),
    (
        "score_vs_blocksize",
        score_vs_blocksize,
        f"Main metric per task against block size, one line per storage type ({_SEEDS}).{_HELD}",
    ),
    (
        "bits_vs_score",
        bits_vs_score,
        "Storage cost (bits/param) against main metric per configuration; ringed points: the Pareto front.",
    ),
    (
        "memory_vs_score",
        memory_vs_score,
        "Peak training memory against main metric per configuration; ringed points: the Pareto front.",
    ),
    (
        "score_vs_lora_r",
        score_vs_lora_r,
        f"Main metric per task against LoRA rank r, one line per target set ({_SEEDS}).{_HELD}",
    ),
    ("loss_curves", loss_curves, "Training loss per step, one line per job."),
    (
        "throughput_by_storage",
        throughput_by_storage,
        f"Training throughput by storage type ({_SEEDS}, dots: jobs).{_HELD}",
    ),
]


def draw_figures(ok: pd.DataFrame, folder: Path) -> list[SavedFigure]:
    """Draw every figure the results support into ``folder`` (PNG + SVG); stale files of the others go."""
    folder.mkdir(parents=True, exist_ok=True)
    data = plot_data(ok) if not ok.empty else None
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
