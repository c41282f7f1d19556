"""qlora-report on a datatypes sweep with per-sample results: comparisons.csv, intervals, bold, findings.

Effects are planted in the samples (what lm-eval would log per document), and the expected numbers are
computed here by hand from the planted arrays, not by the code under test.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import config_of, ok_result, results_cell, table_rows

from harness.report.cli import main
from harness.stats import aggregate, write_samples

ARC, WIKI = "arc_easy_local", "wikitext2_local"
DOCS, WIKI_DOCS, FP4_DOCS = 400, 20, 300
REQUIRED = ["task", "metric", "config", "reference", "n", "value", "reference_value", "delta", "ci_low"]
REQUIRED += ["ci_high", "p_value", "q_value", "mde", "significant"]
# 5 rows: 10 pairs × (3 sample metrics + the training loss) = 40 tests; Bootstrap.for_tests: 4 · 40 / 0.05
# = 3,200 resamples, rounded up to 4,000, so the smallest p (1/4000) is below a correction's 0.05/40.
SCALED_RESAMPLES = 4000


def arc_correct(storage: str) -> np.ndarray:
    """0/1 per question: bf16 ~60 %, nf4 flips 8 questions each way (no real difference), fp4 and int4 lose
    ~15 % of bf16's right answers (a real drop)."""
    rng = np.random.default_rng(0)
    base = (rng.random(DOCS) < 0.6).astype(float)
    if storage == "nf4":
        flipped = base.copy()
        right, wrong = np.flatnonzero(base == 1)[:8], np.flatnonzero(base == 0)[:8]
        flipped[right], flipped[wrong] = 0, 1
        return flipped
    if storage in ("fp4", "int4"):
        lost = base.copy()
        lost[np.flatnonzero(base == 1)[::7]] = 0
        return lost
    return base


PPL_FACTOR = {"bf16": 1.0, "nf4": 1.03, "fp4": 1.08, "int4": 1.10}  # log-perplexity relative to bf16
LOSS_OFFSET = {"bf16": 0.0, "nf4": 0.05, "fp4": 0.20, "int4": 0.25}


