"""qlora-report end to end on realistic result.json files: table, Markdown, figures, HTML, bad input."""

from __future__ import annotations

import contextlib
import io
import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib.image
import pandas as pd
import pytest
import scipy.stats
from PIL import Image

from harness.report import build_report
from harness.report.cli import main
from harness.report.figures import pareto_mask
from harness.report.metrics import metric_frame
from harness.result import JobResult, config_hash

MIB = 2**20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CAVEAT = "SmolLM2-135M-Instruct shipped as GGUF Q4_1: its weights were 4-bit quantized once before"

# Sweep A: storage × seed. Per storage: arc acc_norm per seed, wikitext word perplexity per seed, bits/param.
ARC = {"nf4": [0.45, 0.47], "fp4": [0.42, 0.43], "int4": [0.40, 0.44]}
PPL = {"nf4": [41.2, 40.8], "fp4": [39.5, 39.9], "int4": [44.0, 45.0]}
BITS = {"nf4": 4.127, "fp4": 4.127, "int4": 4.5}
TOKENS_PER_S = {"nf4": 410.0, "fp4": 430.0, "int4": 300.0}


def config_of(
    storage: str, seed: int, blocksize: int = 64, r: int = 16, double_quant: bool = True
) -> dict[str, Any]:
    """A resolved job config (a subset of the real one: what the report reads)."""
    return {
        "model": {"name_or_path": "smollm2-135m", "revision": None, "cache_dir": None},
        "quant": {
            "storage": storage,
            "blocksize": blocksize,
            "double_quant": double_quant,
            "compute_dtype": "auto",
            "skip_modules": ["lm_head"],
        },
        "lora": {"r": r, "alpha": 16.0, "dropout": 0.1, "targets": ["q_proj", "v_proj"]},
        "train": {
            "steps": 10,
            "batch_size": 4,
            "seq_len": 128,
            "lr": 2e-4,
            "optimizer": "adamw",
            "warmup_steps_excluded": 2,
        },
        "data": {"source": "synthetic", "data_dir": f"/data/{seed}"},
        "eval": {"tasks": ["arc_easy_local", "wikitext2_local"], "limit": 200, "log_samples": True},
        "seed": seed,
        "device": "cpu",
    }


def env(commit: str) -> dict[str, Any]:
    return {
        "python": "3.11.9",
        "torch": "2.6.0+cpu",
        "bitsandbytes": "0.50.2",
        "transformers": "5.0.0",
        "peft": "0.21.0",
        "lm_eval": "0.4.13",
        "device": "cpu",
        "device_name": "AMD EPYC 7B13",
        "git_commit": commit,
        "hostname": "bench-1",
        "started_utc": "2026-12-01T10:00:00Z" if commit == "abc1234" else "2026-12-02T11:30:00Z",
    }


def ok_result(
    config: dict[str, Any],
    evaluation: dict[str, dict[str, float]],
    bits: float,
    tps: float,
    loss: list[float],
) -> JobResult:
    """A finished job's result as the job assembles it."""
    quant = config["quant"]
    return JobResult(
        status="ok",
        config=config,
        config_hash=config_hash(config),
        env=env("abc1234" if config["seed"] == 0 else "def5678"),
        model={"source": "shipped-gguf", "max_seq_len": 8192},
        quant={
            "storage": quant["storage"],
            "blocksize": quant["blocksize"],
            "double_quant": quant["double_quant"],
            "weight_bytes": 70_000_000,
            "quantized_params": 134_000_000,
            "bits_per_param": bits,
            "layers": 210,
            "skipped": ["lm_head"],
        },
        lora={
            "r": config["lora"]["r"],
            "alpha": 16.0,
            "targets": ["q_proj", "v_proj"],
            "trainable_params": 9e5,
        },
        train={
            "steps": len(loss),
            "tokens": 5120,
            "target_tokens": 2000,
            "tokens_per_s": tps,
            "step_time_s_median": 1.2,
            "loss": loss,
            "loss_start": loss[0],
            "loss_end": loss[-1],
            "gradient_checkpointing": True,
            "peak_memory_bytes": (300 + config["seed"]) * MIB,
            "peak_memory_kind": "rss",
        },
        eval=evaluation,
        caveats=[CAVEAT],
        timings_s={"load": 3.0, "quantize": 1.0, "train": 12.0, "eval": 30.0, "total": 46.0},
    )


def ok_record(config: dict[str, Any], arc: float, ppl: float, bits: float, tps: float) -> JobResult:
    seed = config["seed"]
    evaluation = {
        "arc_easy_local": {
            "acc": arc - 0.02,
            "acc_stderr": 0.035,
            "acc_norm": arc,
            "acc_norm_stderr": 0.035,
            "n": 200,
        },
        "wikitext2_local": {"word_perplexity": ppl, "byte_perplexity": 1.9, "bits_per_byte": 0.93, "n": 20},
    }
    loss = [2.5 - 0.12 * step - 0.01 * seed for step in range(10)]
    return ok_result(config, evaluation, bits, tps + seed, loss)


