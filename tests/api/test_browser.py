"""The web page in a real headless Chromium: upload an image, see hits, click one to search by it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "search-page.png"


@pytest.fixture(scope="module")
def sync_playwright() -> Any:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    mod = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    return mod.sync_playwright


@pytest.mark.browser
def test_search_page(sync_playwright: Any, live_url: str, derm_images: list[Path]) -> None:
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
                timeout=30_000)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=False)
            # click the third hit: search by its tile id, it comes back first
            tid = cards.nth(2).get_attribute("data-tile-id")
            cards.nth(2).click()
            page.wait_for_function(
                f"document.querySelector('.hit') && document.querySelector('.hit').dataset.tileId === '{tid}'",
                timeout=30_000)
            assert not errors, errors
        finally:
            browser.close()
