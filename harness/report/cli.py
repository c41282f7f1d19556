"""``qlora-report``: turn sweep directories into tables, figures and a Markdown/HTML report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from harness.report.build import NoResultsError, build_report

EXIT_NO_RESULTS = 2

_EPILOG = """\
outputs (in OUT):
  results.parquet, results.csv  one row per job (failed ones too), flattened config and metrics
                                with dotted column names (config.quant.storage, eval.<task>.acc, ...)
  report.md                     results table (mean ± std over seeds, best value bold), failed jobs,
                                environment, caveats, sources
  report.html                   the same with the figures embedded; one file that opens offline
  figures/*.png, figures/*.svg  only the figures the results support (e.g. block size only when it varies)

exit status:
  0  report written (unreadable result.json files are skipped and named on stderr)
  2  no readable result.json under any DIR, or bad arguments

example:
  qlora-report outputs/multirun/storage_sweep -o reports/storage
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
        "dirs", nargs="+", metavar="DIR", help="sweep or job directory (searched recursively)"
    )
    parser.add_argument(
        "-o",
        "--out",
        metavar="OUT",
        default=None,
        help="folder to write the report into (default: the first DIR)",
    )
    return parser


def _warn_skipped(messages: Sequence[str]) -> None:
    for message in messages:
        print(f"qlora-report: skipped {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``qlora-report``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        paths = build_report(args.dirs, args.out)
    except NoResultsError as exc:
        _warn_skipped(exc.skipped)
        print(f"qlora-report: {exc}", file=sys.stderr)
        return EXIT_NO_RESULTS
    _warn_skipped(paths.skipped)
    print(f"qlora-report: wrote {paths.markdown}, {paths.html}, {paths.parquet}, {paths.csv}")
    print(f"qlora-report: {len(paths.figures)} figures in {paths.out / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
