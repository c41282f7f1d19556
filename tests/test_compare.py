"""qlora-compare: job matching, per-metric verdicts, exit codes and input handling."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from harness import result as result_module
from harness.compare import CompareInputError, compare_results, load_tolerances
from harness.compare.cli import main
from harness.compare.inputs import canonical
from harness.compare.render import _fmt
from harness.report.load import load_results
from harness.report.metrics import metric_frame
from harness.result import (
    ADDED_KEYS,
    JobResult,
    ResultError,
    column,
    config_hash,
    identity_columns,
    read_result,
)
from harness.stats import write_report_samples, write_samples

STORAGES = {"nf4": 4.127, "fp4": 4.127, "int4": 4.252}  # storage type -> bits/param
SEEDS = (0, 1)
ROOT = Path(__file__).resolve().parents[1]

Change = Callable[[Any], Any]


def make_result(storage: str, seed: int, job_dir: Path) -> dict[str, Any]:
    """One ok job in the result.json shape, with every metric kind the default tolerances judge."""
    offset = 0.01 * seed + {"nf4": 0.02, "fp4": 0.0, "int4": -0.01}[storage]
    return {
        "status": "ok",
        "config_hash": f"{storage}{seed}",
        "config": {
            "model": {"name_or_path": "tiny", "cache_dir": None},
            "quant": {"storage": storage, "blocksize": 64, "double_quant": True, "compute_dtype": "auto"},
            "lora": {"r": 8, "alpha": 16.0, "dropout": 0.1, "targets": ["q_proj", "v_proj"]},
            "train": {"steps": 10, "batch_size": 2, "seq_len": 64, "lr": 2e-4, "optimizer": "adamw"},
            "data": {"source": "synthetic", "data_dir": str(job_dir / "data")},
            "eval": {"tasks": ["arc_easy_local", "wikitext2_local"], "limit": 200},
            "seed": seed,
            "device": "cpu",
        },
        "env": {"device": "cpu", "torch": "2.9.0", "git_commit": "abc"},
        "quant": {
            "storage": storage,
            "blocksize": 64,
            "double_quant": True,
            "weight_bytes": int(STORAGES[storage] * 1000),
            "quantized_params": 8000,
            "bits_per_param": STORAGES[storage],
            "layers": 14,
            "skipped": ["lm_head"],
        },
        "lora": {"r": 8, "alpha": 16.0, "targets": ["q_proj", "v_proj"], "trainable_params": 12345},
        "train": {
            "steps": 3,
            "tokens": 384,
            "target_tokens": 96,
            "tokens_per_s": 1500.0 + 10 * seed,
            "step_time_s_median": 0.2,
            "loss": [2.5, 2.0, 1.6 - offset],
            "loss_start": 2.5,
            "loss_end": 1.6 - offset,
            "gradient_checkpointing": True,
            "peak_memory_bytes": 200_000_000 + 1_000_000 * seed,
            "peak_memory_kind": "rss",
        },
        "eval": {
            "arc_easy_local": {
                "acc": 0.42 + offset,
                "acc_stderr": 0.02,
                "acc_norm": 0.40 + offset,
                "acc_norm_stderr": 0.02,
                "n": 200,
            },
            "wikitext2_local": {"word_perplexity": 40.0 - 10 * offset, "bits_per_byte": 0.93},
        },
        "timings_s": {"total": 12.0},
    }


def set_dotted(record: dict[str, Any], dotted: str, change: Change) -> None:
    """Apply ``change`` to the value at a dotted path (``eval.arc_easy_local.acc``)."""
    *parents, leaf = dotted.split(".")
    for key in parents:
        record = record[key]
    record[leaf] = change(record.get(leaf))


def write_sweep(root: Path, changes: dict[tuple[str, int], dict[str, Change]] | None = None) -> Path:
    """A sweep directory with storage x seed jobs; ``changes[(storage, seed)]`` edits that job's fields."""
    changes = changes or {}
    for storage in STORAGES:
        for seed in SEEDS:
            job_dir = root / f"{storage}-seed{seed}"
            record = make_result(storage, seed, job_dir)
            for dotted, change in changes.get((storage, seed), {}).items():
                set_dotted(record, dotted, change)
            JobResult.from_json(record).save(job_dir)  # only fields a job writes
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows_with(out: str, verdict: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("|") and f"| {verdict} |" in line]


