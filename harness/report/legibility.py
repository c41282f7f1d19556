"""Whether a figure's text can be read where it is printed, measured with matplotlib's own text extents.

A figure is drawn once on an Agg canvas and every text matplotlib actually draws (tick labels outside the
view are not) is measured with ``Text.get_window_extent``: two text boxes that overlap, a text that runs off
the canvas, or a label (annotation) drawn on a data point is a problem. Boxes are axis-aligned, so text at
a slant would be judged by its enclosing box; the report's figures only print text at 0° or 90°, where the
box is exact. The same module fixes what it can (wraps axis labels to their axes and a crowded panel title
to its panel, turns crowded tick labels upright) and places point labels where nothing else is, without any
dependency beyond matplotlib.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cbook import STEP_LOOKUP_MAP
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

from harness.report.style import wrap

SLACK_PX = 1.0  # boxes that only touch (rounding, anti-aliasing) do not overlap
# Where a point's label may go, in points from it: rings of eight directions (right and up first), each
# farther out than the last; beyond the first ring a thin leader line joins label and point.
_DIRECTIONS = (
    *((1, 0.75), (1, -0.75), (-1, 0.75), (-1, -0.75), (1.25, 0), (-1.25, 0), (0, 1.5), (0, -1.5)),
    *((0.5, 1.25), (-0.5, 1.25), (0.5, -1.25), (-0.5, -1.25)),
)
_LABEL_OFFSETS_PT = tuple((dx * r, dy * r) for r in (8, 18, 30, 44, 60, 80) for dx, dy in _DIRECTIONS)
_LEADER_BEYOND_PT = 12


@contextlib.contextmanager
def _recording_text_draws() -> Iterator[list[Text]]:
    """Every ``Text.draw`` call while inside, in draw order: the only exact list of what is on the canvas."""
    drawn: list[Text] = []
    original = Text.draw

    def record(text: Text, renderer: RendererBase) -> None:
        drawn.append(text)
        original(text, renderer)

    Text.draw = record
    try:
        yield drawn
    finally:
        Text.draw = original


def drawn_texts(fig: Figure) -> tuple[RendererBase, list[Text]]:
    """Draw ``fig`` (layout included) and return its renderer and every visible, non-empty text drawn."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    with _recording_text_draws() as drawn:
        fig.draw(renderer)
    shown = [t for t in dict.fromkeys(drawn) if t.get_visible() and t.get_text().strip()]
    return renderer, shown


def text_box(text: Text, renderer: RendererBase) -> Bbox:
    """The box of a text's glyphs in pixels; for an annotation without its leader line (which
    ``Annotation.get_window_extent`` adds, and which may touch the point it labels)."""
    if isinstance(text, Annotation):
        text.update_positions(renderer)
    return Text.get_window_extent(text, renderer)


def _name(text: Text) -> str:
    words = " ".join(text.get_text().split())
    return repr(words if len(words) <= 40 else words[:39] + "…")


def _overlap(a: Bbox, b: Bbox) -> bool:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width > SLACK_PX and height > SLACK_PX


def _point_boxes(ax: Axes) -> list[Bbox]:
    """The box of every scatter point and line marker in ``ax``, in display pixels."""
    boxes, scale = [], ax.figure.dpi / 72
    for collection in ax.collections:
        if not isinstance(collection, PathCollection) or not collection.get_visible():
            continue
        offsets = collection.get_offset_transform().transform(collection.get_offsets())
        sizes = np.resize(collection.get_sizes() if len(collection.get_sizes()) else [36.0], len(offsets))
        boxes += [_square(xy, math.sqrt(s) / 2 * scale) for xy, s in zip(offsets, sizes, strict=True)]
    for line in ax.lines:
        if line.get_visible() and line.get_marker() not in (None, "", "None", " ", "_", "|"):
            radius = line.get_markersize() / 2 * scale
            boxes += [_square(xy, radius) for xy in line.get_transform().transform(line.get_xydata())]
    return [b for b in boxes if np.isfinite(b.get_points()).all()]


def _square(centre: Sequence[float], radius: float) -> Bbox:
    x, y = centre
    return Bbox.from_extents(x - radius, y - radius, x + radius, y + radius)


