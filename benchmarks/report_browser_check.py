"""Open a ``spkid report`` page in headless Chromium: no console errors, nothing loaded from outside, every image
decoded by the browser; save a screenshot.

    python benchmarks/report_browser_check.py report.html --screenshot docs/report_screenshot.png

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and ``playwright==1.65.2`` from PyPI, which drives
that binary (``executable_path``); Playwright's own browser download is never used. Exit status 1 when the page
has a problem, each printed on its own line.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    """The Chromium binary to drive, or None when neither Debian's nor one on PATH exists."""
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


def check_page(html: Path, screenshot: Path | None = None, *, full_page: bool = True, width: int = 1300,
               height: int = 900, chromium: str | None = None, timeout_s: float = 60) -> list[str]:
    """Problems found while loading ``html`` (empty = clean): console errors and warnings, uncaught page errors,
    any request other than the page itself and ``data:`` URIs, failed requests, images the browser could not
    decode. Writes a PNG screenshot to ``screenshot`` when given."""
    from playwright.sync_api import sync_playwright

    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium binary (apt-get install -y chromium)")
    page_url = Path(html).resolve().as_uri()
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="spkid-chromium-") as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=exe, headless=True, args=FLAGS,
                                                    viewport={"width": width, "height": height})
        try:
            page = ctx.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning", "assert") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: problems.append(f"outside request: {r.url[:120]}")
                    if r.url != page_url and not r.url.startswith("data:") else None)
            page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url[:120]} ({r.failure})")
                    if not r.url.startswith("data:") else None)
            page.goto(page_url, wait_until="load", timeout=timeout_s * 1000)
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])")
            for alt, complete, natural_width in images:
                if not (complete and natural_width > 0):
                    problems.append(f"image not decoded: {alt!r}")
            if screenshot is not None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=full_page)
        finally:
            ctx.close()
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html", type=Path)
    p.add_argument("--screenshot", type=Path, help="PNG to write")
    p.add_argument("--viewport-only", action="store_true", help="screenshot the first screen, not the whole page")
    p.add_argument("--width", type=int, default=1300)
    p.add_argument("--height", type=int, default=900)
    a = p.parse_args(argv)
    if not a.html.is_file():
        print(f"{a.html}: no such file", file=sys.stderr)
        return 2
    problems = check_page(a.html, a.screenshot, full_page=not a.viewport_only, width=a.width, height=a.height)
    for line in problems:
        print(line)
    print(f"{a.html}: {'ok' if not problems else f'{len(problems)} problem(s)'} in Chromium"
          + (f"; screenshot {a.screenshot}" if a.screenshot else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
