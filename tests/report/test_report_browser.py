"""The report in a real headless Chromium (benchmarks/report_browser_check.py): renders with no console error,
loads nothing from outside, every image decodes; the check itself catches a broken page.

Skipped when Chromium (Debian ``chromium``) or ``playwright`` is not installed.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image as PILImage

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("report_browser_check", ROOT / "benchmarks" / "report_browser_check.py")
browser = importlib.util.module_from_spec(spec)
spec.loader.exec_module(browser)

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright not installed"),
    pytest.mark.skipif(browser.find_chromium() is None, reason="chromium not installed"),
]


def test_full_report_renders_cleanly_in_chromium(trained, tmp_path):
    from spkid.report import build_report
    seen = trained["seen"]["root"]
    r = build_report([trained["run"]], tmp_path / "report.html", test_dir=seen, answers=seen / "answers.csv",
                     trials_dir=trained["unseen"]["root"], progress=False, device="cpu")
    shot = tmp_path / "shot.png"
    assert browser.check_page(r.path, shot) == []
    im = PILImage.open(shot)
    assert im.format == "PNG" and im.width == 1300 and im.height > 3000       # the whole page, all sections


def test_check_reports_console_errors_outside_loads_and_broken_images(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><img alt="outside" src="http://127.0.0.1:9/x.png">'
                    '<img alt="broken" src="data:image/png;base64,AAAA"><script>console.error("boom")</script>'
                    "</body></html>")
    problems = browser.check_page(page)
    assert "console error: boom" in problems
    assert any(p.startswith("outside request: http://127.0.0.1:9/x.png") for p in problems)
    assert "image not decoded: 'broken'" in problems and "image not decoded: 'outside'" in problems