def figure_text_problems(fig: Figure) -> list[str]:
    """What keeps ``fig`` from being read: overlapping texts, text off the canvas, labels on data points.

    Draws the figure; an empty list means every text stands clear.
    """
    return _text_problems(fig, *drawn_texts(fig))


def _text_problems(fig: Figure, renderer: RendererBase, texts: list[Text]) -> list[str]:
    """:func:`figure_text_problems` of a figure drawn as ``renderer`` and ``texts`` say."""
    boxes = [text_box(t, renderer) for t in texts]
    canvas = fig.bbox
    problems = [
        f"text {_name(t)} runs off the {fig.bbox.width:.0f}×{fig.bbox.height:.0f} px canvas"
        for t, b in zip(texts, boxes, strict=True)
        if b.x0 < -SLACK_PX or b.y0 < -SLACK_PX or b.x1 > canvas.x1 + SLACK_PX or b.y1 > canvas.y1 + SLACK_PX
    ]
    for i, j in zip(*np.triu_indices(len(texts), k=1), strict=True):
        if _overlap(boxes[i], boxes[j]):
            problems.append(f"texts {_name(texts[i])} and {_name(texts[j])} overlap")
    for ax in fig.axes:
        points = _point_boxes(ax)
        for text, box in [(t, b) for t, b in zip(texts, boxes, strict=True) if t in ax.texts]:
            if any(_overlap(box, p) for p in points):
                problems.append(f"label {_name(text)} sits on a data point")
    return problems


def _crowded(labels: list[Text], renderer: RendererBase) -> bool:
    boxes = [text_box(t, renderer) for t in labels]
    return any(_overlap(a, b) for a, b in zip(boxes, boxes[1:], strict=False))


def _rewrap(text: Text, length: float, room: float) -> bool:
    """Break ``text`` (``length`` pixels long) into lines that fit ``room`` pixels; whether it changed (a
    single word longer than the room stays as it is)."""
    words = " ".join(text.get_text().split())
    wrapped = wrap(words, int(len(words) * room / length * 0.9))
    if wrapped == text.get_text():
        return False
    text.set_text(wrapped)
    return True


def _wrap_crowded_title(ax: Axes, fig: Figure, texts: list[Text], renderer: RendererBase) -> bool:
    """Wrap the panel's title to the panel's width when it runs off the canvas or into another text (a
    long metric name over narrow panels); a title the checker has nothing against is left as drawn.
    Whether it changed."""
    title = ax.title
    if not title.get_text().strip():
        return False
    box = text_box(title, renderer)
    on_canvas = box.x0 >= fig.bbox.x0 and box.x1 <= fig.bbox.x1
    if on_canvas and not any(_overlap(box, text_box(t, renderer)) for t in texts if t is not title):
        return False
    return _rewrap(title, box.width, ax.get_window_extent(renderer).width)


def _fit_once(fig: Figure, renderer: RendererBase, texts: list[Text]) -> bool:
    """One pass of :func:`fit_text` over the figure drawn as ``renderer`` and ``texts`` say; whether it
    changed anything."""
    grow = np.zeros(2)  # inches to add to the figure's width and height
    changed = False
    for ax in [a for a in fig.axes if a.get_visible()]:
        frame = ax.get_window_extent(renderer)
        for axis, label, room in ((0, ax.xaxis.label, frame.width), (1, ax.yaxis.label, frame.height)):
            length = text_box(label, renderer).size[axis] if label.get_text().strip() else 0.0
            if length <= room:
                continue
            if _rewrap(label, length, room):
                changed = True
            else:  # a word longer than the panel: the panel grows instead
                grow[axis] = max(grow[axis], (length - room) / fig.dpi)
        changed |= _wrap_crowded_title(ax, fig, texts, renderer)
        ticks = [t for t in ax.get_xticklabels() if t in texts]
        if ticks and _crowded(ticks, renderer) and any(t.get_rotation() != 90 for t in ticks):
            boxes = [text_box(t, renderer) for t in ticks]
            for tick in ticks:
                tick.set_rotation(90)
            # upright labels need their width as height: the figure grows so the panel keeps its size
            grow[1] = max(grow[1], (max(b.width for b in boxes) - max(b.height for b in boxes)) / fig.dpi)
            changed = True
    if grow.any():
        fig.set_size_inches(fig.get_size_inches() + grow)
    return changed or bool(grow.any())


