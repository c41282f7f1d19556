"""Declared hypotheses: every named sweep's declaration parses and names rows its sweep runs; verdicts
follow the comparison's own test, Holm over the primary family, the declared effect for "n to decide";
qlora-report opens with them when its folder is named after a sweep."""

from __future__ import annotations

import contextlib
import io
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests
from test_report_paired import write_datatypes_sweep
from test_sweep import _sweep_jobs

from harness.config import config_dict, validate_config
from harness.paths import CHECKOUT, SWEEP_DIR
from harness.report.cli import main
from harness.report.comparisons import Comparison, Statistics
from harness.report.metrics import Row, show
from harness.report.verdict_table import NEUTRAL_REVS
from harness.report.verdicts import (
    COLUMNS,
    Declaration,
    Hypothesis,
    HypothesisError,
    evaluate,
    read_declaration,
)
from harness.stats import Bootstrap, paired_corpus, paired_mean

NAMED = sorted(p.stem for p in SWEEP_DIR.glob("*.yaml") if p.stem != "smoke")


def _value(config: dict, dotted: str) -> str:
    node = config
    for key in dotted.split("."):
        node = node[key]
    return show(node).lower()


def _row_identity(config: dict) -> dict:
    """What makes a report row: the config but for the seed (seeds are pooled) and ``eval.tasks`` (jobs that
    scored one task each are merged, harness.report.load.merge_task_jobs)."""
    return {k: ({**v, "tasks": None} if k == "eval" else v) for k, v in config.items() if k != "seed"}


@pytest.mark.parametrize("name", NAMED)
def test_each_named_sweep_declares_hypotheses_that_pick_one_configuration_of_its_jobs(job_config, name):
    """Every selector of every declared hypothesis matches exactly one configuration (seeds aside) among
    the jobs the sweep runs, so no verdict can silently read the wrong row or none."""
    declaration = read_declaration(name)
    assert declaration.hypotheses and any(h.primary for h in declaration.hypotheses)
    configs = [config_dict(validate_config(job_config(*job))) for job in _sweep_jobs(name)]
    for h in declaration.hypotheses:
        for selector in (h.config, h.reference):
            wanted = dict(pair.split("=") for pair in selector.split())
            hits = {
                repr(_row_identity(c))
                for c in configs
                if all(_value(c, key) == value.lower() for key, value in wanted.items())
            }
            assert len(hits) == 1, f"{name}: {h.id}: {selector!r} matches {len(hits)} configurations"


def test_a_sweep_with_hypotheses_composes_and_keeps_them_out_of_the_jobs_identity(job_config):
    from harness.result import config_hash

    with_arm = config_dict(validate_config(job_config("+sweep=targets", "+arm=targets_bf16_all-linear")))
    assert with_arm["report"]["hypotheses"][0]["id"] == "nf4_all_linear_matches_16bit"
    assert (with_arm["quant"]["storage"], with_arm["lora"]["targets"]) == ("bf16", "all-linear")
    bare = {**with_arm, "report": {"hypotheses": []}}
    assert config_hash(with_arm) == config_hash(bare)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kind": "superior"}, r"kind 'superior'; allowed: \['superiority', 'equivalence'\]"),
        ({"direction": None}, "superiority needs direction in"),
        ({"kind": "equivalence"}, "equivalence needs margin > 0, got None"),
        ({"config": "quant.storage"}, "expected key=value pairs"),
        ({"colour": "red"}, r"unknown key\(s\) \['colour'\]"),
    ],
)
def test_a_bad_declaration_is_named(tmp_path: Path, entry, message):
    base = {"id": "h", "claim": "c", "task": "t", "metric": "m", "config": "a=1", "reference": "a=2"}
    base |= {"kind": "superiority", "primary": True, "direction": "lower", "effect": 0.1}
    import yaml

    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"report": {"hypotheses": [{**base, **entry}]}}))
    with pytest.raises(HypothesisError, match=message):
        read_declaration("mine", tmp_path)
    with pytest.raises(HypothesisError, match="no sweep 'other'"):
        read_declaration("other", tmp_path)


def _stats(estimates: dict[str, object]) -> tuple[Statistics, pd.DataFrame]:
    """Rows a (reference), b, c, d; ``estimates`` maps 'b', 'c', 'd' to their estimate against a."""
    names = ["a", "b", "c", "d"]
    ok = pd.DataFrame({"config.x": names, "env.git_commit": ["abc1234"] * 4, "job_dir": names})
    rows = [Row((n,), n, [i]) for i, n in enumerate(names)]
    stats = Statistics(rows, 0, Bootstrap())
    for name, estimate in estimates.items():
        stats.comparisons.append(Comparison("eval.t.acc", names.index(name), 0, estimate, "documents"))
    return stats, ok