def scale(factor: float) -> Change:
    return lambda value: value * factor


def shift(amount: float) -> Change:
    return lambda value: value + amount


@pytest.fixture
def baseline(tmp_path: Path) -> Path:
    return write_sweep(tmp_path / "baseline")


def test_identical_results_pass_and_every_metric_kind_is_compared(baseline, tmp_path, capsys):
    current = write_sweep(tmp_path / "current")
    code, out, _ = run(capsys, baseline, current)
    assert code == 0
    assert "qlora-compare: ok" in out
    assert not rows_with(out, "REGRESSED") and not rows_with(out, "improved")
    job_rows = [line for line in out.splitlines() if "`" not in line and "quant.storage=nf4 seed=0 |" in line]
    metrics = {line.split(" | ")[1] for line in job_rows}
    assert metrics == {
        "quant.bits_per_param",
        "quant.weight_bytes",
        "lora.trainable_params",
        "train.tokens_per_s",
        "train.loss_end",
        "train.peak_memory_bytes",
        "eval.arc_easy_local.acc",
        "eval.arc_easy_local.acc_norm",
        "eval.wikitext2_local.word_perplexity",
        "eval.wikitext2_local.bits_per_byte",
    }


@pytest.mark.parametrize(
    "metric, change",
    [
        ("eval.arc_easy_local.acc", shift(-0.06)),  # allowed: max(0.01, sqrt(2) * 0.02) = 0.028
        ("eval.arc_easy_local.acc_norm", shift(-0.06)),
        ("eval.wikitext2_local.word_perplexity", scale(1.05)),  # tolerance 2 %
        ("eval.wikitext2_local.bits_per_byte", scale(1.05)),
        ("quant.bits_per_param", shift(0.001)),  # exact: any increase
        ("train.peak_memory_bytes", scale(1.2)),  # tolerance 10 %
        ("train.loss_end", scale(1.2)),  # tolerance 5 %
    ],
)
def test_planted_regression_fails_naming_job_and_metric(baseline, tmp_path, capsys, metric, change):
    current = write_sweep(tmp_path / "current", {("fp4", 1): {metric: change}})
    code, out, _ = run(capsys, baseline, current)
    assert code == 1
    [row] = rows_with(out, "REGRESSED")
    assert row.startswith(f"| quant.storage=fp4 seed=1 | {metric} |")
    assert f"- REGRESSED: `quant.storage=fp4 seed=1` {metric}" in out


def test_accuracy_drop_within_stderr_passes_but_fails_without_stderr(baseline, tmp_path, capsys):
    drop = {"eval.arc_easy_local.acc": shift(-0.02)}  # beyond tol 0.01, within sqrt(2) * 0.02
    current = write_sweep(tmp_path / "current", {("nf4", 0): drop})
    code, out, _ = run(capsys, baseline, current)
    assert code == 0
    assert "| quant.storage=nf4 seed=0 | eval.arc_easy_local.acc | 0.44 | 0.42 | -0.02 (-4.5%) |" in out

    no_stderr = {**drop, "eval.arc_easy_local.acc_stderr": lambda _: None}
    bare_baseline = write_sweep(
        tmp_path / "bare-baseline", {("nf4", 0): {"eval.arc_easy_local.acc_stderr": lambda _: None}}
    )
    bare_current = write_sweep(tmp_path / "bare-current", {("nf4", 0): no_stderr})
    code, out, _ = run(capsys, bare_baseline, bare_current)
    assert code == 1
    assert rows_with(out, "REGRESSED")[0].startswith("| quant.storage=nf4 seed=0 | eval.arc_easy_local.acc |")


def test_improvements_pass_and_are_shown_as_improved(baseline, tmp_path, capsys):
    better = {
        "eval.arc_easy_local.acc": shift(0.1),
        "train.peak_memory_bytes": scale(0.5),
        "quant.bits_per_param": shift(-0.1),
    }
    current = write_sweep(tmp_path / "current", {("int4", 0): better})
    code, out, _ = run(capsys, baseline, current)
    assert code == 0
    improved = {line.split(" | ")[1] for line in rows_with(out, "improved")}
    assert improved == set(better)


