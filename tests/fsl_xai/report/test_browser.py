"""The report in headless Chromium: it shows its images and makes no request but for itself.

Debian's Chromium at /usr/bin/chromium through Playwright, with the flags the browser suite uses
(tests/ui/conftest.py) and background networking off, so every request the page makes is seen.
A request counts unless its URL is the file itself (``file:``) or inline data (``data:``); such
requests are answered empty here, never sent.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[3] / "artifacts" / "screenshots"
LOCAL = re.compile(r"^(file|data):")

pytestmark = pytest.mark.ui


def _open(browser, path: Path, screenshot: Path | None = None) -> tuple[list[str], list[str], dict]:
    """Open ``path``; return (requests that are not file:/data:, console errors, facts about the page)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    outside: list[str] = []
    errors: list[str] = []

    def answer_empty(route, request) -> None:
        route.fulfill(status=200, body="", content_type="text/plain")

    context.route(re.compile(r"^(?!file:|data:)"), answer_empty)
    page = context.new_page()
    page.on("request", lambda r: None if LOCAL.match(r.url) else outside.append(r.url))
    page.on("websocket", lambda ws: outside.append(ws.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(path.as_uri(), wait_until="load")
        page.wait_for_load_state("networkidle")
        facts = page.evaluate("""() => ({
            images: document.images.length,
            decoded: Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length,
            cases: document.querySelectorAll('.case').length,
            headings: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
        })""")
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
    finally:
        context.close()
    return outside, errors, facts


def test_report_makes_no_request_in_chromium(audit_dir, tmp_path):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make browser`, or deselect with -m 'not ui'", pytrace=False)
    from playwright.sync_api import sync_playwright

    # a page that does reach out, to show that this test sees such requests
    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><html><head><link rel="stylesheet" href="https://cdn.example.org/x.css">'
                       '</head><body><img src="http://127.0.0.1:9/x.png"></body></html>')
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            seen, _, _ = _open(browser, control)
            outside, errors, facts = _open(browser, audit_dir.report, SCREENSHOTS / "report_offline.png")
        finally:
            browser.close()
    assert sorted(seen) == ["http://127.0.0.1:9/x.png", "https://cdn.example.org/x.css"]
    assert outside == [], outside
    assert errors == [], errors
    # 12 failures x (query image + 2 maps), every one decoded from its data: URI
    assert facts["cases"] == 12 and facts["images"] == 36 and facts["decoded"] == 36
    assert facts["headings"] == ["At a glance", "Provenance", "Accuracy", "Subgroups and populations",
                                 "Explanation sanity checks", "Most confident failures", "Reproduce"]
