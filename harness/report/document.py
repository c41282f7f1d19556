"""The report as a document: the sections a ``qlora-report`` folder holds (overview, results table, paired
comparisons, figures, failures, environment, caveats), independent of whether they are rendered as
Markdown or HTML (:mod:`harness.report.render`); :func:`harness.report.cli.build_report` writes them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.env import STARTED_KEY
from harness.report.comparisons import Statistics
from harness.report.figures import PAIRED_FIGURES, SavedFigure
from harness.report.load import (
    RESULTS_FILE,
    LoadedResults,
    ok_jobs,
)
from harness.report.metrics import key_header, label, metric_frame, row_keys, show
from harness.report.render import (
    Block,
    Bullets,
    Cell,
    Document,
    Image,
    Paragraph,
    Section,
    Table,
)
from harness.report.summary import paired_summary, summarize
from harness.report.verdicts import report_verdicts

_MESSAGE_CHARS = 300
STARTED_COLUMN = f"env.{STARTED_KEY}"


def _shown_dir(path: str) -> str:
    """A searched directory as the report names it: never a machine's absolute path."""
    if not os.path.isabs(path):
        return path
    inside = Path(path).resolve().is_relative_to(Path.cwd().resolve())
    return os.path.relpath(Path(path).resolve(), Path.cwd().resolve()) if inside else Path(path).name


def _overview(table: pd.DataFrame, ok: pd.DataFrame, dirs: Sequence[str], rebuilt: bool) -> Section:
    counts = f"Jobs read: {len(table)} ({len(ok)} finished, {len(table) - len(ok)} failed)."
    if rebuilt:
        where = (
            f"{counts} Rebuilt from the report folder's committed {RESULTS_FILE} and samples.parquet (the "
            "runs' own result.json files are not committed); every job keeps the commit, machine and date it "
            "recorded (Environment). Job directories are named relative to their sweep folder. Folder:"
        )
    else:
        where = f"{counts} Directories searched for result.json:"
    return Section("Overview", [Paragraph(where), Bullets([_shown_dir(str(d)) for d in dirs], code=True)])


def _results(ok: pd.DataFrame, keys: list[str], stats: Statistics | None) -> list[Section]:
    if stats is None:
        return [Section("Results", [Paragraph("No job finished, so there is nothing to tabulate.")])]
    summary = summarize(ok, keys, stats)
    blocks: list[Block] = [Paragraph(summary.legend), summary.table]
    if stats.without_samples:
        blocks += [
            Paragraph(
                "Jobs without per-sample results (no samples.parquet): their values carry no document "
                "bootstrap interval and are not compared document by document:"
            ),
            Bullets(stats.without_samples, code=True),
        ]
    blocks += [
        Paragraph("Where each number comes from, row by row (job directories):"),
        Bullets(summary.sources),
    ]
    return [Section("Results", blocks)]


def _image(figure: SavedFigure, out: Path) -> Image:
    return Image(str(figure.png.relative_to(out)), figure.caption)


def _paired(
    ok: pd.DataFrame, stats: Statistics | None, figures: list[SavedFigure] | None, out: Path
) -> list[Section]:
    """A few lines on what was compared and how, then the forest plot and the pairwise matrices."""
    if stats is None:
        return []
    _, metrics = metric_frame(ok)
    shown = [_image(f, out) for f in figures or [] if f.name in PAIRED_FIGURES]
    return [Section("Paired comparisons", [*paired_summary(stats, metrics), *shown])]


def _figures(figures: list[SavedFigure] | None, out: Path) -> Section:
    if figures is None:
        return Section("Figures", [Paragraph("Not drawn (qlora-report --no-figures).")])
    others = [f for f in figures if f.name not in PAIRED_FIGURES]
    if not others:
        return Section("Figures", [Paragraph("No figure: the results hold nothing the figures need.")])
    blocks: list[Block] = [_image(f, out) for f in others]
    blocks.append(Paragraph("Each figure is also saved as SVG next to its PNG."))
    problems = [f"{f.name}: {p}" for f in figures for p in f.problems]
    if problems:
        blocks += [Paragraph("Legibility check (text extents after drawing) found:"), Bullets(problems)]
    return Section("Figures", blocks)