def test_two_sided_rule_fails_an_improvement_beyond_tolerance_as_changed(baseline, tmp_path, capsys):
    """A bug can "improve" a metric that must not move (double quantization silently off lowers bits/param):
    under ``two_sided`` a move beyond the tolerance either way fails as CHANGED; within it, it passes."""
    rules = tmp_path / "two_sided.yaml"
    rules.write_text(
        "rules:\n"
        "  - {match: quant.bits_per_param, direction: lower, kind: exact, two_sided: true}\n"
        "  - {match: train.loss_end, direction: lower, kind: rel, tol: 0.01, two_sided: true}\n"
    )
    lower_bits = write_sweep(tmp_path / "lower-bits", {("int4", 0): {"quant.bits_per_param": shift(-0.1)}})
    code, out, _ = run(capsys, baseline, lower_bits, "--tolerances", rules)
    assert code == 1
    assert "## qlora-compare: CHANGED (1 failing)" in out
    [row] = rows_with(out, "CHANGED")
    assert row.startswith("| quant.storage=int4 seed=0 | quant.bits_per_param |")
    assert "- CHANGED: `quant.storage=int4 seed=0` quant.bits_per_param" in out

    within = write_sweep(tmp_path / "within", {("int4", 0): {"train.loss_end": scale(0.995)}})
    assert run(capsys, baseline, within, "--tolerances", rules)[0] == 0
    beyond = write_sweep(tmp_path / "beyond", {("int4", 0): {"train.loss_end": scale(0.98)}})
    code, out, _ = run(capsys, baseline, beyond, "--tolerances", rules)
    assert code == 1 and rows_with(out, "CHANGED")[0].split(" | ")[1] == "train.loss_end"


@pytest.mark.parametrize(
    "flags, expected", [((), 0), (("--gate-throughput",), 1), (("--gate", "train.*"), 1)]
)
def test_throughput_drop_is_reported_and_gated_only_on_request(baseline, tmp_path, capsys, flags, expected):
    current = write_sweep(tmp_path / "current", {("nf4", 1): {"train.tokens_per_s": scale(0.5)}})
    code, out, _ = run(capsys, baseline, current, *flags)
    assert code == expected
    verdict = "REGRESSED" if expected else "info"
    [row] = [line for line in rows_with(out, verdict) if "train.tokens_per_s" in line]
    assert row.startswith("| quant.storage=nf4 seed=1 | train.tokens_per_s |")


def test_tolerance_file_switch_gates_throughput(baseline, tmp_path, capsys):
    data = yaml.safe_load((ROOT / "harness/compare/tolerances.yaml").read_text())
    for rule in data["rules"]:
        rule.pop("gate", None)
    tolerances = tmp_path / "tolerances.yaml"
    tolerances.write_text(yaml.safe_dump(data))
    current = write_sweep(tmp_path / "current", {("nf4", 1): {"train.tokens_per_s": scale(0.5)}})
    assert run(capsys, baseline, current, "--tolerances", tolerances)[0] == 1


def test_tolerance_file_overrides_only_what_it_names(baseline, tmp_path, capsys):
    """A baseline's tolerance file holds only what differs: its rules come first, the defaults follow
    (a perplexity regression is still gated by the default rule), and ``extends: none`` drops them."""
    override = "rules: [{match: train.tokens_per_s, direction: higher, kind: rel, tol: 0.25}]\n"
    tolerances = tmp_path / "tolerances.yaml"
    tolerances.write_text(override)
    slower = write_sweep(tmp_path / "slower", {("nf4", 1): {"train.tokens_per_s": scale(0.5)}})
    assert run(capsys, baseline, slower, "--tolerances", tolerances)[0] == 1
    worse = write_sweep(
        tmp_path / "worse", {("nf4", 1): {"eval.wikitext2_local.word_perplexity": scale(1.5)}}
    )
    assert run(capsys, baseline, worse, "--tolerances", tolerances)[0] == 1
    tolerances.write_text("extends: none\n" + override)
    assert run(capsys, baseline, worse, "--tolerances", tolerances)[0] == 0


def test_missing_current_job_is_bad_input_naming_it(baseline, tmp_path, capsys):
    current = write_sweep(tmp_path / "current")
    (current / "int4-seed1" / "result.json").unlink()
    code, out, err = run(capsys, baseline, current)
    assert code == 2
    assert out == ""
    assert "missing from current: quant.storage=int4 seed=1" in err


