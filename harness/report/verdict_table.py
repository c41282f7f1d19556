"""The README's verdict table, generated from every ``reports/<sweep>/verdicts.csv``: ``make verdicts``.

Each row names the commit its runs were made at; a row is *stale* when code that can change results has
changed since (any commit touching ``harness/`` outside ``report/``, ``stats/`` and ``compare/``, which only
read results; ``conf/sweep/``: a sweep's grid and declared hypotheses, while each run records the config it
ran; and ``env.py``, which records where and when a job ran), and says which commit first did. Commits
listed in ``.results-neutral-revs`` at the checkout's root (moved imports and the like, each with the
evidence that results stayed bit-identical) do not count. The table
sits in README.md between the markers below; ``--check`` exits 1 when the README's table is not the
generated one (a test runs it).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.env import short_commit
from harness.paths import CHECKOUT
from harness.report.verdicts import VERDICTS_FILE

START, END = "<!-- verdicts:start -->", "<!-- verdicts:end -->"
CANNOT_CHANGE_RESULTS = (
    "harness/report",
    "harness/stats",
    "harness/compare",
    "harness/conf/sweep",
    "harness/env.py",
)
NEUTRAL_REVS = ".results-neutral-revs"
HEADERS = ["sweep", "hypothesis", "claim", "Δ [95 % CI]", "p (adjusted)", "verdict", "run", "current"]


def neutral_commits(checkout: Path) -> set[str]:
    """Full hashes listed in ``.results-neutral-revs`` (one per line; ``#`` starts a comment)."""
    path = checkout / NEUTRAL_REVS
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return {line.split("#")[0].strip() for line in lines} - {""}


def first_change_since(commit: str, checkout: Path) -> str | None:
    """The oldest commit after ``commit`` that touched result-affecting code and is not listed as
    neutral, or None when none did; ``unknown`` when git does not know ``commit`` (or it was made from a
    dirty tree)."""
    if commit.endswith("-dirty"):
        return "unknown (dirty tree)"
    excluded = [f":(exclude){path}" for path in CANNOT_CHANGE_RESULTS]
    found = subprocess.run(
        ["git", "log", "--reverse", "--format=%H %h", f"{commit}..HEAD", "--", "harness", *excluded],
        cwd=checkout,
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        return "unknown (commit not in this checkout)"
    neutral = neutral_commits(checkout)
    logged = (line.split() for line in found.stdout.splitlines())
    changes = [short for full, short in logged if full not in neutral]
    return changes[0] if changes else None


def _current(commits: str, checkout: Path) -> str:
    firsts = [first_change_since(c, checkout) for c in commits.split(",") if c]
    stale = sorted({f for f in firsts if f is not None})
    if not firsts:
        return "no runs"
    return f"stale (code changed at {', '.join(stale)})" if stale else "yes"


def _number(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:+.4g}"


def _row(sweep: str, record: pd.Series, checkout: Path) -> str:
    commits = record["commit"] if isinstance(record["commit"], str) else ""
    primary = " (primary)" if record["primary"] else ""
    cells = [
        f"`{sweep}`",
        f"`{record['hypothesis']}`{primary}",
        str(record["claim"]),
        f"{_number(record['delta'])} [{_number(record['ci_low'])}, {_number(record['ci_high'])}]",
        "—" if not math.isfinite(record["p_adjusted"]) else f"{record['p_adjusted']:.3g}",
        f"**{record['verdict']}**",
        ", ".join(f"`{short_commit(c)}`" for c in commits.split(",") if c) or "—",
        _current(commits, checkout),
    ]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def generate(reports: Path, checkout: Path) -> str:
    """The Markdown table of every sweep's verdicts, sweeps in name order, rows as each file has them."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for path in sorted(reports.glob(f"*/{VERDICTS_FILE}")):
        frame = pd.read_csv(path)
        lines += [_row(path.parent.name, record, checkout) for _, record in frame.iterrows()]
    return "\n".join(lines)


def replace_table(readme: str, table: str) -> str:
    """``readme`` with the text between the markers replaced by ``table``; markers missing is an error."""
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise ValueError(f"README needs one {START} ... {END} pair around the verdict table")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.report.verdict_table [--check]``: write (or check) README.md's verdict table."""
    parser = argparse.ArgumentParser(prog="make verdicts", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's table is out of date")
    args = parser.parse_args(argv)
    if CHECKOUT is None:
        parser.error("needs the project's checkout (README.md, reports/ and git history)")
    readme = CHECKOUT / "README.md"
    text = readme.read_text(encoding="utf-8")
    wanted = replace_table(text, generate(CHECKOUT / "reports", CHECKOUT))
    if args.check:
        if wanted != text:
            print("README.md's verdict table is out of date: run `make verdicts`", file=sys.stderr)
        return int(wanted != text)
    readme.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
