"""report.html as a reader sees it: headless Chromium at 1400 px, no console errors, every figure decoded,
nothing cut off at the right edge. Skips (with the reason) where Chromium is not installed."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from test_report_paired import write_datatypes_sweep

from harness.report import build_report
from harness.report.browser import WIDTH, check_report, find_chromium

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)"
)


def test_report_loads_cleanly_with_every_figure_at_1400_px(tmp_path: Path) -> None:
    write_datatypes_sweep(tmp_path / "sweep")
    paths = build_report([tmp_path / "sweep"], tmp_path / "out")
    shot = tmp_path / "report.png"
    check = check_report(paths.html, CHROMIUM, screenshot=shot)
    assert check.problems == []
    assert check.images == len(paths.figures) >= 4
    assert check.window_width == WIDTH
    with Image.open(shot) as image:
        assert image.width == WIDTH


def test_check_sees_broken_images_console_errors_and_a_page_too_wide(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><body><img src="data:image/png;base64,AAAA" alt="figure one">'
        '<img src="missing.png" alt="figure two">'
        '<table><tr><td style="min-width: 2000px">wide</td></tr></table></body></html>'
    )
    check = check_report(page, CHROMIUM)
    assert check.broken == ["figure one", "figure two"]
    assert any("missing.png" in line for line in check.console)  # the failed load is logged
    assert check.page_width > WIDTH
    assert len(check.problems) == 2 + len(check.console) + 1