def test_extra_current_job_is_info(tmp_path, capsys):
    current = write_sweep(tmp_path / "current")
    baseline = write_sweep(tmp_path / "baseline")
    (baseline / "fp4-seed0" / "result.json").unlink()
    code, out, _ = run(capsys, baseline, current)
    assert code == 0
    assert "| quant.storage=fp4 seed=0 | job | – | – | – | – | – | – | info | only in current |" in out


def test_ok_to_failed_is_a_regression_naming_job_and_error(baseline, tmp_path, capsys):
    current = write_sweep(tmp_path / "current")
    failed = make_result("int4", 0, current / "int4-seed0")
    for section in ("quant", "lora", "train", "eval"):
        failed.pop(section)
    failed.update(status="failed", error={"type": "RuntimeError", "message": "CUDA out of memory"})
    JobResult.from_json(failed).save(current / "int4-seed0")
    code, out, _ = run(capsys, baseline, current)
    assert code == 1
    [row] = rows_with(out, "REGRESSED")
    assert row.startswith("| quant.storage=int4 seed=0 | status | ok | failed |")
    assert row.endswith("| REGRESSED | RuntimeError: CUDA out of memory |")


def test_nonexistent_path_is_bad_input(baseline, tmp_path, capsys):
    code, _, err = run(capsys, baseline, tmp_path / "nowhere")
    assert code == 2
    assert f"current {tmp_path / 'nowhere'}: no such file or directory" in err


def test_unreadable_result_is_bad_input_naming_the_file(baseline, tmp_path, capsys):
    current = write_sweep(tmp_path / "current")
    broken = current / "nf4-seed0" / "result.json"
    broken.write_text("{not json")
    code, _, err = run(capsys, baseline, current)
    assert code == 2
    assert str(broken) in err and "unreadable" in err


@pytest.mark.parametrize(
    "name, content", [("empty", None), ("results.csv", "a,b\n"), ("results.parquet", "junk")]
)
def test_inputs_without_jobs_are_bad_input(baseline, tmp_path, capsys, name, content):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    code, _, err = run(capsys, path, baseline)
    assert code == 2
    assert err.startswith(f"qlora-compare: error: baseline {path}:")


@pytest.mark.parametrize("writer, name", [("to_csv", "results.csv"), ("to_parquet", "results.parquet")])
def test_results_table_baseline_compares_against_directory(baseline, tmp_path, capsys, writer, name):
    table_file = tmp_path / "report" / name
    table_file.parent.mkdir()
    getattr(load_results([baseline]).table, writer)(table_file, index=False)
    current = write_sweep(tmp_path / "current", {("nf4", 0): {"train.peak_memory_bytes": scale(1.2)}})
    from_table = compare_results([table_file], [current])
    from_dir = compare_results([baseline], [current])
    assert from_table.exit_code == 1
    assert from_table.rows == from_dir.rows
    assert from_table.ignored_key_columns == []


def test_excluded_and_one_sided_config_columns_do_not_break_matching(baseline, tmp_path):
    new_field = {"config.train.new_option": lambda _: True, "config.model.cache_dir": lambda _: "/elsewhere"}
    current = write_sweep(
        tmp_path / "current", {job: new_field for job in ((s, n) for s in STORAGES for n in SEEDS)}
    )
    comparison = compare_results([baseline], [current])
    assert comparison.exit_code == 0
    assert comparison.ignored_key_columns == ["config.train.new_option"]
    assert "config.data.data_dir" not in comparison.key_columns  # differs: baseline/ vs current/
    assert {"config.quant.storage", "config.seed", "config.lora.targets"} <= set(comparison.key_columns)


def test_duplicate_job_is_bad_input(baseline, tmp_path):
    current = write_sweep(tmp_path / "current")
    with pytest.raises(CompareInputError, match="current: two results for job quant.storage=nf4 seed=0"):
        compare_results([baseline], [current, baseline / "nf4-seed0"])