def failed_record(config: dict[str, Any]) -> JobResult:
    return JobResult(
        status="failed",
        config=config,
        config_hash=config_hash(config),
        env=env("abc1234"),
        error={
            "type": "RuntimeError",
            "message": "quantize: blocksize 4096 exceeds the row length 576\nsecond line",
            "traceback": "Traceback (most recent call last): ...",
        },
        timings_s={"load": 3.0, "total": 3.1},
        caveats=[CAVEAT],
    )


def write_storage_sweep(root: Path) -> None:
    """Six finished jobs (three storage types × two seeds), one failed job, one corrupt result.json."""
    for storage in ARC:
        for seed in (0, 1):
            config = config_of(storage, seed)
            record = ok_record(
                config, ARC[storage][seed], PPL[storage][seed], BITS[storage], TOKENS_PER_S[storage]
            )
            record.save(root / f"{storage}-s{seed}")
    failed_record(config_of("nf4", 0, blocksize=4096)).save(root / "nf4-bs4096")
    (root / "broken").mkdir()
    (root / "broken" / "result.json").write_text('{"schema_version": 1, "status": ')


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    """Run ``qlora-report SWEEP -o OUT`` once; returns exit code, stderr and OUT."""
    root = tmp_path_factory.mktemp("storage_sweep")
    write_storage_sweep(root)
    out = tmp_path_factory.mktemp("report")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main([str(root), "-o", str(out)])
    return code, stderr.getvalue(), out


def table_rows(markdown: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of the Markdown table whose first header cell starts with ``header_start``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header_start}"))
    block = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        block.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return block[0], block[2:]


def results_cell(markdown: str, row: str, header_start: str) -> str:
    header, rows = table_rows(markdown, "quant.storage")
    column = next(i for i, name in enumerate(header) if name.startswith(header_start))
    return next(r for r in rows if r[0] == row)[column]


def mean_ci(values: list[float], digits: int) -> str:
    """Mean and 95 % t-interval over seeds, as the table prints them (computed here by hand)."""
    mean = statistics.mean(values)
    half = scipy.stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:.{digits}f} [{mean - half:.{digits}f}, {mean + half:.{digits}f}]"


def test_table_has_one_row_per_job_with_dotted_columns(report: tuple[int, str, Path]) -> None:
    _, _, out = report
    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 7  # six finished jobs and the failed one; the corrupt file is no row
    assert sorted(table["status"]) == ["failed"] + ["ok"] * 6
    for column in ("config.quant.storage", "config.lora.r", "eval.arc_easy_local.acc_norm", "train.loss"):
        assert column in table.columns
    nf4 = table[(table["config.quant.storage"] == "nf4") & (table["status"] == "ok")]
    assert sorted(nf4["eval.arc_easy_local.acc_norm"]) == ARC["nf4"]
    assert list(table["train.loss"].iloc[0])[:2] == pytest.approx([2.5, 2.38], abs=0.011)
    assert len(pd.read_csv(out / "results.csv")) == 7


def test_rows_are_what_the_sweep_varied_not_seeds_or_paths(report: tuple[int, str, Path]) -> None:
    header, rows = table_rows((report[2] / "report.md").read_text(), "quant.storage")
    assert header[:2] == ["quant.storage", "seeds (n)"]  # blocksize differs only in the failed job
    assert [r[0] for r in rows] == ["fp4", "int4", "nf4"]
    assert all(r[1] == "2" for r in rows)


def test_markdown_shows_mean_and_t_interval_over_seeds(report: tuple[int, str, Path]) -> None:
    markdown = (report[2] / "report.md").read_text()
    for storage in ARC:
        arc = results_cell(markdown, storage, "arc_easy_local acc_norm (%")
        assert arc.strip("*") == mean_ci([100 * v for v in ARC[storage]], 1)
        ppl = results_cell(markdown, storage, "wikitext2_local word_perplexity (ppl")
        assert ppl.strip("*") == mean_ci(PPL[storage], 2)
    assert results_cell(markdown, "nf4", "peak memory (MiB, rss)") == mean_ci([300.0, 301.0], 1)
    assert results_cell(markdown, "int4", "bits/param (bits)") == "4.500"  # no spread: no interval
    assert "t-interval over the row's seeds" in markdown