def _error_text(job: pd.Series) -> str:
    """``Type: message`` (first line, shortened) of a failed job."""
    kind, message = job.get("error.type"), job.get("error.message")
    if not isinstance(kind, str) and not isinstance(message, str):
        return f"no error recorded (status: {show(job.get('status'))})"
    first_line = str(message).strip().splitlines()[0] if isinstance(message, str) and message.strip() else ""
    text = f"{show(kind)}: {first_line}"
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


def _failed(failed: pd.DataFrame, keys: list[str]) -> Section:
    if failed.empty:
        return Section("Failed jobs", [Paragraph("None.")])
    rows = [
        [
            Cell(job["job_dir"], code=True),
            *(Cell(show(label(job.get(k)))) for k in keys),
            Cell(_error_text(job), code=True),
        ]
        for _, job in failed.iterrows()
    ]
    return Section("Failed jobs", [Table(["job dir", *(key_header(k) for k in keys), "error"], rows)])


def _unique_values(table: pd.DataFrame, column: str) -> str:
    return ", ".join(sorted({str(v) for v in table[column].dropna()})) or "—"


def _environment(table: pd.DataFrame) -> Section:
    """Every distinct value of each ``env`` field across all jobs, and the compute dtype they trained in."""
    columns = [c for c in table.columns if c.startswith("env.")]
    columns += [c for c in ("train.compute_dtype",) if c in table]
    if not columns:
        return Section("Environment", [Paragraph("No environment recorded.")])
    rows = [[Cell(c.split(".", 1)[1]), Cell(_environment_value(table, c))] for c in columns]
    return Section("Environment", [Table(["field", "value(s) across jobs"], rows)])


def _environment_value(table: pd.DataFrame, column: str) -> str:
    """A field's distinct values; start times as the first and last (one per job would fill the table)."""
    if column != STARTED_COLUMN:
        return _unique_values(table, column)
    times = sorted(str(t) for t in table[column].dropna())
    missing = len(table) - len(times)
    span = f"{times[0]} – {times[-1]}" if times else ""
    note = f"{missing} job(s) from before start times were recorded" if missing else ""
    return " · ".join(part for part in (span, note) if part)


def _caveats(table: pd.DataFrame) -> Section:
    """The union of every job's ``caveats``, in first-seen order."""
    lists = table.get("caveats", pd.Series()).dropna()
    found = [c for caveats in lists for c in (caveats if isinstance(caveats, list) else [caveats])]
    if not found:
        return Section("Caveats", [Paragraph("None recorded.")])
    return Section("Caveats", [Bullets(list(dict.fromkeys(str(c) for c in found)))])


def build_document(
    loaded: LoadedResults,
    dirs: Sequence[str],
    stats: Statistics | None,
    figures: list[SavedFigure] | None,
    out: Path,
    rebuilt: bool = False,
) -> Document:
    """The whole report: overview, results table, paired comparisons, figures (None: not drawn), failures,
    environment, caveats."""
    table = loaded.table
    ok = ok_jobs(table)
    failed = table[table.get("status", pd.Series(index=table.index)) != "ok"]
    keys = row_keys(ok if not ok.empty else table)
    sections = [
        *report_verdicts(stats, ok, [out, *dirs], out),
        _overview(table, ok, dirs, rebuilt),
        *_results(ok, keys, stats),
        *_paired(ok, stats, figures, out),
        _figures(figures, out),
        _failed(failed, keys),
    ]
    if loaded.errors:
        sections.append(Section("Unreadable result files (skipped)", [Bullets(loaded.errors, code=True)]))
    sections += [_environment(table), _caveats(table)]
    return Document("QLoRA benchmark report", sections)