@pytest.mark.parametrize(
    "content, message",
    [
        ("rules: [", "cannot be read"),
        ("thresholds: []", "expected a mapping with 'rules'"),
        ("extends: other\nrules: [{match: a, direction: lower, kind: abs, tol: 1}]", "'extends' must be"),
        ("rules: []", "non-empty list"),
        ("rules: [{match: a, direction: up, kind: abs, tol: 1}]", "'direction' must be one of"),
        ("rules: [{match: a, direction: lower, kind: rel, tol: -1}]", "'tol' must be a number >= 0"),
        ("rules: [{match: a, direction: lower, kind: rel}]", "needs a 'tol'"),
        ("rules: [{match: a, direction: lower, kind: exact, tol: 1}]", "takes no 'tol'"),
        (
            "rules: [{match: a, direction: lower, kind: abs, tol: 1, gate: maybe}]",
            "'gate' must be true or false",
        ),
        (
            "rules: [{match: a, direction: lower, kind: abs, tol: 1, two_sided: 1}]",
            "'two_sided' must be true or false",
        ),
        ("rules: [{match: [], direction: lower, kind: abs, tol: 1}]", "'match' must be a glob"),
        (
            "rules: [{match: a, direction: lower, kind: abs, tol: 1, tolerance: 2}]",
            "unknown key(s) ['tolerance']",
        ),
    ],
)
def test_bad_tolerance_file_is_bad_input(baseline, tmp_path, capsys, content, message):
    tolerances = tmp_path / "tolerances.yaml"
    tolerances.write_text(content)
    code, _, err = run(capsys, baseline, baseline, "--tolerances", tolerances)
    assert code == 2
    assert f"tolerance file {tolerances}" in err and message in err


def test_missing_tolerance_file_is_bad_input(baseline, tmp_path, capsys):
    code, _, err = run(capsys, baseline, baseline, "--tolerances", tmp_path / "none.yaml")
    assert code == 2 and "none.yaml: cannot be read" in err


def test_default_tolerances_judge_each_metric_kind():
    tolerances = load_tolerances()
    expected = {
        "eval.arc_easy_local.acc_norm": ("higher", "abs", True),
        "eval_before.arc_easy_local.acc": ("higher", "abs", True),
        "eval.wikitext2_local.word_perplexity": ("lower", "rel", True),
        "quant.bits_per_param": ("lower", "exact", True),
        "train.peak_memory_bytes": ("lower", "rel", True),
        "train.loss_end": ("lower", "rel", True),
        "train.tokens_per_s": ("higher", "rel", False),
    }
    for metric, (direction, kind, gate) in expected.items():
        rule = tolerances.rule_for(metric)
        assert (rule.direction, rule.kind, rule.gate) == (direction, kind, gate), metric
    assert tolerances.rule_for("eval.arc_easy_local.acc_stderr") is None
    assert tolerances.rule_for("eval.arc_easy_local.n") is None