def test_bold_only_where_a_row_beats_every_other_significantly(report: tuple[int, str, Path]) -> None:
    """Two seeds cannot separate nf4's 46 % from fp4's 42.5 % (paired t, p = 0.09): nothing bold there."""
    markdown = (report[2] / "report.md").read_text()
    for storage in ARC:
        assert not results_cell(markdown, storage, "arc_easy_local acc_norm").startswith("**")
        assert not results_cell(markdown, storage, "wikitext2_local word_perplexity").startswith("**")
        assert not results_cell(markdown, storage, "bits/param").startswith("**")  # nf4 and fp4 tie
    # fp4 is 20 tokens/s faster than nf4 and 130 faster than int4 on both seeds: a paired difference.
    assert results_cell(markdown, "fp4", "throughput").startswith("**")
    assert not results_cell(markdown, "nf4", "peak memory").startswith("**")  # all rows equal: no best
    assert "Bold: significantly better than every other row" in markdown
    assert "↑" in markdown and "↓" in markdown


def test_failed_job_is_listed_with_its_reason(report: tuple[int, str, Path]) -> None:
    markdown = (report[2] / "report.md").read_text()
    header, rows = table_rows(markdown, "job dir")
    assert header == ["job dir", "quant.storage", "error"]
    (row,) = rows
    assert row[0].endswith("nf4-bs4096`")
    assert row[2] == "`RuntimeError: quantize: blocksize 4096 exceeds the row length 576`"


def test_environment_caveats_and_sources_are_reported(report: tuple[int, str, Path]) -> None:
    markdown = (report[2] / "report.md").read_text()
    assert "| device_name | AMD EPYC 7B13 |" in markdown
    assert "| git_commit | abc1234, def5678 |" in markdown
    assert "| started_utc | 2026-12-01T10:00:00Z – 2026-12-02T11:30:00Z" in markdown  # first – last job
    assert "| torch | 2.6.0+cpu |" in markdown
    assert markdown.count(CAVEAT) == 1  # union, not one per job
    nf4_sources = next(line for line in markdown.splitlines() if line.startswith("- nf4: "))
    assert "nf4-s0" in nf4_sources and "nf4-s1" in nf4_sources


@pytest.mark.parametrize(
    "name",
    [
        "score_by_storage",
        "bits_vs_score",
        "memory_vs_score",
        "loss_curves",
        "throughput_by_storage",
        "forest",
        "pairwise",
    ],
)
def test_figures_are_real_images(report: tuple[int, str, Path], name: str) -> None:
    png = report[2] / "figures" / f"{name}.png"
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000
    with Image.open(png) as image:
        assert image.width > 400 and image.height > 300
    assert matplotlib.image.imread(png).ndim == 3
    assert "<svg" in (report[2] / "figures" / f"{name}.svg").read_text()


def test_figures_that_need_a_varied_setting_are_not_drawn(report: tuple[int, str, Path]) -> None:
    figures = report[2] / "figures"
    assert not (figures / "score_vs_blocksize.png").exists()
    assert not (figures / "score_vs_lora_r.png").exists()


def test_no_figures_writes_the_same_tables_and_says_none_were_drawn(
    report: tuple[int, str, Path], tmp_path: Path
) -> None:
    """--no-figures: the same results and comparisons as the full report, no image, and a report that says
    the figures were not drawn (rather than that the results support none)."""
    root = tmp_path / "sweep"
    write_storage_sweep(root)
    with contextlib.redirect_stderr(io.StringIO()):
        assert main([str(root), "-o", str(tmp_path / "out"), "--no-figures"]) == 0
    out, full = tmp_path / "out", report[2]
    for table in ("results.csv", "comparisons.csv"):
        fast, drawn = (pd.read_csv(f / table).drop(columns="job_dir", errors="ignore") for f in (out, full))
        assert fast.equals(drawn)
    assert not (out / "figures").exists()
    markdown = (out / "report.md").read_text()
    assert "Not drawn (qlora-report --no-figures)." in markdown and ".png)" not in markdown
    assert "data:image/png" not in (out / "report.html").read_text()


