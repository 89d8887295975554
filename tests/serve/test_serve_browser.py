"""The page in a real browser: Debian's Chromium driven by Playwright (its executable, no browser download) enrolls
two speakers by file upload and identifies a third clip, with nothing loaded from outside the server."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serve_helpers import ServerProcess, voice_checkpoint, voice_clips  # noqa: F401

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
                 if p and Path(p).is_file()), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install -y chromium; "
                                                          ".ci/run installs it)")


def test_enroll_two_speakers_by_upload_and_identify_a_third_clip(voice_checkpoint, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install "
                                                                 "'spkid[browser]')")
    expect = sync_api.expect
    expect.set_options(timeout=60_000)                             # a busy CI machine: enroll may take seconds
    clips = {}
    for k, name in ((0, "Ada Lovelace"), (1, "Grace “Amazing” Hopper")):
        paths = []
        for j, data in enumerate(voice_clips(k, 3, seed=7)):
            paths.append(tmp_path / f"{k}-{j}.wav")
            paths[-1].write_bytes(data)
        clips[name] = paths
    srv = ServerProcess("--model", voice_checkpoint, "--registry", tmp_path / "reg.db", cwd=tmp_path)
    problems = []
    try:
        page_url = srv.proc.stdout.readline().split("open ", 1)[1].strip()
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            try:
                page = browser.new_page()
                page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                        if m.type in ("error", "warning") else None)
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                page.on("request", lambda r: problems.append(f"outside request: {r.url}")
                        if not r.url.startswith(srv.url + "/") and not r.url.startswith("data:") else None)
                page.goto(page_url)
                # (waits go through locators: the page's CSP forbids the eval that wait_for_function uses)
                expect(page.locator("#status")).to_contain_text("connected: 0 speaker(s)")
                assert "#token" not in page.url                    # the token leaves the address bar
                for name, paths in clips.items():
                    page.fill("#enroll-name", name)
                    page.set_input_files("#enroll-files", [str(p) for p in paths[:2]])
                    page.click("#enroll-submit")
                    expect(page.locator("#enroll-result")).to_contain_text(f"enrolled {name}: 2 clip(s)")
                expect(page.locator("#speakers tbody tr")).to_have_count(2)
                rows = page.eval_on_selector_all("#speakers tbody tr", "rs => rs.map(r => r.cells[0].textContent)")
                assert sorted(rows) == sorted(clips)
                for name, paths in clips.items():
                    page.set_input_files("#identify-file", str(paths[2]))
                    page.click("#identify-submit")
                    expect(page.locator("#identify-candidates tbody tr")).to_have_count(2)
                    first = page.text_content("#identify-candidates tbody tr td")
                    assert first == name, page.text_content("#identify-result")
                    assert page.text_content("#identify-answer") in (name, "unknown")
                    page.evaluate("document.getElementById('identify-result').replaceChildren()")
            finally:
                browser.close()
    finally:
        assert srv.stop() == 0
    assert problems == []