def test_markdown_and_json_files_hold_the_same_rows(baseline, tmp_path, capsys):
    current = write_sweep(tmp_path / "current", {("nf4", 0): {"train.loss_end": scale(1.5)}})
    md, js = tmp_path / "out" / "compare.md", tmp_path / "out" / "compare.json"
    code, out, _ = run(capsys, baseline, current, "--markdown", md, "--json", js)
    assert code == 1
    assert md.read_text() == out
    report = json.loads(js.read_text())
    assert report["summary"]["verdict"] == "REGRESSED" and report["summary"]["exit_code"] == 1
    assert report["summary"]["regressions"] == ["quant.storage=nf4 seed=0: train.loss_end"]
    assert (
        len(report["rows"])
        == len(out.splitlines())
        - out.splitlines().index("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        - 1
    )


@pytest.mark.parametrize(
    "from_json, from_table",
    [
        (["q_proj", "v_proj"], "['q_proj', 'v_proj']"),  # DataFrame.to_csv writes Python reprs
        (["q_proj", "v_proj"], '["q_proj", "v_proj"]'),  # qlora-report writes mixed columns as JSON
        ("all-linear", '"all-linear"'),
        ([None, True], "[null, true]"),
        (16, 16.0),  # CSV makes int columns with gaps float
        (None, float("nan")),
        (True, "True"),
    ],
)
def test_table_spellings_key_like_result_json(from_json, from_table):
    assert canonical(from_json) == canonical(from_table)


def test_distinct_config_values_key_differently():
    assert (
        len({canonical(v) for v in ("nf4", "fp4", 64, 128, 0.1, None, ["q"], ["q", "v"], True, False)}) == 10
    )


def test_help_documents_exit_codes_and_tolerances(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for needle in (
        "exit codes:",
        "tolerance file",
        "config.data.data_dir",
        "qlora-report runs/smoke -o reports/baselines/smoke",
    ):
        assert needle in text


def test_example_workflow_runs_sweep_report_and_compare():
    workflow = yaml.safe_load((ROOT / ".github/workflows/qlora-regression.yml").read_text())
    [job] = workflow["jobs"].values()
    assert job["runs-on"] == ["self-hosted", "gpu"]
    commands = " ".join(step.get("run", "") for step in job["steps"])
    for command in (
        "make setup",
        ".venv/bin/qlora-bench -m",
        ".venv/bin/qlora-report",
        ".venv/bin/qlora-compare",
    ):
        assert command in commands
    assert any(step.get("uses", "").startswith("actions/upload-artifact") for step in job["steps"])


ARC = "eval.arc_easy_local.acc"
WIKI = "eval.wikitext2_local.word_perplexity"


def arc_scores(n: int, losses: int = 0, wins: int = 0) -> np.ndarray:
    """A job's 0/1 ARC scores: the baseline pattern with ``losses`` right answers and ``wins`` wrong ones
    flipped (different documents each)."""
    scores = (np.arange(n) % 5 < 2).astype(float)  # 40 % right
    right, wrong = np.flatnonzero(scores == 1), np.flatnonzero(scores == 0)
    scores[right[:losses]] = 0
    scores[wrong[:wins]] = 1
    return scores


def samples_frame(arc: np.ndarray, wiki_ll: np.ndarray | None = None) -> pd.DataFrame:
    """One job's per-sample results for the two tasks the fixture's jobs report (after training)."""
    parts = [
        pd.DataFrame(
            {
                "task": "arc_easy_local",
                "doc_id": range(len(arc)),
                "metric": "acc",
                "aggregation": "mean",
                "value": arc,
                "weight": 1.0,
            }
        )
    ]
    if wiki_ll is not None:
        parts.append(
            pd.DataFrame(
                {
                    "task": "wikitext2_local",
                    "doc_id": range(len(wiki_ll)),
                    "metric": "word_perplexity",
                    "aggregation": "weighted_perplexity",
                    "value": wiki_ll,
                    "weight": WIKI_WORDS[: len(wiki_ll)],
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    return frame.assign(doc_hash=frame["task"] + frame["doc_id"].astype(str))


WIKI_WORDS = np.linspace(200.0, 2000.0, 40)
WIKI_LL = -WIKI_WORDS * np.linspace(3.2, 4.0, 40)


def with_samples(root: Path, frames: dict[tuple[str, int], pd.DataFrame] | None = None) -> Path:
    """Give every job of a sweep per-sample results: the baseline pattern unless ``frames`` says otherwise."""
    frames = frames or {}
    for storage in STORAGES:
        for seed in SEEDS:
            default = samples_frame(arc_scores(200), WIKI_LL)
            write_samples(root / f"{storage}-seed{seed}", {"after": frames.get((storage, seed), default)})
    return root


def no_stderr(changes: dict[str, Change] | None = None) -> dict[tuple[str, int], dict[str, Change]]:
    """Every job without an ARC stderr, so the unpaired rule is the bare 0.01 tolerance."""
    return {
        (s, n): {"eval.arc_easy_local.acc_stderr": lambda _: None, **(changes or {})}
        for s in STORAGES
        for n in SEEDS
    }


def row_of(out: str, job: str, metric: str) -> list[str]:
    [line] = [line for line in out.splitlines() if line.startswith(f"| {job} | {metric} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_drop_that_the_paired_ci_calls_noise_passes_where_the_unpaired_rule_failed(tmp_path, capsys):
    """-2 points on 200 questions (8 lost, 4 won): beyond the 0.01 tolerance, but the paired CI reaches 0."""
    drop = {ARC: shift(-0.02)}
    base_dir = write_sweep(tmp_path / "baseline", no_stderr())
    cur_dir = write_sweep(
        tmp_path / "current", {**no_stderr(), ("nf4", 0): {**no_stderr()[("nf4", 0)], **drop}}
    )
    assert run(capsys, base_dir, cur_dir)[0] == 1  # without samples: the unpaired rule fails it

    with_samples(base_dir)
    with_samples(cur_dir, {("nf4", 0): samples_frame(arc_scores(200, losses=8, wins=4), WIKI_LL)})
    code, out, _ = run(capsys, base_dir, cur_dir)
    assert code == 0
    job, metric, base, cur, delta, ci, p, allowed, verdict, note = row_of(
        out, "quant.storage=nf4 seed=0", ARC
    )
    assert (base, cur, delta[:5], verdict, note) == ("0.4", "0.38", "-0.02", "ok", "paired")
    low, high = (float(x) for x in ci.strip("[]").split(","))
    assert low < -0.01 < 0 < high
    # one procedure (harness.stats): p comes from the CI's own draws, so a CI that reaches 0 has p > 0.05
    assert float(p) > 0.05
    assert "12 metric(s) judged on the paired CI" in out and "2000 resamples, seed 0" in out


def test_drop_whose_whole_paired_ci_is_beyond_tolerance_regresses_with_ci_and_p(tmp_path, capsys):
    base_dir = with_samples(write_sweep(tmp_path / "baseline"))
    ppl_up = WIKI_LL - 0.05 * WIKI_WORDS  # every article loses 0.05 nats per word: ppl x 1.05
    cur_dir = with_samples(
        write_sweep(tmp_path / "current"), {("fp4", 1): samples_frame(arc_scores(200, losses=30), ppl_up)}
    )
    js = tmp_path / "compare.json"
    code, out, _ = run(capsys, base_dir, cur_dir, "--json", js, "--resamples", 500, "--seed", 3)
    assert code == 1
    assert {r.split(" | ")[1] for r in rows_with(out, "REGRESSED")} == {ARC, WIKI}
    # 30 of 200 answers lost, none won: no draw of the 500 reaches 0, so p is at most 1/500
    assert float(row_of(out, "quant.storage=fp4 seed=1", ARC)[6].removeprefix("< ")) <= 1 / 500

    report = json.loads(js.read_text())
    assert report["summary"]["bootstrap"] == {"resamples": 500, "seed": 3, "confidence": 0.95}
    [wiki] = [r for r in report["rows"] if r["job"] == "quant.storage=fp4 seed=1" and r["metric"] == WIKI]
    assert wiki["current"] / wiki["baseline"] == pytest.approx(math.exp(0.05))
    assert wiki["ci_low"] > wiki["allowed"] > 0 and wiki["n"] == 40 and wiki["p_value"] < 0.01


def test_baseline_without_samples_falls_back_and_says_so(baseline, tmp_path, capsys):
    current = with_samples(write_sweep(tmp_path / "current"))
    code, out, _ = run(capsys, baseline, current)
    assert code == 0
    assert "0 metric(s) judged on the paired CI" in out
    assert "- baseline has no per-sample results (samples.parquet) for 6 of 6 jobs" in out
    assert "fall back to the tolerance rules, unpaired" in out
    assert row_of(out, "quant.storage=nf4 seed=0", ARC)[5:7] == ["–", "–"]


def test_different_document_sets_compare_the_shared_documents_and_say_how_many(tmp_path, capsys):
    base_dir = with_samples(write_sweep(tmp_path / "baseline"))
    cur_dir = with_samples(
        write_sweep(tmp_path / "current"), {("int4", 0): samples_frame(arc_scores(200)[:150], WIKI_LL)}
    )
    code, out, _ = run(capsys, base_dir, cur_dir)
    assert code == 0
    note = row_of(out, "quant.storage=int4 seed=0", ARC)[-1]
    assert note == "paired on the 150 shared documents (baseline 200, current 150)"


def test_committed_baseline_carries_its_samples_beside_results_csv(tmp_path, capsys):
    """A baseline directory as qlora-report writes it (results.csv + samples.parquet) is paired too."""
    runs = with_samples(write_sweep(tmp_path / "runs"))
    table = load_results([runs]).table
    report = tmp_path / "reports" / "baselines" / "smoke"
    report.mkdir(parents=True)
    table.to_csv(report / "results.csv", index=False)
    assert write_report_samples(table, report) == report / "samples.parquet"
    current = with_samples(
        write_sweep(tmp_path / "current"), {("nf4", 1): samples_frame(arc_scores(200, losses=30), WIKI_LL)}
    )
    code, out, _ = run(capsys, report / "results.csv", current)
    assert code == 1
    assert "12 metric(s) judged on the paired CI" in out and "no per-sample results" not in out
    assert rows_with(out, "REGRESSED")[0].startswith(f"| quant.storage=nf4 seed=1 | {ARC} |")


def test_bad_bootstrap_settings_are_a_usage_error(baseline, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(baseline), str(baseline), "--resamples", "10"])
    assert exc.value.code == 2
    assert "resamples must be an int >= 100, got 10" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "cell"),
    [(693_473_280, "693,473,280"), (4.3472, "4.3472"), (4.04e80, "4.04e+80"), (math.inf, "inf")],
)
def test_table_cells_group_counts_and_keep_huge_values_short(value, cell):
    """Bytes read with separators; an untrained model's 1e80 word perplexity stays one short cell."""
    assert _fmt(value) == cell


def test_a_baseline_recorded_with_the_retired_fault_key_matches_jobs_without_it(baseline, tmp_path):
    """Results written while the config had the test-only ``fault`` key (as reports/baselines/smoke was)
    match today's jobs: job identity leaves retired keys out, for hashes and table keys alike."""
    planted = {"config.fault": lambda _: None}
    old = write_sweep(tmp_path / "old", {(storage, seed): planted for storage in STORAGES for seed in SEEDS})
    assert "config.fault" in load_results([old]).table
    comparison = compare_results([old], [baseline])
    assert comparison.exit_code == 0 and comparison.ignored_key_columns == []
    config = make_result("nf4", 0, tmp_path)["config"]
    assert config_hash({**config, "fault": None}) == config_hash(config)
    committed = pd.read_csv(ROOT / "reports" / "baselines" / "smoke" / "results.csv")
    assert "config.fault" not in identity_columns(committed.columns)
    assert "config.data.data_dir" not in identity_columns(committed.columns)
    assert "config.quant.storage" in identity_columns(committed.columns)


def test_a_config_key_added_later_keeps_older_results_the_same_jobs(baseline, tmp_path):
    """``train.checkpoint_every`` (an :data:`ADDED_KEYS` entry) came after results were written: at the value
    older jobs ran with (1) it leaves config_hash as it was (resume finds finished jobs), result.json files
    and results tables without it read as 1, and a baseline table without the column matches today's jobs
    with nothing left out of the key; any other value is another job."""
    config = make_result("nf4", 0, tmp_path)["config"]
    added = {**config, "train": {**config["train"], "checkpoint_every": 1}}
    other = {**config, "train": {**config["train"], "checkpoint_every": 2}}
    assert config_hash(added) == config_hash(config) != config_hash(other)
    assert ADDED_KEYS == {"train.checkpoint_every": 1}
    assert read_result(baseline / "nf4-seed0" / "result.json")["config"]["train"]["checkpoint_every"] == 1
    current = write_sweep(
        tmp_path / "current",
        {(s, seed): {"config.train.checkpoint_every": lambda _: 1} for s in STORAGES for seed in SEEDS},
    )
    old_table = tmp_path / "old.csv"
    load_results([baseline]).table.drop(columns="config.train.checkpoint_every").to_csv(old_table)
    comparison = compare_results([old_table], [current])
    assert comparison.exit_code == 0 and comparison.ignored_key_columns == []


def test_a_renamed_result_field_fails_loudly_in_reports_and_compare(baseline, monkeypatch):
    """Readers name result columns through the block dataclasses: if ``TrainBlock.tokens_per_s`` were
    renamed, the report's metric table and the tolerance rules naming it fail, naming the column, instead of
    leaving a report column or a compared metric silently empty."""
    table = load_results([baseline]).table
    assert "throughput (tokens/s) ↑" in metric_frame(table)[0]
    real = result_module.field_names

    def renamed(block: type) -> tuple[str, ...]:
        return tuple("tokens_per_second" if name == "tokens_per_s" else name for name in real(block))

    monkeypatch.setattr(result_module, "field_names", renamed)
    with pytest.raises(ResultError, match="'train.tokens_per_s'.*TrainBlock"):
        metric_frame(table)
    with pytest.raises(CompareInputError, match="train.tokens_per_s"):
        load_tolerances()
    with pytest.raises(ResultError, match="train.tokens_per_s"):
        column("train", "tokens_per_s")