def fit_text(fig: Figure, passes: int = 3) -> list[str]:
    """Wrap each axis label to the length of its axes and a title that runs off the canvas or into another
    text to its panel, and turn x tick labels upright where they collide; again while a pass changed the
    layout (upright ticks leave the panel shorter). Returns :func:`figure_text_problems` of the result,
    read off the last pass's drawing when that pass changed nothing (a drawing is most of the cost)."""
    for _ in range(passes):
        drawing = drawn_texts(fig)
        if not _fit_once(fig, *drawing):
            return _text_problems(fig, *drawing)
    return figure_text_problems(fig)


def _segment_boxes(points: np.ndarray) -> list[Bbox]:
    """Small boxes along a polyline (pixels): a slanted segment is cut into <= 8 px pieces so its boxes
    hug it instead of covering the rectangle it spans."""
    boxes = []
    for a, b in zip(points, points[1:], strict=False):
        pieces = max(1, int(np.hypot(*(b - a)) // 8) if np.isfinite(b - a).all() else 0)
        for t0, t1 in zip(np.linspace(0, 1, pieces + 1), np.linspace(0, 1, pieces + 1)[1:], strict=False):
            p, q = a + (b - a) * t0, a + (b - a) * t1
            boxes.append(Bbox.from_extents(*np.minimum(p, q), *np.maximum(p, q)).padded(1.0))
    return [box for box in boxes if np.isfinite(box.get_points()).all()]


def _obstacles(ax: Axes) -> list[Bbox]:
    """What a point label must not cover: markers, error bars and lines of ``ax`` (pixels, 1 px padded)."""
    boxes = _point_boxes(ax)
    for collection in [c for c in ax.collections if isinstance(c, LineCollection)]:
        for segment in collection.get_segments():
            boxes += _segment_boxes(collection.get_transform().transform(np.asarray(segment, dtype=float)))
    for line in ax.lines:
        xy = np.asarray(line.get_xydata(), dtype=float)
        if line.get_drawstyle() in STEP_LOOKUP_MAP and line.get_drawstyle() != "default":
            xy = np.column_stack(STEP_LOOKUP_MAP[line.get_drawstyle()](*xy.T))
        boxes += _segment_boxes(line.get_transform().transform(xy))
    return boxes


def _overlap_area(box: Bbox, others: list[Bbox]) -> float:
    """Pixels of ``box`` under the others, ignoring overlaps of at most :data:`SLACK_PX` (mere touching)."""
    return sum(
        max(0.0, min(box.x1, o.x1) - max(box.x0, o.x0) - SLACK_PX)
        * max(0.0, min(box.y1, o.y1) - max(box.y0, o.y0) - SLACK_PX)
        for o in others
    )


def place_labels(
    ax: Axes, points: Sequence[tuple[float, float]], labels: Sequence[str], fontsize: float
) -> None:
    """Label each data point where its text covers no marker, line, error bar or earlier label.

    Tries offsets around the point (right and up first) and keeps the first clear one inside the axes,
    else the least covered. Call it last: it measures the figure as laid out.
    """
    fig = ax.figure
    renderer, _ = drawn_texts(fig)
    frame, taken = ax.get_window_extent(renderer), _obstacles(ax)
    for (x, y), text in zip(points, labels, strict=True):
        best: tuple[float, Annotation] | None = None
        for dx, dy in _LABEL_OFFSETS_PT:
            note = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=fontsize,
                ha="left" if dx > 0 else "right" if dx < 0 else "center",
                va="bottom" if dy > 0 else "top" if dy < 0 else "center",
                annotation_clip=False,
                # a label set farther out than the first ring gets a thin leader line to its point
                arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "grey"}
                if max(abs(dx), abs(dy)) > _LEADER_BEYOND_PT
                else None,
            )
            note.set_in_layout(False)
            box = text_box(note, renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            cost = _overlap_area(box, taken) + (0.0 if inside else 1e9)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, note)
            else:
                note.remove()
            if cost == 0.0:
                break
        taken.append(text_box(best[1], renderer))