def _hypothesis(config: str, kind: str = "superiority", primary: bool = True, **sizes) -> Hypothesis:
    sizes = sizes or ({"direction": "higher", "effect": 0.05} if kind == "superiority" else {"margin": 0.05})
    return Hypothesis(f"h_{config}", "claim", "t", "acc", f"x={config}", "x=a", kind, primary, **sizes)


def _pair(n: int, flips_down: int, flips_up: int) -> tuple[np.ndarray, np.ndarray]:
    """0/1 scores of n items: the current side loses ``flips_down`` and gains ``flips_up`` items."""
    base = np.tile([1.0, 0.0], n // 2)
    cur = base.copy()
    cur[np.flatnonzero(base == 1)[:flips_down]] = 0
    cur[np.flatnonzero(base == 0)[:flips_up]] = 1
    return base, cur


def test_verdicts_follow_the_test_and_holm_adjusts_the_primary_family():
    boot = Bootstrap(resamples=4000)
    estimates = {
        "b": paired_mean(*_pair(2000, 20, 220), boot),  # +10 points: holds
        "c": paired_mean(*_pair(2000, 220, 20), boot),  # -10 points: contradicts "higher"
        "d": paired_mean(*_pair(40, 3, 4), boot),  # +2.5 points on 40 items: cannot tell
    }
    stats, ok = _stats(estimates)
    hypotheses = [_hypothesis("b"), _hypothesis("c"), _hypothesis("d"), _hypothesis("d", primary=False)]
    frame = evaluate(stats, ok, Declaration("s", Path("s.yaml"), hypotheses))
    assert list(frame.columns) == COLUMNS
    assert frame["verdict"].tolist()[:3] == ["holds", "contradicts", "cannot tell at this n"]
    primary = frame[frame["primary"]]
    assert primary["p_adjusted"].to_numpy() == pytest.approx(multipletests(primary["p"], method="holm")[1])
    assert set(primary["adjustment"]) == {"Holm over 3 primary"}
    assert frame["adjustment"].iloc[3] == "BH over 1 exploratory"
    d = estimates["d"]
    assert frame["n_to_decide"].iloc[2] == math.ceil(40 * (d.mde / 0.05) ** 2) > 40  # the declared 5 points
    assert (frame["commit"] == "abc1234").all() and (frame["units"] == "documents").all()


def test_equivalence_uses_tost_against_the_declared_margin():
    """Two one-sided tests from the same resampled differences: the larger p; equivalent only when both
    reject, i.e. the differences sit inside ±margin."""
    boot = Bootstrap(resamples=4000)
    estimates = {"b": paired_mean(*_pair(4000, 100, 100), boot), "c": paired_mean(*_pair(60, 4, 4), boot)}
    stats, ok = _stats(estimates)
    hypotheses = [_hypothesis("b", "equivalence"), _hypothesis("c", "equivalence")]
    frame = evaluate(stats, ok, Declaration("s", Path("s.yaml"), hypotheses))
    assert frame["verdict"].tolist() == ["equivalent within ±0.05", "not shown equivalent"]
    draws = estimates["b"].draws
    tost = max(max(np.sum(draws <= -0.05), 1) / draws.size, max(np.sum(draws >= 0.05), 1) / draws.size)
    assert frame["p"].iloc[0] == pytest.approx(tost)
    assert frame["n_to_decide"].iloc[1] > 60


def test_a_relative_margin_scales_with_the_reference_and_a_missing_row_is_not_tested():
    rng = np.random.default_rng(3)
    words = rng.integers(100, 300, 80).astype(float)
    base_ll = -words * rng.uniform(2.5, 3.5, 80)
    estimate = paired_corpus(base_ll, base_ll - words * 0.001, words, "weighted_perplexity", Bootstrap())
    stats, ok = _stats({"b": estimate})
    within = Hypothesis("eq", "c", "t", "acc", "x=b", "x=a", "equivalence", True, margin=0.01, relative=True)
    missing = Hypothesis("gone", "c", "t", "acc", "x=z", "x=a", "superiority", True, "lower", 0.1)
    frame = evaluate(stats, ok, Declaration("s", Path("s.yaml"), [within, missing]))
    margin = 0.01 * estimate.baseline
    assert frame["verdict"].iloc[0] == f"equivalent within ±{margin:.4g}"
    assert frame["verdict"].iloc[1].startswith("not tested (hypothesis 'gone' 'x=z' matches no row")
    assert math.isnan(frame["p_adjusted"].iloc[1]) and frame["adjustment"].iloc[0] == "Holm over 1 primary"


def test_a_report_folder_named_after_a_sweep_opens_with_its_verdicts(tmp_path: Path):
    """qlora-report into reports/<sweep>: the sweep's declaration is read and verdicts.csv written; the
    datatypes hypotheses name rows (fp4_e2m1) this planted sweep lacks, so they read 'not tested'."""
    write_datatypes_sweep(tmp_path / "runs")
    out = tmp_path / "reports" / "datatypes"
    with contextlib.redirect_stderr(io.StringIO()):
        assert main([str(tmp_path / "runs"), "-o", str(out), "--resamples", "200", "--no-figures"]) == 0
    frame = pd.read_csv(out / "verdicts.csv")
    assert frame["hypothesis"].tolist() == [h.id for h in read_declaration("datatypes").hypotheses]
    assert frame["verdict"].str.startswith("not tested").all()
    markdown = (out / "report.md").read_text()
    assert markdown.index("## Verdicts") < markdown.index("## Overview")
    other = tmp_path / "elsewhere"
    with contextlib.redirect_stderr(io.StringIO()):
        assert main([str(tmp_path / "runs"), "-o", str(other), "--resamples", "200", "--no-figures"]) == 0
    assert not (other / "verdicts.csv").exists() and "## Verdicts" not in (other / "report.md").read_text()


def _git(repo: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True, env=env)
    return done.stdout.strip()


def test_a_row_is_stale_only_after_a_change_to_code_that_affects_results(tmp_path: Path):
    from harness.report.verdict_table import first_change_since

    _git(tmp_path, "init", "-q")
    for path in ("harness/quant/a.py", "harness/report/b.py", "harness/stats/c.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "run here")
    run = _git(tmp_path, "rev-parse", "HEAD")
    read_or_record_only = ["harness/report/b.py", "harness/stats/c.py", "harness/env.py", "README.md"]
    for path in [*read_or_record_only, "harness/conf/sweep/d.yaml"]:  # ... or a sweep's grid
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x = 2\n")
        _git(tmp_path, "add", path)
        _git(tmp_path, "commit", "-q", "-m", f"edit {path}")
    assert first_change_since(run, tmp_path) is None
    (tmp_path / "harness/quant/a.py").write_text("x = 3\n")
    _git(tmp_path, "commit", "-q", "-am", "quantization change")
    changed = _git(tmp_path, "rev-parse", "--short", "HEAD")
    (tmp_path / "harness/quant/a.py").write_text("x = 4\n")
    _git(tmp_path, "commit", "-q", "-am", "another")
    assert first_change_since(run, tmp_path) == changed  # the first such commit: stable as history grows
    assert first_change_since(run + "-dirty", tmp_path) == "unknown (dirty tree)"
    assert first_change_since("0" * 40, tmp_path).startswith("unknown")
    # a commit listed as result-neutral (imports moved, bit-identical results) no longer counts; the next does
    full = _git(tmp_path, "rev-parse", changed)
    (tmp_path / NEUTRAL_REVS).write_text(f"# comment line\n{full}  # moved an import; smoke bit-identical\n")
    assert first_change_since(run, tmp_path) == _git(tmp_path, "rev-parse", "--short", "HEAD")


def test_every_commit_listed_as_result_neutral_is_in_history_and_says_why():
    """``.results-neutral-revs`` names commits by full hash, each in this checkout's history, each with its
    evidence after ``#``: a mistyped or unexplained line would silently keep stale verdicts current."""
    lines = [line for line in (CHECKOUT / NEUTRAL_REVS).read_text().splitlines() if not line.startswith("#")]
    for line in filter(str.strip, lines):
        full, _, why = line.partition("#")
        assert re.fullmatch(r"[0-9a-f]{40}", full.strip()) and why.strip(), line
        kind = _git(CHECKOUT, "cat-file", "-t", full.strip())
        assert kind == "commit", line


def test_the_readme_verdict_table_is_the_generated_one():
    """README.md between the verdict markers is exactly what `make verdicts` writes from every report's
    verdicts.csv and the git history; run `make verdicts` after a re-run or a result-affecting commit."""
    from harness.report.verdict_table import main as verdict_table

    with contextlib.redirect_stderr(io.StringIO()) as stderr:
        assert verdict_table(["--check"]) == 0, stderr.getvalue()


def test_an_equivalence_whose_whole_ci_lies_beyond_the_margin_is_contradicted():
    boot = Bootstrap(resamples=4000)
    stats, ok = _stats({"b": paired_mean(*_pair(4000, 100, 900), boot)})  # +20 points, margin ±5
    frame = evaluate(stats, ok, Declaration("s", Path("s.yaml"), [_hypothesis("b", "equivalence")]))
    assert frame["verdict"].iloc[0] == "contradicts (differs by more than ±0.05)"
    assert frame["n"].iloc[0] == 4000 and str(frame["n"].dtype) == "Int64"
