"""Refresh docs/screenshots/search-page.png: the web page searching PAD-UFES-20 by a melanoma photo.

    python -m bench.screenshot

Indexes the 686 photos with the classic encoder into a temporary home, serves the app with
waitress on 127.0.0.1, drives Debian's Chromium with Playwright, and saves the page.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LAMINA_SHARED_DATA") or REPO.parent / "shared" / "data")
DERM = SHARED / "derm" / "pad_ufes20_subset"
OUT = REPO / "docs" / "screenshots" / "search-page.png"
QUERY = "PAT_109_868_113.jpg"  # a melanoma
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def main() -> None:
    import waitress.server
    from playwright.sync_api import sync_playwright

    from lamina.api.app import create_app
    from lamina.encoders import create_encoder
    from lamina.indexer import IngestOptions, Manifest, ingest
    from lamina.search import Store

    home = Path(tempfile.mkdtemp()) / "home"
    ingest(
        Store(home),
        "derm",
        [DERM / "images"],
        create_encoder("classic/stain-texture"),
        IngestOptions(progress=False),
        Manifest.load(DERM / "labels.csv", "filename"),
    )
    server = waitress.server.create_server(
        create_app({"HOME": str(home)}), host="127.0.0.1", port=0, threads=4
    )
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{server.effective_port}/"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.wait_for_selector("#collection option[value=derm]", state="attached")
        page.set_input_files("#file", str(DERM / "images" / QUERY))
        page.wait_for_selector(".hit")
        page.wait_for_function(
            "Array.from(document.querySelectorAll('.hit img'))"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
        OUT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(OUT))
        browser.close()
    server.close()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
