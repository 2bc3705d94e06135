"""The web page in a real headless Chromium: upload an image, see hits, click one to search by it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "search-page.png"
# CI sets LAMINA_REQUIRE_BROWSER=1: there a missing browser fails instead of skipping.
REQUIRED = os.environ.get("LAMINA_REQUIRE_BROWSER") == "1"


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(reason + " (LAMINA_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def sync_playwright() -> Any:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright as sp
    except ImportError:
        _unavailable("the playwright package is not installed")
    return sp


@pytest.mark.browser
def test_search_page(
    sync_playwright: Any, live_url: str, derm_images: list[Path], tmp_path: Path
) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live_url + "/")
            page.wait_for_selector("#collection option[value=derm]", state="attached")
            page.fill("#filter", "diagnostic=MEL,BCC,SCC,ACK,NEV,SEK")
            page.set_input_files("#file", str(derm_images[0]))
            page.wait_for_selector(".hit", timeout=30_000)
            cards = page.locator(".hit")
            assert cards.count() == 12
            assert "snapshot" in page.inner_text("#status")
            first_name = page.locator(".hit .name").first.inner_text()
            assert first_name == derm_images[0].name
            page.wait_for_function(
                "Array.from(document.querySelectorAll('.hit img')).every(i => i.complete && i.naturalWidth > 0)",
                timeout=30_000,
            )
            # LAMINA_WRITE_SCREENSHOT=1 refreshes the screenshot in docs/
            shot = (
                DOCS_SCREENSHOT if os.environ.get("LAMINA_WRITE_SCREENSHOT") else tmp_path / "p.png"
            )
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=False)
            assert shot.stat().st_size > 10_000
            # click the third hit: search by its tile id, it comes back first
            tid = cards.nth(2).get_attribute("data-tile-id")
            cards.nth(2).click()
            page.wait_for_function(
                f"document.querySelector('.hit') && document.querySelector('.hit').dataset.tileId === '{tid}'",
                timeout=30_000,
            )
            assert not errors, errors
        finally:
            browser.close()
