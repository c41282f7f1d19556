"""What a sweep set out to test, and what its runs say: declared hypotheses in, ``verdicts.csv`` out.

Each named sweep (``harness/conf/sweep/<name>.yaml``) declares under ``report.hypotheses`` what it tests,
before it runs: the paper's claim and where it is, the metric, the comparison (two override-style
selectors, like ``qlora-report --reference``), the kind — superiority in a stated direction with the effect
the claim implies, or equivalence within a margin — and whether it is primary. Primary hypotheses are one
family per sweep, Holm-adjusted; the others are exploratory, Benjamini–Hochberg-adjusted among themselves.

A verdict reads the comparison's own test (:class:`harness.stats.PairedEstimate`: the same procedure as its
CI) and says one of: ``holds``, ``contradicts``, ``cannot tell at this n`` (with the n that would detect
the *declared* effect with 80 % power), ``not shown (this n detects the declared effect)``,
``equivalent within ±m``, ``not shown equivalent``, ``contradicts (differs by more than ±m)`` (the whole
CI beyond the margin) or ``not tested`` (a row or comparison is missing). For equivalence, "n to decide" is
the n at which a true difference of 0 would show equivalence with 80 % power.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pandas as pd
import yaml

from harness.paths import SWEEP_DIR
from harness.report.comparisons import SelectorError, Statistics, parse_selector, select_row
from harness.report.load import COMMIT_COLUMN, joined_commits
from harness.report.render import Cell, Paragraph, Section, Table
from harness.stats import PairedEstimate, benjamini_hochberg, holm
from harness.stats.paired import POWER, alpha_of, mde_factor

VERDICTS_FILE = "verdicts.csv"
KINDS = ("superiority", "equivalence")
DIRECTIONS = ("lower", "higher")
COLUMNS = [
    "hypothesis",
    "claim",
    "kind",
    "primary",
    "task",
    "metric",
    "config",
    "reference",
    "declared",
    "delta",
    "ci_low",
    "ci_high",
    "p",
    "p_adjusted",
    "adjustment",
    "verdict",
    "n",
    "units",
    "n_to_decide",
    "method",
    "commit",
]


class HypothesisError(ValueError):
    """A declared hypothesis that is malformed; the message names the sweep file, the id and the field."""


@dataclass(frozen=True)
class Hypothesis:
    """One declared test of a sweep, in the units of the comparison it reads (comparisons.csv's
    ``task``/``metric`` and raw metric units: perplexity, accuracy as a fraction, loss in nats).

    ``effect`` (superiority) is the difference the claim implies, for the n that would decide; ``margin``
    (equivalence) is the largest difference still called equivalent. With ``relative`` both are fractions
    of the reference's value (``margin: 0.01``: within ±1 % perplexity).
    """

    id: str
    claim: str
    task: str
    metric: str
    config: str
    reference: str
    kind: str
    primary: bool
    direction: str | None = None
    effect: float | None = None
    margin: float | None = None
    relative: bool = False

    def __post_init__(self) -> None:
        where = f"hypothesis {self.id!r}"
        if self.kind not in KINDS:
            raise HypothesisError(f"{where}: kind {self.kind!r}; allowed: {list(KINDS)}")
        if self.kind == "superiority" and (self.direction not in DIRECTIONS or not _positive(self.effect)):
            raise HypothesisError(
                f"{where}: superiority needs direction in {list(DIRECTIONS)} and effect > 0, "
                f"got direction={self.direction!r}, effect={self.effect!r}"
            )
        if self.kind == "equivalence" and not _positive(self.margin):
            raise HypothesisError(f"{where}: equivalence needs margin > 0, got {self.margin!r}")
        for selector in (self.config, self.reference):
            parse_selector(selector, f"{where}:")

    def size(self, reference_value: float) -> float:
        """The declared effect or margin in the metric's units."""
        value = self.effect if self.kind == "superiority" else self.margin
        return float(value) * abs(reference_value) if self.relative else float(value)

    def declared(self) -> str:
        what = f"{self.direction} by {self.effect:g}" if self.kind == "superiority" else f"±{self.margin:g}"
        return what + (" (relative)" if self.relative else "")


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class Declaration:
    """A sweep's declared hypotheses and the file they came from."""

    sweep: str
    path: Path
    hypotheses: list[Hypothesis]