def wiki_rows(storage: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-document word counts and log-likelihoods with a per-document perplexity spread."""
    rng = np.random.default_rng(1)
    words = rng.integers(200, 400, WIKI_DOCS).astype(float)
    log_ppl = rng.uniform(2.8, 3.6, WIKI_DOCS) * PPL_FACTOR[storage]
    return words, -words * log_ppl


def samples_frame(storage: str, arc_docs: int) -> pd.DataFrame:
    """The frame ``evaluate_model`` returns: one row per task, document and metric."""
    correct = arc_correct(storage)[:arc_docs]
    words, loglik = wiki_rows(storage)
    rows = [
        (ARC, doc, f"{doc:016x}", metric, "mean", value, 1.0)
        for doc, value in enumerate(correct)
        for metric in ("acc", "acc_norm")
    ]
    rows += [
        (WIKI, doc, f"{1000 + doc:016x}", "word_perplexity", "weighted_perplexity", ll, n)
        for doc, (ll, n) in enumerate(zip(loglik, words, strict=True))
    ]
    columns = ["task", "doc_id", "doc_hash", "metric", "aggregation", "value", "weight"]
    return pd.DataFrame(rows, columns=columns)


def evaluation(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The task values lm-eval reports, which are the aggregates of its per-sample values."""
    out: dict[str, dict[str, float]] = {}
    for (task, metric, how), rows in frame.groupby(["task", "metric", "aggregation"]):
        out.setdefault(task, {})[metric] = aggregate(rows["value"].to_numpy(), rows["weight"].to_numpy(), how)
        out[task]["n"] = rows["doc_id"].nunique()
    for metric in ("acc", "acc_norm"):
        out[ARC][f"{metric}_stderr"] = math.sqrt(out[ARC][metric] * (1 - out[ARC][metric]) / out[ARC]["n"])
    return out


# job dir: storage, double quant, ARC documents scored, whether it logged samples
JOBS = {
    "bf16": ("bf16", True, DOCS, True),  # double_quant is in its config but does not apply
    "nf4-dq": ("nf4", True, DOCS, True),
    "nf4": ("nf4", False, DOCS, True),  # scored exactly like nf4-dq: identical samples
    "fp4": ("fp4", False, FP4_DOCS, True),  # a smaller eval.limit: 300 of the 400 ARC questions
    "int4": ("int4", False, DOCS, False),  # no samples.parquet (a job from before samples were logged)
}


def write_datatypes_sweep(root: Path) -> None:
    for name, (storage, double_quant, arc_docs, logged) in JOBS.items():
        frame = samples_frame(storage, arc_docs)
        config = config_of(storage, 0, double_quant=double_quant)
        loss = [2.4 - 0.1 * step + 0.05 * math.sin(step) + LOSS_OFFSET[storage] for step in range(10)]
        bits = 16.0 if storage == "bf16" else 4.127 if double_quant else 4.5
        ok_result(config, evaluation(frame), bits, 400.0, loss).save(root / name)
        if logged:
            write_samples(root / name, {"after": frame})


def run(args: list[str], figures: bool = False) -> tuple[int, str]:
    """qlora-report in this process; without figures unless a test looks at them (drawing is most of a
    report's run time)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(args if figures else [*args, "--no-figures"])
    return code, stderr.getvalue()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datatypes")
    write_datatypes_sweep(root)
    return root


@pytest.fixture(scope="module")
def report(sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    code, stderr = run([str(sweep), "-o", str(out)], figures=True)
    assert code == 0, stderr
    return out


def comparison(out: Path, config: str, reference: str, task: str, metric: str) -> pd.Series:
    table = pd.read_csv(out / "comparisons.csv")
    found = table[
        (table["config"] == config)
        & (table["reference"] == reference)
        & (table["task"] == task)
        & (table["metric"] == metric)
    ]
    assert len(found) == 1, f"{config} vs {reference} {task} {metric}: {len(found)} rows"
    return found.iloc[0]


def test_comparisons_table_has_the_promised_columns_and_pairs(report: Path) -> None:
    table = pd.read_csv(report / "comparisons.csv")
    assert list(table.columns[: len(REQUIRED)]) == REQUIRED
    assert {"resamples", "bootstrap_seed", "method"} <= set(table.columns)
    assert len(pd.read_parquet(report / "comparisons.parquet")) == len(table)
    # The default reference is the 16-bit row; every other row is compared with it, then every other pair.
    against = table[table["reference"] == "bf16"]
    assert set(against["config"]) == {"fp4", "int4", "nf4", "nf4 + double_quant"}
    assert {"nf4"} <= set(table[table["config"] == "nf4 + double_quant"]["reference"])


def test_planted_accuracy_drop_is_significant_on_the_shared_documents(report: Path) -> None:
    row = comparison(report, "fp4", "bf16", ARC, "acc_norm")
    shared = slice(0, FP4_DOCS)
    expected = (arc_correct("fp4")[shared] - arc_correct("bf16")[shared]).mean()
    assert row["n"] == FP4_DOCS
    assert row["delta"] == pytest.approx(expected)
    assert row["ci_low"] < row["delta"] < row["ci_high"] < 0
    assert row["significant"] and row["p_value"] < 0.001
    assert "300 shared documents (baseline 400, current 300)" in row["note"]
    assert row["resamples"] == SCALED_RESAMPLES and row["bootstrap_seed"] == 0


def test_noise_is_not_significant_and_identical_jobs_differ_by_nothing(report: Path) -> None:
    nf4 = comparison(report, "nf4 + double_quant", "bf16", ARC, "acc_norm")
    assert nf4["delta"] == pytest.approx(0.0) and not nf4["significant"]  # 8 flips each way
    assert nf4["p_value"] == pytest.approx(1.0)
    assert nf4["mde"] > 0.01
    same = comparison(report, "nf4 + double_quant", "nf4", WIKI, "word_perplexity")
    assert (same["delta"], same["ci_low"], same["ci_high"], same["p_value"]) == (0.0, 0.0, 0.0, 1.0)


def test_perplexity_is_recomputed_at_corpus_level(report: Path) -> None:
    row = comparison(report, "nf4 + double_quant", "bf16", WIKI, "word_perplexity")
    words, base = wiki_rows("bf16")
    _, nf4 = wiki_rows("nf4")
    expected = math.exp(-nf4.sum() / words.sum()) - math.exp(-base.sum() / words.sum())
    assert row["delta"] == pytest.approx(expected)
    assert row["significant"] and 0 < row["ci_low"] < row["ci_high"]


def test_training_loss_is_compared_step_by_step(report: Path) -> None:
    row = comparison(report, "fp4", "bf16", "train", "loss")
    assert row["units"] == "steps" and row["n"] == 8  # 10 steps, 2 warm-up steps left out
    assert row["delta"] == pytest.approx(0.20)
    assert row["significant"]


def test_job_without_samples_is_named_and_gets_lm_evals_stderr(report: Path) -> None:
    markdown = (report / "report.md").read_text()
    section = markdown.split("Jobs without per-sample results")[1].split("Where each number")[0]
    assert "int4`" in section and "fp4`" not in section
    acc = arc_correct("int4").mean()
    half = 1.959964 * math.sqrt(acc * (1 - acc) / DOCS)
    cell = results_cell(markdown, "int4", f"{ARC} acc_norm")
    assert cell == f"{100 * acc:.1f} [{100 * (acc - half):.1f}, {100 * (acc + half):.1f}]"
    assert results_cell(markdown, "int4", f"{WIKI} word_perplexity").count("[") == 0  # no stderr: no CI
    table = pd.read_csv(report / "comparisons.csv")
    assert not ((table["config"] == "int4") & (table["task"] == ARC)).any()


def test_nothing_is_bold_while_a_row_cannot_be_compared(report: Path) -> None:
    """int4 has no samples, so no row can be shown to beat it: bold would claim more than was tested."""
    markdown = (report / "report.md").read_text()
    header, rows = table_rows(markdown, "quant.storage")
    assert not any(cell.startswith("**") for row in rows for cell in row)
    assert "No value is bold: no row is significantly better than every other row" in markdown
    assert "bootstrap over the job's documents" in markdown
    assert results_cell(markdown, "bf16", f"{WIKI} word_perplexity").count("[") == 1


def test_bold_marks_the_row_that_beats_every_other_significantly(sweep: Path, tmp_path: Path) -> None:
    jobs = [str(sweep / name) for name in ("bf16", "nf4-dq", "nf4", "fp4")]
    code, stderr = run([*jobs, "-o", str(tmp_path)])
    assert code == 0, stderr
    markdown = (tmp_path / "report.md").read_text()
    assert results_cell(markdown, "bf16", f"{WIKI} word_perplexity").startswith("**")  # lowest on every doc
    for storage in ("bf16", "nf4", "fp4"):
        assert not results_cell(markdown, storage, f"{ARC} acc_norm").startswith("**")  # nf4 ties bf16
    assert "Bold: significantly better than every other row" in markdown


def test_settings_that_do_not_apply_read_n_a(report: Path) -> None:
    header, rows = table_rows((report / "report.md").read_text(), "quant.storage")
    assert header[:2] == ["quant.storage", "quant.double_quant"]
    assert next(r for r in rows if r[0] == "bf16")[1] == "n/a"
    assert sorted(r[1] for r in rows if r[0] == "nf4") == ["False", "True"]


def test_paired_comparisons_are_a_forest_plot_a_matrix_and_a_line_per_metric(report: Path) -> None:
    """Instead of one sentence per pair: the pictures, and per metric how many differences are significant."""
    markdown = (report / "report.md").read_text()
    section = markdown.split("## Paired comparisons")[1].split("\n## ")[0]
    assert "Each configuration against the reference (bf16)" in section
    assert "(figures/forest.png)" in section and "(figures/pairwise.png)" in section
    assert (report / "figures" / "forest.png").is_file() and (report / "figures" / "pairwise.png").is_file()
    lines = [line for line in section.splitlines() if line.startswith("- ")]
    arc = next(line for line in lines if line.startswith(f"- {ARC.removesuffix('_local')} acc_norm: "))
    assert "configurations differ significantly from the reference" in arc and "pairs in all" in arc
    assert any(line.startswith("- training loss per step after warm-up: ") for line in lines)


def test_report_directory_holds_every_jobs_samples(report: Path, sweep: Path) -> None:
    samples = pd.read_parquet(report / "samples.parquet")
    assert samples.columns[0] == "job_dir"
    assert {Path(j).name for j in samples["job_dir"]} == {"bf16", "nf4-dq", "nf4", "fp4"}


def test_reference_selector_picks_the_row(sweep: Path, tmp_path: Path) -> None:
    code, stderr = run([str(sweep), "-o", str(tmp_path), "--reference", "quant.storage=fp4"])
    assert code == 0, stderr
    table = pd.read_csv(tmp_path / "comparisons.csv")
    assert set(table[table["config"] == "bf16"]["reference"]) == {"fp4"}
    assert "Each configuration against the reference (fp4)" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("quant.storage=nf4", "matches 2 rows (nf4, nf4 + double_quant); the rows are: bf16, fp4"),
        ("quant.storage=fp8", "matches no row; the rows are: bf16, fp4, int4, nf4, nf4 + double_quant"),
        ("quant.nope=1", "unknown key(s) ['quant.nope']; config keys: ["),
        ("bf16", "expected key=value pairs like 'quant.storage=bf16'"),
    ],
)
def test_bad_reference_is_a_clear_error_before_writing(
    sweep: Path, tmp_path: Path, selector: str, message: str
) -> None:
    code, stderr = run([str(sweep), "-o", str(tmp_path / "out"), "--reference", selector])
    assert code == 2
    assert f"--reference {selector!r}" in stderr and message in stderr
    assert not (tmp_path / "out").exists()


def test_bootstrap_settings_are_used_and_recorded(sweep: Path, tmp_path: Path) -> None:
    code, stderr = run([str(sweep), "-o", str(tmp_path), "--resamples", "500", "--seed", "7"])
    assert code == 0, stderr
    table = pd.read_csv(tmp_path / "comparisons.csv")
    documents = table[table["units"] == "documents"]
    # --resamples is the floor; 500 is too few for a correction over 40 tests
    assert set(documents["resamples"]) == {SCALED_RESAMPLES} and set(documents["bootstrap_seed"]) == {7}
    assert f"{SCALED_RESAMPLES:,} resamples" in (tmp_path / "report.md").read_text()
    with pytest.raises(SystemExit) as exit_:
        run([str(sweep), "-o", str(tmp_path), "--resamples", "5"])
    assert exit_.value.code == 2


def test_one_document_is_too_few_to_test(tmp_path: Path) -> None:
    """WikiText-2 at a small eval.limit is one article: no spread to resample, so no CI, no p, no bold."""
    for storage in ("bf16", "fp4"):
        frame = samples_frame(storage, DOCS)
        frame = frame[(frame["task"] != WIKI) | (frame["doc_id"] == 0)]
        config = config_of(storage, 0, double_quant=False)
        ok_result(config, evaluation(frame), 16.0 if storage == "bf16" else 4.5, 400.0, [2.0] * 10).save(
            tmp_path / "sweep" / storage
        )
        write_samples(tmp_path / "sweep" / storage, {"after": frame})
    code, stderr = run([str(tmp_path / "sweep"), "-o", str(tmp_path / "out")])
    assert code == 0, stderr
    row = comparison(tmp_path / "out", "fp4", "bf16", WIKI, "word_perplexity")
    assert row["n"] == 1 and row["delta"] > 0
    assert math.isnan(row["p_value"]) and math.isnan(row["ci_low"]) and not row["significant"]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "1 of 1 pairs too few to test (no CI, no p)" in markdown
    assert not results_cell(markdown, "bf16", f"{WIKI} word_perplexity").startswith("**")


def test_change_through_training_gets_a_paired_before_after_interval(tmp_path: Path) -> None:
    """Δ after−before of one job pairs its own documents: training fixed 40 of 400 ARC questions."""
    for storage in ("bf16", "nf4"):
        before = samples_frame(storage, DOCS)
        after = before.copy()
        wrong = after.index[(after["task"] == ARC) & (after["value"] == 0)][:80]  # 40 docs × acc, acc_norm
        after.loc[wrong, "value"] = 1.0
        record = ok_result(config_of(storage, 0), evaluation(after), 4.5, 400.0, [2.0] * 10)
        record.eval_before = evaluation(before)
        record.save(tmp_path / "sweep" / storage)
        write_samples(tmp_path / "sweep" / storage, {"before": before, "after": after})
    code, stderr = run([str(tmp_path / "sweep"), "-o", str(tmp_path / "out")])
    assert code == 0, stderr
    cell = results_cell((tmp_path / "out" / "report.md").read_text(), "nf4", f"Δ {ARC} acc_norm")
    value, interval = cell.split(" [")
    low, high = (float(x) for x in interval.rstrip("]").split(", "))
    assert float(value) == pytest.approx(100 * 40 / DOCS)
    assert 0 < low < float(value) < high


def test_pool_adds_the_accuracy_over_all_documents_of_its_tasks_as_a_compared_task(tmp_path: Path) -> None:
    """--pool mean=A,B: one more task whose value is the accuracy over A's and B's documents (A's acc_norm,
    B's acc), compared per document: the planted fp4 drop is found on n = both tasks' documents."""
    piqa = "piqa_local"
    for storage in ("bf16", "fp4"):
        frame = samples_frame(storage, DOCS)
        arc_acc = frame[(frame["task"] == ARC) & (frame["metric"] == "acc")]
        second = arc_acc.assign(task=piqa, doc_hash=arc_acc["doc_hash"].str.replace("0", "p", n=1), value=1.0)
        frame = pd.concat([frame, second], ignore_index=True)
        loss = [2.4 - 0.1 * step for step in range(10)]
        ok_result(config_of(storage, 0), evaluation(frame), 4.5, 400.0, loss).save(
            tmp_path / "sweep" / storage
        )
        write_samples(tmp_path / "sweep" / storage, {"after": frame})
    code, stderr = run([str(tmp_path / "sweep"), "-o", str(tmp_path / "out"), "--pool", f"mean={ARC},{piqa}"])
    assert code == 0, stderr
    results = pd.read_csv(tmp_path / "out" / "results.csv").set_index("config.quant.storage")
    for storage in ("bf16", "fp4"):
        expected = (arc_correct(storage).sum() + DOCS) / (2 * DOCS)  # ARC right answers, then all of piqa
        assert results.loc[storage, "eval.mean.acc"] == pytest.approx(expected)
        assert results.loc[storage, "eval.mean.n"] == 2 * DOCS
    row = comparison(tmp_path / "out", "fp4", "bf16", "mean", "acc")
    assert row["n"] == 2 * DOCS
    assert row["delta"] == pytest.approx((arc_correct("fp4") - arc_correct("bf16")).sum() / (2 * DOCS))
    assert row["significant"]

    code, stderr = run([str(tmp_path / "sweep"), "-o", str(tmp_path / "bad"), "--pool", f"mean={ARC},{WIKI}"])
    assert code == 2 and f"no job has accuracy samples for ['{WIKI}']" in stderr


def test_jobs_of_one_config_that_each_scored_one_task_are_compared_as_one_job(tmp_path: Path) -> None:
    """A config evaluated one task per job (the resumable full zero-shot run) is one row: its tasks' metrics
    side by side, timings summed, the jobs and every commit they ran at named; a pool over the tasks spans
    both jobs' documents and equals what one job scoring both tasks gives (the pool test above plants the
    same data)."""
    piqa = "piqa_local"
    for storage in ("bf16", "fp4"):
        frame = samples_frame(storage, DOCS)
        arc = frame[(frame["task"] == ARC) & frame["metric"].isin(["acc", "acc_norm"])]
        arc_acc = arc[arc["metric"] == "acc"]
        second = arc_acc.assign(task=piqa, doc_hash=arc_acc["doc_hash"].str.replace("0", "p", n=1), value=1.0)
        scores = evaluation(pd.concat([arc, second], ignore_index=True))
        for task, part in ((ARC, arc), (piqa, second)):
            config = config_of(storage, 0)
            config["eval"]["tasks"] = [task]
            job = tmp_path / "sweep" / f"{storage}-{task}"
            loss = [2.4 - 0.1 * step for step in range(10)]
            result = ok_result(config, {task: scores[task]}, 4.5, 400.0, loss)
            result.env["git_commit"] = "abc1234" if task == ARC else "def5678"  # resumed at a later commit
            result.save(job)
            write_samples(job, {"after": part})
    code, stderr = run([str(tmp_path / "sweep"), "-o", str(tmp_path / "out"), "--pool", f"mean={ARC},{piqa}"])
    assert code == 0, stderr
    results = pd.read_csv(tmp_path / "out" / "results.csv").set_index("config.quant.storage")
    assert sorted(results.index) == ["bf16", "fp4"]
    for storage in ("bf16", "fp4"):
        assert results.loc[storage, f"eval.{piqa}.acc"] == 1.0
        assert not math.isnan(results.loc[storage, f"eval.{ARC}.acc"])
        assert results.loc[storage, "eval.mean.n"] == 2 * DOCS
    merged = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert [len(jobs) for jobs in merged["merged_jobs"]] == [2, 2]
    assert set(merged["env.git_commit"]) == {"abc1234,def5678"}  # both, so staleness is checked against each
    row = comparison(tmp_path / "out", "fp4", "bf16", "mean", "acc")
    assert row["n"] == 2 * DOCS
    assert row["delta"] == pytest.approx((arc_correct("fp4") - arc_correct("bf16")).sum() / (2 * DOCS))


def test_every_comparison_is_significant_exactly_when_its_ci_excludes_zero(report: Path) -> None:
    table = pd.read_csv(report / "comparisons.csv").dropna(subset=["p_value"])
    excludes_zero = (table["ci_low"] > 0) | (table["ci_high"] < 0)
    assert (excludes_zero == table["significant"]).all()
    assert table["q_value"].ge(table["p_value"] - 1e-15).all()  # BH never lowers a p-value


def test_the_case_where_percentile_ci_and_exact_mcnemar_disagreed_now_agrees() -> None:
    """72 questions, 11 right only before and 3 only after: the percentile CI excluded 0 while exact
    McNemar's p = 0.057 did not reject (reports/quickstart). One bootstrap now gives both."""
    from harness.stats import paired_mean

    before, after = np.zeros(72), np.zeros(72)
    before[:11], after[11:14] = 1, 1
    estimate = paired_mean(before, after)
    assert estimate.significant == (estimate.ci_high < 0)


def test_three_seeds_with_samples_are_compared_by_a_two_level_bootstrap(tmp_path: Path) -> None:
    """Two storage types × 3 seeds, each job with per-document samples: every evaluated metric is compared
    over seeds, then documents (units 'seeds × documents', n = 3 seeds); the training loss over seeds."""
    for storage in ("bf16", "fp4"):
        for seed in range(3):
            frame = samples_frame(storage, DOCS)
            loss = [2.4 - 0.1 * step + LOSS_OFFSET[storage] + 0.01 * seed for step in range(10)]
            job = tmp_path / "sweep" / f"{storage}-{seed}"
            ok_result(config_of(storage, seed), evaluation(frame), 4.5, 400.0, loss).save(job)
            write_samples(job, {"after": frame})
    code, stderr = run([str(tmp_path / "sweep"), "-o", str(tmp_path / "out")])
    assert code == 0, stderr
    arc = comparison(tmp_path / "out", "fp4", "bf16", ARC, "acc_norm")
    assert arc["units"] == "seeds × documents" and arc["n"] == 3
    assert "two-level bootstrap: seeds [0, 1, 2], then documents" in arc["method"]
    assert arc["delta"] == pytest.approx((arc_correct("fp4") - arc_correct("bf16")).mean())
    assert comparison(tmp_path / "out", "fp4", "bf16", "train", "loss")["units"] == "seeds"
