"""``qlora-compare BASELINE CURRENT``: the CI gate that fails when a change costs accuracy or memory."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from harness.compare.compare import compare_results
from harness.compare.errors import CompareInputError
from harness.compare.render import to_json, to_markdown
from harness.compare.tolerances import DEFAULT_TOLERANCES, load_tolerances
from harness.result import CONFIG_PREFIX, NOT_IDENTITY_KEYS, column
from harness.stats.paired import add_bootstrap_options, bootstrap_from_args

THROUGHPUT_METRICS = (column("train", "tokens_per_s"),)

DESCRIPTION = """\
Compare the results of a sweep (CURRENT) against a recorded baseline (BASELINE) and fail when a
metric worsened beyond its tolerance.

Inputs: each of BASELINE and CURRENT is a results table written by qlora-report (results.csv or
results.parquet), a sweep directory (every result.json below it is read) or one result.json.
Jobs are matched by their config.* columns except machine-local paths and retired keys:
{non_key}
Config columns that only one side has (fields added since the baseline) are left out of the match
and listed. Table cells that CSV turned into text (lists, NaN for None) match their result.json values.

Paired gate: when a job has per-sample results on both sides (samples.parquet in the job directory, or
beside a results table as qlora-report writes it), each metric is judged on the paired bootstrap CI of
current - baseline over the documents both scored: it regresses only when the whole CI lies beyond the
tolerance on the bad side. Jobs without them on either side fall back to the tolerance rules and are
named in the output.
"""

EPILOG = f"""\
exit codes:
  0  nothing regressed (improvements, extra jobs in CURRENT and ungated changes are reported only)
  1  a gated metric worsened beyond its tolerance (REGRESSED), moved beyond it either way under a
     two_sided rule (CHANGED), went missing, or a job that was ok in BASELINE failed in CURRENT
  2  bad input: a path that does not exist or cannot be read, no jobs, a BASELINE job with no
     counterpart in CURRENT, two results for one job, a bad tolerance file, an unwritable output

tolerance file (default {DEFAULT_TOLERANCES}):
  rules:                                 # first rule whose glob matches a metric column wins
    - match: ["eval.*.acc*"]             # glob(s) on the dotted column name
      direction: higher                  # higher | lower: which way is better
      kind: abs                          # abs | rel (fraction of baseline) | exact (no tolerance)
      tol: 0.01
      stderr_k: 1.0                      # allowed = max(tol, stderr_k * sqrt(se_base^2 + se_cur^2))
      gate: true                         # false: worsening is reported as info, exit code unaffected
      two_sided: false                   # true: a move beyond tol in the good direction fails too (CHANGED)
  Columns no rule matches are not compared; <metric>_stderr columns only widen their metric.

refreshing a baseline (after an intended change, from a sweep that ran on the CI machine):
  qlora-report runs/smoke -o reports/baselines/smoke
  git add reports/baselines/smoke/results.csv reports/baselines/smoke/samples.parquet && git commit
"""


def build_parser() -> argparse.ArgumentParser:
    non_key = ", ".join(CONFIG_PREFIX + key for key in NOT_IDENTITY_KEYS)
    parser = argparse.ArgumentParser(
        prog="qlora-compare",
        description=DESCRIPTION.format(
            non_key=textwrap.fill(non_key, 96, initial_indent="  ", subsequent_indent="  ")
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "baseline", metavar="BASELINE", type=Path, help="baseline results table or sweep directory"
    )
    parser.add_argument(
        "current", metavar="CURRENT", type=Path, help="current results table or sweep directory"
    )
    parser.add_argument(
        "--tolerances",
        type=Path,
        default=DEFAULT_TOLERANCES,
        metavar="FILE",
        help="tolerance YAML file (default: %(default)s)",
    )
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the Markdown report here")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write rows and summary as JSON here")
    parser.add_argument(
        "--gate-throughput",
        action="store_true",
        help=f"fail on throughput drops too ({', '.join(THROUGHPUT_METRICS)}); "
        "machines are noisy, so by default they are only reported",
    )
    add_bootstrap_options(parser)
    parser.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="GLOB",
        help="fail on metrics matching GLOB even where their rule says gate: false (repeatable)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; print Markdown to stdout; return the exit code documented in --help."""
    parser = build_parser()
    args = parser.parse_args(argv)
    gates = [*args.gate, *(THROUGHPUT_METRICS if args.gate_throughput else ())]
    bootstrap = bootstrap_from_args(parser, args)
    try:
        tolerances = load_tolerances(args.tolerances).with_gates(gates)
        comparison = compare_results([args.baseline], [args.current], tolerances, bootstrap)
        markdown = to_markdown(comparison)
        print(markdown, end="")
        _write(args.markdown, markdown)
        _write(args.json, to_json(comparison))
    except CompareInputError as exc:
        print(f"qlora-compare: error: {exc}", file=sys.stderr)
        return 2
    return comparison.exit_code


def _write(path: Path | None, text: str) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise CompareInputError(f"cannot write {path}: {exc}") from exc


if __name__ == "__main__":
    sys.exit(main())