def read_declaration(sweep: str, sweep_dir: Path = SWEEP_DIR) -> Declaration:
    """``report.hypotheses`` of ``sweep_dir/<sweep>.yaml``; an unknown sweep or a bad entry raises
    :class:`HypothesisError` naming the file and what is wrong."""
    path = sweep_dir / f"{sweep}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in sweep_dir.glob("*.yaml"))
        raise HypothesisError(f"no sweep {sweep!r}: {path} does not exist; sweeps: {known}")
    entries = ((yaml.safe_load(path.read_text()) or {}).get("report") or {}).get("hypotheses") or []
    allowed = {f.name for f in fields(Hypothesis)}
    hypotheses = []
    for entry in entries:
        unknown = sorted(set(entry) - allowed) if isinstance(entry, dict) else ["(not a mapping)"]
        if unknown:
            raise HypothesisError(f"{path}: hypothesis {entry!r} has unknown key(s) {unknown}")
        try:
            hypotheses.append(Hypothesis(**entry))
        except (TypeError, SelectorError) as exc:
            raise HypothesisError(f"{path}: {exc}") from exc
    ids = [h.id for h in hypotheses]
    if len(set(ids)) != len(ids):
        raise HypothesisError(f"{path}: hypothesis ids must be unique, got {ids}")
    return Declaration(sweep, path, hypotheses)


def find_declaration(places: Sequence[str | os.PathLike], sweep_dir: Path = SWEEP_DIR) -> Declaration | None:
    """The declaration of the first of ``places`` (the report folder, then the result directories) whose
    folder name is a named sweep: ``runs/<sweep>`` is where a sweep writes, ``reports/<sweep>`` where its
    report goes (``make report``, ``qlora-report --from-report reports/<sweep>``). None when none is."""
    for place in places:
        name = Path(place).resolve().name
        if (sweep_dir / f"{name}.yaml").is_file():
            return read_declaration(name, sweep_dir)
    return None


def _oriented(
    stats: Statistics, h: Hypothesis, config: int, reference: int
) -> tuple[PairedEstimate, str] | None:
    """config − reference on the hypothesis's task and metric, with what was paired; None if not compared."""
    for c in stats.comparisons:
        if (c.task, c.metric) == (h.task, h.metric) and {c.config, c.reference} == {config, reference}:
            estimate = c.estimate if c.config == config else c.estimate.flipped()
            return estimate, c.units
    return None


def _family_p(h: Hypothesis, estimate: PairedEstimate) -> float:
    """Superiority: the comparison's two-sided p (a contradiction must be able to show too). Equivalence:
    the two one-sided tests' larger p (TOST) against ±margin, from the same null distribution."""
    if h.kind == "superiority":
        return estimate.p_value
    margin = h.size(estimate.baseline)
    return max(estimate.p_beyond(-margin, above=True), estimate.p_beyond(margin, above=False))


def _n_to_decide(h: Hypothesis, estimate: PairedEstimate) -> float:
    """Units that give 80 % power at the declared size: for superiority the comparison's MDE scaled to the
    declared effect; for equivalence the n where TOST at true difference 0 rejects both sides."""
    size = h.size(estimate.baseline)
    if h.kind == "superiority":
        return estimate.n_to_detect(size)
    if not math.isfinite(estimate.mde):
        return math.nan
    normal = NormalDist()
    alpha = alpha_of(estimate.confidence)
    needed = normal.inv_cdf(1 - alpha) + normal.inv_cdf(1 - (1 - POWER) / 2)
    standard_error = estimate.mde / mde_factor(estimate.confidence)
    return math.ceil(estimate.n * (needed * standard_error / size) ** 2)


def _verdict(h: Hypothesis, estimate: PairedEstimate, p_adjusted: float, n_to_decide: float) -> str:
    alpha = alpha_of(estimate.confidence)
    if not math.isfinite(p_adjusted):
        return "not tested (too few units for a test)"
    if h.kind == "equivalence":
        margin = h.size(estimate.baseline)
        if p_adjusted < alpha:
            return f"equivalent within ±{margin:.4g}"
        outside = estimate.ci_low > margin or estimate.ci_high < -margin
        return f"contradicts (differs by more than ±{margin:.4g})" if outside else "not shown equivalent"
    if p_adjusted < alpha:
        better = estimate.delta < 0 if h.direction == "lower" else estimate.delta > 0
        return "holds" if better else "contradicts"
    if math.isfinite(n_to_decide) and n_to_decide <= estimate.n:
        return "not shown (this n detects the declared effect)"
    return "cannot tell at this n"


def _commits(ok: pd.DataFrame, rows: Sequence[Sequence[int]]) -> str:
    """The distinct git commits the jobs of ``rows`` ran at."""
    if COMMIT_COLUMN not in ok:
        return ""
    jobs = [job for row in rows for job in row]
    return joined_commits(ok[COMMIT_COLUMN][jobs].dropna())


