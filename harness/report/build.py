"""One call from result directories to the full report: tables, figures, Markdown and HTML."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.report.content import build_document
from harness.report.figures import draw_figures
from harness.report.html import render_html
from harness.report.markdown import render_markdown
from harness.report.table import load_results, ok_jobs, write_table


class NoResultsError(RuntimeError):
    """No readable ``result.json`` under any of the directories searched; ``skipped`` says why per file."""

    def __init__(self, message: str, skipped: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.skipped = list(skipped)


@dataclass(frozen=True)
class ReportPaths:
    """What :func:`build_report` wrote, and the result files it had to skip (one message each)."""

    out: Path
    parquet: Path
    csv: Path
    markdown: Path
    html: Path
    figures: list[Path]
    skipped: list[str]


def default_out(dirs: Sequence[str | os.PathLike]) -> Path:
    """The first directory given (or the folder of a given ``result.json``): a report sits by its sweep."""
    first = Path(dirs[0])
    return first.parent if first.is_file() else first


def build_report(dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None) -> ReportPaths:
    """Read every ``result.json`` under ``dirs`` and write the report into ``out`` (default: the first dir).

    Writes ``results.parquet``, ``results.csv``, ``report.md``, ``report.html`` and ``figures/*.png|svg``.
    Unreadable files are skipped and listed in the report and in ``ReportPaths.skipped``; raises
    :class:`NoResultsError` when nothing could be read.
    """
    if not dirs:
        raise NoResultsError("no directory given")
    loaded = load_results(dirs)
    if loaded.table.empty:
        searched = ", ".join(str(d) for d in dirs)
        raise NoResultsError(f"no readable result.json under {searched}", loaded.errors)
    out = Path(out) if out is not None else default_out(dirs)
    out.mkdir(parents=True, exist_ok=True)
    parquet, csv = write_table(loaded.table, out)
    figures = draw_figures(ok_jobs(loaded.table), out / "figures")
    document = build_document(loaded, [str(d) for d in dirs], figures, out)
    markdown, html = out / "report.md", out / "report.html"
    markdown.write_text(render_markdown(document), encoding="utf-8")
    html.write_text(render_html(document, out), encoding="utf-8")
    return ReportPaths(out, parquet, csv, markdown, html, [f.png for f in figures], loaded.errors)