def test_html_is_self_contained_with_the_same_numbers(report: tuple[int, str, Path]) -> None:
    html = (report[2] / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(list((report[2] / "figures").glob("*.png"))) == 7
    assert "http" not in html.replace("http-equiv", "")
    assert "<link" not in html and "<script" not in html
    assert f"<strong>{mean_ci([430.0, 431.0], 1)}</strong>" in html
    assert "RuntimeError: quantize: blocksize 4096" in html


def test_corrupt_file_is_reported_and_skipped(report: tuple[int, str, Path]) -> None:
    code, stderr, out = report
    assert code == 0
    assert "broken" in stderr and "not a readable result.json" in stderr
    assert "## Unreadable result files (skipped)" in (out / "report.md").read_text()


def test_no_results_exits_2_naming_the_dirs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty_sweep"
    empty.mkdir()
    assert main([str(empty), str(tmp_path / "missing")]) == 2
    stderr = capsys.readouterr().err
    assert str(empty) in stderr and "missing: no such file or directory" in stderr
    assert not (empty / "report.md").exists()


def test_block_size_and_rank_sweep_gets_its_own_rows_and_figures(tmp_path: Path) -> None:
    """A different sweep (block size × storage, plus ranks) needs no code change: rows and figures follow."""
    settings = [
        ("nf4", 64, 16),
        ("nf4", 256, 16),
        ("fp4", 64, 16),
        ("fp4", 256, 16),
        ("nf4", 64, 8),
        ("nf4", 64, 64),
    ]
    for i, (storage, blocksize, r) in enumerate(settings):
        config = config_of(storage, 0, blocksize=blocksize, r=r)
        record = ok_record(config, 0.40 + 0.01 * i, 40.0 + i, 4.127, 400.0)
        record.eval_before = {"arc_easy_local": {"acc_norm": 0.30, "n": 200}}
        record.save(tmp_path / f"job{i}")
    paths = build_report([tmp_path])
    assert paths.out == tmp_path  # default OUT is the first directory
    header, rows = table_rows(paths.markdown.read_text(), "quant.storage")
    assert header[:4] == ["quant.storage", "quant.blocksize (weights/scale)", "lora.r (rank)", "seeds (n)"]
    delta = header.index("Δ arc_easy_local acc_norm (pp, after−before) ↑")
    assert next(r for r in rows if r[:3] == ["fp4", "256", "16"])[delta] == "13.0"  # 0.43 − 0.30, one seed
    assert next(r for r in rows if r[:3] == ["nf4", "64", "64"])[delta] == "15.0"  # one seed: not tested
    names = {p.stem for p in paths.figures}
    assert {"score_vs_blocksize", "score_vs_lora_r", "score_by_storage"} <= names


def test_eval_delta_written_by_the_job_wins_over_recomputing_it() -> None:
    table = pd.DataFrame(
        {
            "eval.t.acc": [0.5],
            "eval_before.t.acc": [0.1],
            "eval_delta.t.acc": [0.25],
        }
    )
    frame, metrics = metric_frame(table)
    assert frame["Δ t acc (pp, after−before) ↑"].tolist() == [25.0]
    assert [m.role for m in metrics] == ["score", "delta"]


def test_pareto_front_keeps_points_nothing_beats() -> None:
    bits = [4.0, 4.5, 4.5, 8.0]
    acc = [0.40, 0.45, 0.42, 0.44]
    assert pareto_mask(bits, acc, higher_y_is_better=True) == [True, True, False, False]
    perplexity = [10.0, 9.0, 8.0, 7.0]  # lower is better: (4.5, 8.0) beats (4.5, 9.0)
    assert pareto_mask(bits, perplexity, higher_y_is_better=False) == [True, False, True, True]


def test_weight_error_is_a_column_lower_is_better() -> None:
    """``quant.weight_error.rel_rms`` (relative RMS error of the stored weights) becomes a ranked column."""
    table = pd.DataFrame({"quant.bits_per_param": [4.127, 4.5], "quant.weight_error.rel_rms": [0.09, 0.12]})
    frame, metrics = metric_frame(table)
    (error,) = [m for m in metrics if m.role == "weight_error"]
    assert frame[error.header].tolist() == [0.09, 0.12]
    assert error.header == "weight error (rel. RMS) ↓"


def test_training_columns_only_for_jobs_that_trained() -> None:
    """A job with train.steps=0 (zero-shot sweeps) records 0 tokens/s: that is no measurement, so the column
    shows it as missing, and a table of such jobs has no throughput or peak-memory column at all."""
    table = pd.DataFrame(
        {
            "config.train.steps": [0, 10],
            "train.tokens_per_s": [0.0, 400.0],
            "train.peak_memory_bytes": [2**30, 2**30],
            "quant.bits_per_param": [4.5, 4.5],
        }
    )
    frame, _ = metric_frame(table)
    assert frame["throughput (tokens/s) ↑"].isna().tolist() == [True, False]
    frame, metrics = metric_frame(table.iloc[:1])
    assert {m.role for m in metrics} == {"bits"}


def test_paired_comparisons_are_pictures_and_a_few_lines(report: tuple[int, str, Path]) -> None:
    """The pairwise sentences gave way to a forest plot, the pairwise matrices and one line per metric."""
    markdown = (report[2] / "report.md").read_text()
    section = markdown.split("## Paired comparisons")[1].split("\n## ")[0]
    assert "(figures/forest.png)" in section and "(figures/pairwise.png)" in section
    lines = [line for line in section.splitlines() if line.startswith("- ")]
    assert any(line.startswith("- arc_easy acc_norm: ") and "pairs in all" in line for line in lines)
    assert len(lines) <= 6
    assert "## Findings" not in markdown