def _evaluate_one(stats: Statistics, ok: pd.DataFrame, h: Hypothesis) -> dict[str, Any]:
    """One hypothesis's record before adjustment (``p`` NaN when it could not be tested)."""
    record = {"hypothesis": h.id, "claim": h.claim, "kind": h.kind, "primary": h.primary, "task": h.task}
    record |= {"metric": h.metric, "config": h.config, "reference": h.reference, "declared": h.declared()}
    try:
        config, reference = (
            select_row(ok, stats.rows, s, f"hypothesis {h.id!r}") for s in (h.config, h.reference)
        )
    except SelectorError as exc:
        return record | {"p": math.nan, "verdict": f"not tested ({exc})"}
    found = _oriented(stats, h, config, reference)
    record |= {"commit": _commits(ok, [stats.rows[config].jobs, stats.rows[reference].jobs])}
    if found is None:
        return record | {"p": math.nan, "verdict": f"not tested (no {h.task} {h.metric} comparison)"}
    estimate, units = found
    return record | {
        "delta": estimate.delta,
        "ci_low": estimate.ci_low,
        "ci_high": estimate.ci_high,
        "p": _family_p(h, estimate),
        "n": estimate.n,
        "units": units,
        "n_to_decide": _n_to_decide(h, estimate) if math.isfinite(estimate.mde) else math.nan,
        "method": estimate.method,
        "_estimate": estimate,
    }


def evaluate(stats: Statistics, ok: pd.DataFrame, declaration: Declaration) -> pd.DataFrame:
    """``verdicts.csv``: one row per declared hypothesis, p adjusted within its family (Holm over the
    primary ones, Benjamini–Hochberg over the exploratory ones), then the verdict."""
    records = [_evaluate_one(stats, ok, h) for h in declaration.hypotheses]
    for primary, adjust, name in ((True, holm, "Holm"), (False, benjamini_hochberg, "BH")):
        family = [r for r in records if r["primary"] == primary]
        tested = sum(math.isfinite(r["p"]) for r in family)
        for record, adjusted in zip(family, adjust([r["p"] for r in family]), strict=True):
            record["p_adjusted"] = adjusted
            record["adjustment"] = f"{name} over {tested} {'primary' if primary else 'exploratory'}"
    for h, record in zip(declaration.hypotheses, records, strict=True):
        estimate = record.pop("_estimate", None)
        if estimate is not None:
            record["verdict"] = _verdict(h, estimate, record["p_adjusted"], record["n_to_decide"])
    return pd.DataFrame(records, columns=COLUMNS).astype({"n": "Int64", "n_to_decide": "Int64"})


def _number(value: Any, digits: int = 4) -> str:
    return (
        "—"
        if value is None or (isinstance(value, float) and not math.isfinite(value))
        else f"{value:.{digits}g}"
    )


def verdicts_section(frame: pd.DataFrame, declaration: Declaration) -> Section:
    """The report's opening section: each declared hypothesis, its test and its verdict."""
    intro = (
        f"Declared in `harness/conf/sweep/{declaration.path.name}` (`report.hypotheses`). Primary hypotheses "
        "are one family, Holm-adjusted; the others are exploratory (Benjamini–Hochberg among themselves). "
        "Δ is config − reference in the metric's raw units with its 95 % CI; p is two-sided (superiority) "
        "or the larger one-sided p against ±margin (equivalence); 'n to decide' is the n that detects the "
        "declared effect with 80 % power (equivalence: shows it within the margin if the true difference "
        "is 0)."
    )
    headers = ["hypothesis", "claim", "comparison", "declared", "Δ [95 % CI]", "p (adjusted)", "verdict"]
    headers += ["n", "n to decide", "commit"]
    rows = [
        [
            Cell(r.hypothesis + (" (primary)" if r.primary else "")),
            Cell(r.claim),
            Cell(f"{r.task} {r.metric}: {r.config} vs {r.reference}", code=True),
            Cell(r.declared),
            Cell(f"{_number(r.delta)} [{_number(r.ci_low)}, {_number(r.ci_high)}]"),
            Cell(f"{_number(r.p, 2)} ({_number(r.p_adjusted, 2)}, {r.adjustment})"),
            Cell(str(r.verdict)),
            Cell(f"{_number(r.n)} {r.units if isinstance(r.units, str) else ''}".strip()),
            Cell(_number(r.n_to_decide, 6)),
            Cell(str(r.commit or "—")),
        ]
        for r in frame.itertuples()
    ]
    return Section("Verdicts", [Paragraph(intro), Table(headers, rows)])


def report_verdicts(
    stats: Statistics | None, ok: pd.DataFrame, places: Sequence[str | os.PathLike], out: Path
) -> list[Section]:
    """The Verdicts section of a report whose folder (or result directory) is named after a sweep with
    declared hypotheses (:func:`find_declaration` over ``places``), and ``out/verdicts.csv`` beside it;
    nothing when no declaration applies or no job finished."""
    declaration = find_declaration(places)
    if stats is None or declaration is None or not declaration.hypotheses:
        return []
    frame = evaluate(stats, ok, declaration)
    frame.to_csv(out / VERDICTS_FILE, index=False)
    return [verdicts_section(frame, declaration)]
