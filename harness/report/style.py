"""How figures name and colour things: one colour per storage type in every figure, short display names.

A storage type keeps its colour across all figures of all reports (the palette is fixed here, not drawn
from the order a sweep happens to list its rows), so a reader who learnt "NF4 is blue" in one figure can
trust it in the next. A type the palette does not know yet gets a colour derived from its name alone, the
same on every run and machine.
"""

from __future__ import annotations

import colorsys
import math
import textwrap
import zlib

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Families share a hue: 16-bit greys, NF4 blues, FP4 warm colours; the rest distinct (Tableau hues).
STORAGE_COLOURS: dict[str, str] = {
    "bf16": "#4d4d4d",
    "fp16": "#8c8c8c",
    "fp32": "#000000",
    "nf4": "#1f77b4",
    "nf4_paper": "#6baed6",
    "fp4": "#ff7f0e",
    "fp4_e2m1": "#d62728",
    "fp4_e3m0": "#e377c2",
    "int4": "#2ca02c",
    "int8": "#9467bd",
    "codebook": "#8c564b",
    "mxfp4": "#ff9896",
    "nvfp4": "#c49c94",
    "af4": "#17becf",
    "bof4": "#bcbd22",
    "bof4_s": "#dbdb8d",
}
_TASK_SUFFIX = "_local"  # the shipped offline copies of lm-eval tasks; the suffix says nothing to a reader


def storage_colour(storage: str) -> str:
    """The colour of a storage type in every figure; an unknown name gets one from a hash of the name."""
    if storage in STORAGE_COLOURS:
        return STORAGE_COLOURS[storage]
    hue = (zlib.crc32(storage.encode()) % 360) / 360
    red, green, blue = colorsys.hls_to_rgb(hue, 0.45, 0.6)
    return f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"


def display(text: str) -> str:
    """A header or name as a figure prints it: task names without the ``_local`` suffix."""
    return text.replace(_TASK_SUFFIX + " ", " ").removesuffix(_TASK_SUFFIX)


def wrap(text: str, chars: int) -> str:
    """``text`` broken at spaces into lines of at most ``chars`` characters (a longer word stays whole)."""
    return "\n".join(textwrap.wrap(text, max(chars, 8), break_long_words=False)) or text


def panels(count: int, width: float, height: float, columns: int = 3) -> tuple[Figure, list[Axes]]:
    """A figure of ``count`` panels of ``width`` × ``height`` inches, at most ``columns`` to a row.

    Constrained layout keeps labels inside the canvas; an Agg canvas from the start lets text be measured.
    """
    ncols = min(count, columns)
    nrows = math.ceil(count / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]
