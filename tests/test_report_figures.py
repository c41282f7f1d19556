"""Figures a reader can read: the text-extent checker, the fixes it drives, one colour per storage type,
and every committed report rebuilt from its committed tables with legible figures and no absolute path."""

from __future__ import annotations

import multiprocessing
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from harness.report import build_report, figures
from harness.report.cli import committed_reference
from harness.report.legibility import figure_text_problems, fit_text, place_labels
from harness.report.style import STORAGE_COLOURS, panels, storage_colour

REPORTS = Path(__file__).resolve().parents[1] / "reports"
COMMITTED = sorted(p.parent for p in REPORTS.rglob("results.parquet"))
ABSOLUTE = re.compile(rb"/(work|root|home|tmp)/")


def test_checker_finds_colliding_tick_labels() -> None:
    fig, (ax,) = panels(1, 3.0, 2.5)
    ax.bar(range(8), np.arange(8), tick_label=[f"fp4_e{i}m{i}_variant" for i in range(8)])
    problems = figure_text_problems(fig)
    assert any("fp4_e0m0_variant" in p and "fp4_e1m1_variant" in p and "overlap" in p for p in problems)


def test_checker_finds_text_off_the_canvas() -> None:
    """Without a layout engine a long y label runs past the top and bottom of a short figure."""
    fig = Figure(figsize=(3.0, 1.5))
    ax = fig.add_subplot()
    ax.set_ylabel("wikitext2_para_local word_perplexity (ppl, n=100) ↓ and more words")
    assert any("runs off" in p and "wikitext2_para_local" in p for p in figure_text_problems(fig))


def test_checker_finds_a_label_on_a_data_point() -> None:
    fig, (ax,) = panels(1, 4.0, 3.0)
    ax.scatter([0, 1], [0, 1], s=200)
    ax.annotate("nf4 + double_quant", (1, 1), xytext=(0, 0), textcoords="offset points", ha="center")
    problems = figure_text_problems(fig)
    assert any("sits on a data point" in p for p in problems)
    assert fit_text(fig) == problems  # nothing to wrap or turn upright: it returns what it could not fix


def test_fit_text_leaves_a_crowded_figure_with_nothing_to_report() -> None:
    fig, (ax,) = panels(1, 3.0, 2.5)
    ax.bar(range(8), np.arange(8), tick_label=[f"fp4_e{i}m{i}_variant" for i in range(8)])
    ax.set_ylabel("wikitext2_para_local word_perplexity (ppl, n=100) ↓ and more words to wrap")
    assert figure_text_problems(fig)
    assert fit_text(fig) == [] == figure_text_problems(fig)  # what it returns is what a fresh check finds
    assert "\n" in ax.get_ylabel()


def test_fit_text_wraps_a_panel_title_that_runs_off_the_canvas() -> None:
    """A long metric name over narrow panels (2 x 2 pairwise matrices): the titles run off the canvas and
    into each other until fit_text wraps them to their panel's width."""
    fig, axes = panels(3, 2.0, 2.0)
    for ax in axes:
        ax.set_title("arc_challenge_local acc_norm (higher is better)", fontsize=10)
    assert any("runs off" in p and "arc_challenge_local" in p for p in figure_text_problems(fig))
    assert fit_text(fig) == [] == figure_text_problems(fig)  # what it returns is what a fresh check finds
    assert "\n" in axes[0].get_title()


def test_labels_are_placed_clear_of_a_dense_cluster_of_points() -> None:
    """Nine points close together, each labelled: no label covers a point or another label."""
    fig, (ax,) = panels(1, 4.0, 3.0)
    x, y = np.linspace(4.0, 4.3, 9), np.array([300, 170, 104, 86, 80, 78, 72, 70, 69])
    ax.scatter(x, y, s=60)
    ax.scatter(x, y, s=160, facecolors="none", edgecolors="crimson")
    ax.plot(x, y, drawstyle="steps-post")
    place_labels(ax, list(zip(x, y, strict=True)), [f"nf4 · {2**i}" for i in range(5, 14)], fontsize=7)
    assert len(ax.texts) == 9
    assert figure_text_problems(fig) == []


def test_every_storage_type_has_one_colour_and_a_new_one_a_stable_one() -> None:
    from harness.quant.registry import STORAGE_SPECS

    assert len(set(STORAGE_COLOURS.values())) == len(STORAGE_COLOURS)
    assert len({storage_colour(s) for s in STORAGE_SPECS}) == len(STORAGE_SPECS)  # registered: all distinct
    assert storage_colour("nf4") == STORAGE_COLOURS["nf4"]
    new = storage_colour("mx4_future")
    assert re.fullmatch(r"#[0-9a-f]{6}", new) and new == storage_colour("mx4_future")
    assert new != storage_colour("mx4_other")


@pytest.mark.parametrize("folder", COMMITTED, ids=[str(p.relative_to(REPORTS)) for p in COMMITTED])
def test_committed_report_rebuilds_from_its_tables_with_legible_figures(folder: Path, tmp_path: Path) -> None:
    """The committed results.parquet and samples.parquet are enough to rebuild the report; every figure it
    draws passes the legibility check, and they are the figures committed beside it."""
    paths = build_report([], out=tmp_path, from_report=folder)
    assert committed_reference(tmp_path) == committed_reference(folder)  # the reference row it used
    assert paths.figure_problems == []
    committed = {p.stem for p in (folder / "figures").glob("*.png")}
    assert {p.stem for p in paths.figures} == committed
    table = pd.read_parquet(paths.parquet)
    assert not any(Path(str(job)).is_absolute() for job in table["job_dir"])


def test_figures_drawn_in_forked_workers_are_the_ones_drawn_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drawing a report's figures in two forked processes changes no pixel, name, caption or finding: the
    quickstart report rebuilt both ways has the same figures, PNG bytes equal."""
    quickstart = REPORTS / "quickstart"
    parallel = build_report([], out=tmp_path / "parallel", from_report=quickstart)
    monkeypatch.setattr(figures, "FIGURE_WORKERS", 1)
    serial = build_report([], out=tmp_path / "serial", from_report=quickstart)
    assert [p.name for p in parallel.figures] == [p.name for p in serial.figures] != []
    assert parallel.figure_problems == serial.figure_problems
    for drawn, alone in zip(parallel.figures, serial.figures, strict=True):
        assert drawn.read_bytes() == alone.read_bytes(), drawn.name


def _report_in_daemon(out: str, done) -> None:
    done.put(len(build_report([], out=out, from_report=REPORTS / "quickstart").figures))


def test_a_daemonic_process_draws_the_figures_itself(tmp_path: Path) -> None:
    """A daemonic process may not start children: there the report draws its figures in process instead of
    failing (an AssertionError from multiprocessing before the check)."""
    context = multiprocessing.get_context("fork")
    done = context.Queue()
    process = context.Process(target=_report_in_daemon, args=(str(tmp_path), done), daemon=True)
    process.start()
    drawn = done.get(timeout=300)  # read before join: a child joins only once its queue is drained
    process.join(timeout=30)
    assert process.exitcode == 0
    assert drawn == len(list((REPORTS / "quickstart" / "figures").glob("*.png")))


def test_no_report_file_names_an_absolute_machine_path() -> None:
    """Reports travel between machines: no file under reports/ may name /work/, /root/, /home/ or /tmp/."""
    files = [p for p in REPORTS.rglob("*") if p.is_file()]
    holding = sorted(str(p.relative_to(REPORTS)) for p in files if ABSOLUTE.search(p.read_bytes()))
    assert holding == []
