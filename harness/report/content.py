"""What a report says, section by section, independent of whether it is rendered as Markdown or HTML."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.report.document import Block, Bullets, Cell, Document, Image, Paragraph, Section, Table
from harness.report.figures import SavedFigure
from harness.report.summary import key_header, row_keys, summarize
from harness.report.table import LoadedResults, ok_jobs
from harness.report.values import label, show

_MESSAGE_CHARS = 300


def _overview(table: pd.DataFrame, ok: pd.DataFrame, dirs: Sequence[str]) -> Section:
    sweeps = sorted({str(s) for s in table.get("sweep.name", pd.Series()).dropna()})
    named = f" Sweep: {', '.join(sweeps)}." if sweeps else ""
    return Section(
        "Overview",
        [
            Paragraph(
                f"Jobs read: {len(table)} ({len(ok)} finished, {len(table) - len(ok)} failed).{named} "
                "Directories searched for result.json:"
            ),
            Bullets([str(d) for d in dirs], code=True),
        ],
    )


def _results(ok: pd.DataFrame) -> Section:
    if ok.empty:
        return Section("Results", [Paragraph("No job finished, so there is nothing to tabulate.")])
    summary = summarize(ok)
    varied = ", ".join(key_header(k) for k in summary.keys)
    return Section(
        "Results",
        [
            Paragraph(
                f"Rows are the configurations the jobs differ in ({varied}). Each cell is the mean ± "
                "sample standard deviation over the seeds of that row (one value when there is one seed). "
                "Bold marks the best value of a column: ↑ higher is better, ↓ lower is better. Per-job "
                "values are in results.csv and results.parquet."
            ),
            summary.table,
            Paragraph("Where each number comes from, row by row (job directories):"),
            Bullets(summary.sources),
        ],
    )


def _figures(figures: list[SavedFigure], out: Path) -> Section:
    if not figures:
        return Section("Figures", [Paragraph("No figure: the results hold nothing the figures need.")])
    blocks: list[Block] = [Image(str(f.png.relative_to(out)), f.caption) for f in figures]
    return Section("Figures", [*blocks, Paragraph("Each figure is also saved as SVG next to its PNG.")])


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
    rows = [[Cell(c.split(".", 1)[1]), Cell(_unique_values(table, c))] for c in columns]
    return Section("Environment", [Table(["field", "value(s) across jobs"], rows)])


def _caveats(table: pd.DataFrame) -> Section:
    """The union of every job's ``caveats``, in first-seen order."""
    lists = table.get("caveats", pd.Series()).dropna()
    found = [c for caveats in lists for c in (caveats if isinstance(caveats, list) else [caveats])]
    if not found:
        return Section("Caveats", [Paragraph("None recorded.")])
    return Section("Caveats", [Bullets(list(dict.fromkeys(str(c) for c in found)))])


def build_document(
    loaded: LoadedResults, dirs: Sequence[str], figures: list[SavedFigure], out: Path
) -> Document:
    """The whole report: overview, results table, figures, failures, environment, caveats."""
    table = loaded.table
    ok = ok_jobs(table)
    failed = table[table.get("status", pd.Series(index=table.index)) != "ok"]
    sections = [
        _overview(table, ok, dirs),
        _results(ok),
        _figures(figures, out),
        _failed(failed, row_keys(ok if not ok.empty else table)),
    ]
    if loaded.errors:
        sections.append(Section("Unreadable result files (skipped)", [Bullets(loaded.errors, code=True)]))
    sections += [_environment(table), _caveats(table)]
    return Document("QLoRA benchmark report", sections)
