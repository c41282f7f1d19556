"""``qlora-report``: result directories in, a report folder out (tables, figures, Markdown, HTML).

:func:`build_report` is the one call (sweep code uses it after a sweep); what the report contains, section
by section, is :mod:`harness.report.document`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.report.comparisons import SelectorError, Statistics, compute_statistics, select_reference
from harness.report.document import build_document
from harness.report.figures import draw_figures
from harness.report.load import (
    LoadedResults,
    PoolError,
    ReportFolderError,
    load_results,
    merge_task_jobs,
    ok_jobs,
    pool_samples,
    portable,
    read_report,
    write_samples_table,
    write_table,
)
from harness.report.metrics import configurations, row_keys
from harness.report.render import (
    render_html,
    render_markdown,
)
from harness.stats import Bootstrap, load_samples
from harness.stats.paired import DEFAULT_BOOTSTRAP, add_bootstrap_options, bootstrap_from_args


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
    comparisons: list[Path]  # comparisons.parquet and .csv; empty when no job finished
    samples: Path | None  # every job's samples.parquet in one file; None when no job has one
    markdown: Path
    html: Path
    figures: list[Path]
    skipped: list[str]
    figure_problems: list[str]  # legibility problems found in the saved figures (also listed in the report)


def default_out(dirs: Sequence[str | os.PathLike]) -> Path:
    """The first directory given (or the folder of a given ``result.json``): a report sits by its sweep."""
    first = Path(dirs[0])
    return first.parent if first.is_file() else first


def _statistics(
    ok: pd.DataFrame,
    samples: dict[str, pd.DataFrame],
    reference: str | None,
    bootstrap: Bootstrap,
    reference_row: str | None = None,
) -> Statistics | None:
    """Rows, reference and paired comparisons of the finished jobs; None when no job finished.

    ``reference_row`` (a row name, a rebuilt report's former reference) applies when no selector is given.
    """
    if ok.empty:
        return None
    rows = configurations(ok, row_keys(ok))
    named = [i for i, row in enumerate(rows) if reference is None and row.name == reference_row]
    chosen = named[0] if named else select_reference(ok, rows, reference)
    return compute_statistics(ok, rows, samples, chosen, bootstrap)


def committed_reference(folder: Path) -> str | None:
    """The reference row of a report folder's comparisons: the one every other row was compared with."""
    path = folder / "comparisons.parquet"
    if not path.is_file():
        return None
    frame = pd.read_parquet(path, columns=["config", "reference"])
    names = set(frame["config"]) | set(frame["reference"])
    for name in frame["reference"].unique():
        if set(frame.loc[frame["reference"] == name, "config"]) | {name} == names:
            return str(name)
    return None


def _read(
    dirs: Sequence[str | os.PathLike], from_report: Path | None
) -> tuple[LoadedResults, dict[str, pd.DataFrame]]:
    """The jobs and their per-sample results, from result.json files under ``dirs`` or a report folder."""
    if from_report is not None:
        try:
            table, samples = read_report(from_report)
        except ReportFolderError as exc:
            raise NoResultsError(str(exc)) from exc
        return LoadedResults(table), samples
    if not dirs:
        raise NoResultsError("no directory given")
    loaded = load_results(dirs)
    if loaded.table.empty:
        searched = ", ".join(str(d) for d in dirs)
        raise NoResultsError(f"no readable result.json under {searched}", loaded.errors)
    return loaded, load_samples(loaded.table, source=None)


def build_report(
    dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    reference: str | None = None,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
    pools: dict[str, list[str]] | None = None,
    from_report: str | os.PathLike | None = None,
    figures: bool = True,
) -> ReportPaths:
    """Read every ``result.json`` under ``dirs`` and write the report into ``out`` (default: the first dir).

    Writes ``results.{parquet,csv}``, ``comparisons.{parquet,csv}`` (each row against ``reference``, an
    override-style selector such as ``"quant.storage=bf16"``, and every other pair), ``samples.parquet``
    (the jobs' per-sample results in the report layout of :mod:`harness.stats.samples`), ``report.md``,
    ``report.html`` and ``figures/*.png|svg``. Unreadable files are skipped and listed in the report and
    in ``ReportPaths.skipped``; raises :class:`NoResultsError` when nothing could be read and
    :class:`SelectorError` when ``reference`` does not pick exactly one row, before writing anything.
    ``pools`` (``{name: tasks}``) adds each pool's accuracy over all its tasks' documents as one more task
    (:func:`harness.report.load.pool_samples`; :class:`PoolError` when a pool names tasks no job scored).

    Jobs of one config that each scored some of its tasks are one row
    (:func:`harness.report.load.merge_task_jobs`).

    ``from_report`` rebuilds a report from a report folder instead (its results.parquet and samples.parquet,
    written by this function, pools included; default ``out``: that folder; default reference: the one it
    used). Job paths
    are written relative to their sweep folder, so no report names a machine's absolute path.

    ``figures=False`` skips drawing (most of the run time: matplotlib's layout and the legibility check);
    the tables and verdicts are the same.
    """
    pools = pools or {}
    folder = Path(from_report) if from_report is not None else None
    loaded, samples = _read(dirs, folder)
    table, samples = merge_task_jobs(*portable(loaded.table, samples))
    table, pooled = pool_samples(table, samples, pools)
    loaded = LoadedResults(table, loaded.errors)
    ok = ok_jobs(table)
    former = committed_reference(folder) if folder is not None else None
    stats = _statistics(ok, pooled, reference, bootstrap, former)
    out = Path(out) if out is not None else folder if folder is not None else default_out(dirs)
    out.mkdir(parents=True, exist_ok=True)
    parquet, csv = write_table(loaded.table, out, "results")
    comparisons = list(write_table(stats.frame(), out, "comparisons")) if stats else []
    finished = {str(job) for job in ok.get("job_dir", [])}
    samples_path = write_samples_table({j: f for j, f in pooled.items() if j in finished}, out)
    drawn = draw_figures(ok, stats, out / "figures") if figures else None
    searched = [str(folder)] if folder is not None else [str(d) for d in dirs]
    document = build_document(loaded, searched, stats, drawn, out, rebuilt=folder is not None)
    markdown, html = out / "report.md", out / "report.html"
    markdown.write_text(render_markdown(document), encoding="utf-8")
    html.write_text(render_html(document, out), encoding="utf-8")
    problems = [f"{f.png}: {p}" for f in drawn or [] for p in f.problems]
    return ReportPaths(
        out,
        parquet,
        csv,
        comparisons,
        samples_path,
        markdown,
        html,
        [f.png for f in drawn or []],
        loaded.errors,
        problems,
    )


EXIT_NO_RESULTS = 2

_EPILOG = """\
outputs (in OUT):
  results.parquet, results.csv  one row per job (failed ones too), flattened config and metrics
                                with dotted column names (config.quant.storage, eval.<task>.acc, ...)
  comparisons.parquet, .csv     one row per (task, metric, config, reference): n, value,
                                reference_value, delta, ci_low, ci_high, p_value, mde, significant
                                (paired over documents, seeds or training steps)
  samples.parquet               the jobs' per-sample results in one file (job_dir column)
  report.md                     results table (mean [95 % CI]; bold only when significantly better than
                                every other row), paired comparisons (forest plot, pairwise matrices),
                                figures, failed jobs, environment, caveats
  report.html                   the same with the figures embedded; one file that opens offline
  figures/*.png, figures/*.svg  only the figures the results support (e.g. block size only when it varies)

exit status:
  0  report written (unreadable result.json files are skipped and named on stderr)
  2  no readable result.json under any DIR, a --reference that picks no row or several, a --pool of
     tasks no job scored, or bad arguments

examples:
  qlora-report runs/datatypes -o reports/datatypes
  qlora-report --from-report reports/datatypes      (rebuild from the committed tables)
  qlora-report runs/datatypes -o reports/datatypes --reference "quant.storage=nf4 quant.double_quant=true"
  qlora-report runs/zeroshot -o reports/zeroshot \
    --pool zeroshot_mean=arc_easy_local,arc_challenge_local,piqa_local,winogrande_local,hellaswag_local
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qlora-report",
        description="Read every result.json under the given directories (failed jobs included) and write "
        "a results table, figures and a paper-style report.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dirs", nargs="*", metavar="DIR", help="sweep or job directory (searched recursively)"
    )
    parser.add_argument(
        "--from-report",
        metavar="FOLDER",
        default=None,
        help="rebuild the report of a report folder from its results.parquet and samples.parquet instead "
        "of reading result.json files (keeps each job's recorded commit, machine and date; default OUT: "
        "FOLDER; default --reference: the row FOLDER's comparisons used)",
    )
    parser.add_argument(
        "-o",
        "--out",
        metavar="OUT",
        default=None,
        help="folder to write the report into (default: the first DIR)",
    )
    parser.add_argument(
        "--reference",
        metavar="SELECTOR",
        default=None,
        help="the row every other is compared with, as key=value pairs ('quant.storage=bf16'); "
        "default: the 16-bit row if there is one, else the first row",
    )
    parser.add_argument(
        "--pool",
        metavar="NAME=TASK,TASK,...",
        action="append",
        default=[],
        help="one more task NAME: the accuracy over every document of the listed tasks (each task's "
        "acc_norm, else acc), compared per document like any task; with equal documents per task, the "
        "paper's mean zero-shot accuracy. Repeatable",
    )
    parser.add_argument(
        "--no-figures",
        dest="figures",
        action="store_false",
        help="write the tables, verdicts and report without drawing figures (several times faster)",
    )
    add_bootstrap_options(parser)
    return parser


def _pools(parser: argparse.ArgumentParser, specs: Sequence[str]) -> dict[str, list[str]]:
    pools = {}
    for spec in specs:
        name, _, tasks = spec.partition("=")
        if not name or not tasks:
            parser.error(f"--pool {spec!r}: expected NAME=TASK,TASK,...")
        pools[name] = [task for task in tasks.split(",") if task]
    return pools


def _warn_skipped(messages: Sequence[str]) -> None:
    for message in messages:
        print(f"qlora-report: skipped {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``qlora-report``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    bootstrap = bootstrap_from_args(parser, args)
    if bool(args.dirs) == (args.from_report is not None):
        parser.error("give either DIR... (result.json files) or --from-report FOLDER, not both or neither")
    pools = _pools(parser, args.pool)
    try:
        paths = build_report(
            args.dirs, args.out, args.reference, bootstrap, pools, args.from_report, args.figures
        )
    except NoResultsError as exc:
        _warn_skipped(exc.skipped)
        print(f"qlora-report: {exc}", file=sys.stderr)
        return EXIT_NO_RESULTS
    except (SelectorError, PoolError) as exc:
        print(f"qlora-report: {exc}", file=sys.stderr)
        return EXIT_NO_RESULTS
    _warn_skipped(paths.skipped)
    written = [paths.markdown, paths.html, paths.parquet, paths.csv, *paths.comparisons]
    print(f"qlora-report: wrote {', '.join(str(p) for p in written)}")
    if paths.samples is not None:
        print(f"qlora-report: per-sample results of every job in {paths.samples}")
    if args.figures:
        print(f"qlora-report: {len(paths.figures)} figures in {paths.out / 'figures'}")
    for problem in paths.figure_problems:
        print(f"qlora-report: warning: figure legibility: {problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
