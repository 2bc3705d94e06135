"""The slide viewer in a real headless Chromium, on a real slide (and a photo) served live.

Opens the viewer for a hit, checks that OpenSeadragon drew deep-zoom tiles answered 200, that
the hit's outline sits on the tile's level-0 rectangle (read back through OpenSeadragon's
viewport) and on the screen where OpenSeadragon maps that rectangle, that the other hits are
marked, that the tissue overlay toggles, and that drawing a box runs a region search whose hits
open in the viewer. No request leaves the server (OpenSeadragon is served locally).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_browser import ARGS, CHROMIUM, _unavailable

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "viewer.png"
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def wsi(tmp_path_factory: pytest.TempPathFactory, slides_dir: Path, derm_dir: Path) -> Any:
    from lamina.api.app import create_app
    from lamina.encoders import create_encoder
    from lamina.indexer import IngestOptions, ingest
    from lamina.search import Store

    home = tmp_path_factory.mktemp("viewer-browser")
    report = ingest(
        Store(home),
        "wsi",
        [
            slides_dir / "CMU-1-Small-Region.svs",
            sorted((derm_dir / "images").glob("*.jpg"))[0],
        ],
        create_encoder("classic/stain-texture"),
        IngestOptions(progress=False, mpp_override=0.5),
    )
    assert report.ok and report.indexed == 2
    return create_app({"HOME": str(home), "DEVICE": "cpu", "API_TOKEN": None})


@pytest.fixture(scope="module")
def sync_playwright() -> Any:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright as sp
    except ImportError:
        _unavailable("the playwright package is not installed")
    return sp


@pytest.fixture(scope="module")
def browser(sync_playwright: Any) -> Iterator[Any]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _rows(app: Any) -> list[dict[str, Any]]:
    view = app.extensions["lamina"].service.view("wsi")
    return view.sql(
        "SELECT tile_id, source_id, x, y, size_px, mpp FROM tiles WHERE source LIKE '%CMU%' "
        "ORDER BY y, x"
    )


def _screen_rect(page: Any, x: float, y: float, w: float, h: float) -> dict[str, float]:
    """Where OpenSeadragon maps a level-0 rectangle, in page pixels."""
    return page.evaluate(
        """([x, y, w, h]) => {
            const v = laminaViewer.viewer, vp = v.viewport;
            const a = vp.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
            const b = vp.imageToViewerElementCoordinates(new OpenSeadragon.Point(x + w, y + h));
            const c = v.element.getBoundingClientRect();
            return {x: c.left + a.x, y: c.top + a.y, w: b.x - a.x, h: b.y - a.y};
        }""",
        [x, y, w, h],
    )


def test_viewer_for_a_hit(browser: Any, wsi: Any, live_server: Any, tmp_path: Path) -> None:
    rows = _rows(wsi)
    hit = rows[len(rows) // 2]
    near = sorted(rows, key=lambda r: (r["x"] - hit["x"]) ** 2 + (r["y"] - hit["y"]) ** 2)
    others = near[1:6]  # the nearest tiles: in view around the outlined one
    hits_param = ",".join(f"{r['tile_id']}:{0.9 - i / 100:.2f}" for i, r in enumerate(others))
    with live_server(wsi) as server:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            dz: list[tuple[int, str]] = []
            page.on("response", lambda r: dz.append((r.status, r.url)) if "/dz/" in r.url else None)
            page.goto(
                f"{server.url}/viewer?collection=wsi&tile={hit['tile_id']}&score=0.9876"
                f"&hits={hits_param}"
            )
            page.wait_for_function("document.body.dataset.ready", timeout=30_000)
            assert page.evaluate("document.body.dataset.ready") == "yes", page.inner_text("#status")
            page.wait_for_function(
                "laminaViewer.viewer.world.getItemAt(0).getFullyLoaded()", timeout=30_000
            )
            # deep-zoom tiles were asked for and answered 200, and the canvas shows them
            assert len(dz) >= 4 and all(status == 200 for status, _ in dz), dz
            assert all(f"/sources/{hit['source_id']}/dz/" in url for _, url in dz)
            painted = page.evaluate(
                """() => {
                    const c = document.querySelector('#osd .openseadragon-canvas canvas');
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let n = 0;
                    for (let i = 0; i < d.length; i += 4 * 97) if (d[i + 3] > 0) n++;
                    return n / (d.length / (4 * 97));
                }"""
            )
            assert painted > 0.5  # most of the canvas is slide pixels
            # the outline: OpenSeadragon places it at the tile's level-0 rectangle ...
            placed = page.evaluate(
                """() => {
                    const v = laminaViewer.viewer;
                    const b = v.getOverlayById('hit-outline').getBounds(v.viewport);
                    const r = v.viewport.viewportToImageRectangle(b);
                    return [r.x, r.y, r.width, r.height];
                }"""
            )
            want = [hit["x"], hit["y"], hit["size_px"], hit["size_px"]]
            assert placed == pytest.approx(want, abs=0.01)
            # ... and that is where it is drawn on the screen
            box = page.locator("#hit-outline").bounding_box()
            screen = _screen_rect(page, *want)
            assert box is not None
            for got, exp in zip(
                (box["x"], box["y"], box["width"], box["height"]),
                (screen["x"], screen["y"], screen["w"], screen["h"]),
                strict=True,
            ):
                assert abs(got - exp) <= 2, (box, screen)
            assert screen["w"] > 40  # zoomed in on the tile
            # the info panel says where the tile is
            info = page.inner_text("#tile-info")
            for field in (str(hit["x"]), str(hit["y"]), "0.500", "0.9876"):
                assert field in info, info
            # the other hits of the query are marked on the slide
            marked = page.eval_on_selector_all(
                ".hit-marker", "els => els.map(e => e.dataset.tileId)"
            )
            assert sorted(int(t) for t in marked) == sorted(r["tile_id"] for r in others)
            assert page.locator("#slide-hits a.hit-open-viewer").count() == len(others)
            # the tissue overlay toggles
            page.wait_for_selector("#tissue-layer path.tissue", state="attached", timeout=30_000)
            assert page.locator("#tissue-layer path.tissue").count() >= 1
            assert page.is_visible("#tissue-layer")
            page.uncheck("#toggle-tissue")
            assert not page.is_visible("#tissue-layer")
            page.check("#toggle-tissue")
            assert page.is_visible("#tissue-layer")
            page.uncheck("#toggle-hits")
            assert not page.locator(".hit-marker").first.is_visible()
            page.check("#toggle-hits")
            assert page.locator(".hit-marker").first.is_visible()
            # draw a box over the outlined tile: a region search runs and lists hits
            searches: list[dict[str, Any]] = []
            page.on(
                "request",
                lambda r: (
                    searches.append(json.loads(r.post_data or "{}"))
                    if r.url.endswith("/collections/wsi/search")
                    else None
                ),
            )
            page.click("#draw-box")  # Escape leaves the draw mode; press it again
            assert page.get_attribute("#draw-box", "aria-pressed") == "true"
            page.keyboard.press("Escape")
            assert page.get_attribute("#draw-box", "aria-pressed") == "false"
            page.click("#draw-box")
            x0, y0 = screen["x"] + 2, screen["y"] + 2
            x1, y1 = screen["x"] + screen["w"] - 2, screen["y"] + screen["h"] - 2
            page.mouse.move(x0, y0)
            page.mouse.down()
            page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
            page.mouse.move(x1, y1, steps=4)
            page.mouse.up()
            page.wait_for_selector("#region-hits li", timeout=30_000)
            assert len(searches) == 1
            region = searches[0]["region"]
            assert region["slide"] == hit["source_id"]
            scale = hit["size_px"] / screen["w"]
            for key, exp in (("x", hit["x"]), ("y", hit["y"])):
                assert abs(region[key] - exp) <= 2 + 3 * scale, region
            for key in ("w", "h"):
                assert abs(region[key] - hit["size_px"]) <= 2 + 5 * scale, region
            items = page.locator("#region-hits li")
            assert items.count() == 12
            ids = [int(t) for t in page.eval_on_selector_all(
                "#region-hits li", "els => els.map(e => e.dataset.tileId)"
            )]  # fmt: skip
            assert hit["tile_id"] in ids  # the tile under the box is among its neighbours
            assert page.locator("#draw-layer rect.query-box").count() == 1
            assert page.locator(".region-hit").count() >= 1
            page.evaluate("laminaViewer.viewer.viewport.zoomBy(0.5, undefined, true)")
            page.wait_for_function(
                "laminaViewer.viewer.world.getItemAt(0).getFullyLoaded()", timeout=30_000
            )
            shot = (
                DOCS_SCREENSHOT if os.environ.get("LAMINA_WRITE_SCREENSHOT") else tmp_path / "v.png"
            )
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 20_000
            # a listed hit opens in the viewer, outlined there
            link = page.locator("#region-hits a.hit-open-viewer").nth(1)
            href = link.get_attribute("href") or ""
            assert href.startswith("/viewer?collection=wsi&tile=")
            target = int(href.split("tile=")[1].split("&")[0])
            link.click()
            page.wait_for_function("document.body.dataset.ready === 'yes'", timeout=30_000)
            assert page.evaluate("laminaViewer.tile.tile_id") == target
            assert page.locator("#hit-outline").count() == 1
            # nothing was fetched from anywhere but this server
            assert all(u.startswith(server.url) or u.startswith("blob:") for u in requests), {
                u for u in requests if not u.startswith(server.url)
            }
            assert not errors, errors
        finally:
            page.close()


def test_viewer_with_a_token_and_stored_hits(browser: Any, wsi: Any, live_server: Any) -> None:
    """On a server with a token, the viewer uses the one the search page stored and sends it
    with every tile; the other hits come from session storage (the search page's contract)."""
    from lamina.api.app import create_app

    secret = "viewer-test-token-5Gq8Zr2Lx7Pw"
    app = create_app({"HOME": str(wsi.extensions["lamina"].home), "API_TOKEN": secret})
    rows = _rows(wsi)
    hit, others = rows[3], rows[5:8]
    stored = {
        "collection": "wsi",
        "hits": [{**r, "score": 0.5} for r in [hit, *others]],
    }
    with live_server(app) as server:
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        try:
            tiles: list[tuple[int, str | None]] = []
            page.on(
                "response",
                lambda r: (
                    tiles.append((r.status, r.request.headers.get("authorization")))
                    if "/dz/" in r.url
                    else None
                ),
            )
            page.goto(f"{server.url}/viewer?collection=wsi&tile={hit['tile_id']}")
            assert page.is_visible("#token-box")  # asks for the token, loads nothing
            assert "token" in page.inner_text("#status")
            page.evaluate(
                """([doc, secret]) => {
                    sessionStorage.setItem('lamina-viewer-hits', JSON.stringify(doc));
                    sessionStorage.setItem('lamina-token', secret);
                }""",
                [stored, secret],
            )
            page.goto(f"{server.url}/viewer?collection=wsi&tile={hit['tile_id']}")
            page.wait_for_function("document.body.dataset.ready === 'yes'", timeout=30_000)
            page.wait_for_function(
                "laminaViewer.viewer.world.getItemAt(0).getFullyLoaded()", timeout=30_000
            )
            assert tiles and all(t == (200, f"Bearer {secret}") for t in tiles), tiles
            marked = page.eval_on_selector_all(
                ".hit-marker", "els => els.map(e => e.dataset.tileId)"
            )
            assert sorted(int(t) for t in marked) == sorted(r["tile_id"] for r in others)
            assert "0.5000" in page.inner_text("#tile-info")  # its score came from the store
            # a slide by source id: no tile outlined, the slide's geometry in the panel
            page.goto(f"{server.url}/viewer?collection=wsi&source={hit['source_id']}")
            page.wait_for_function("document.body.dataset.ready === 'yes'", timeout=30_000)
            assert page.locator("#hit-outline").count() == 0
            assert "2220 × 2967 px" in page.inner_text("#tile-info")
            # a photo has no pyramid: its image is shown instead
            view = wsi.extensions["lamina"].service.view("wsi")
            photo = view.sql("SELECT tile_id FROM tiles WHERE kind = 'photo'")[0]["tile_id"]
            page.goto(f"{server.url}/viewer?collection=wsi&tile={photo}")
            page.wait_for_function("document.body.dataset.ready === 'photo'", timeout=30_000)
            page.wait_for_function("document.getElementById('photo').naturalWidth > 0")
            assert page.is_visible("#photo") and not page.is_visible("#osd")
            assert str(photo) in page.inner_text("#tile-info")
            page.goto(f"{server.url}/viewer")  # no tile: says how to open one
            page.wait_for_function("document.body.dataset.ready === 'error'")
            assert "tile=" in page.inner_text("#status")
            page.goto(f"{server.url}/viewer?collection=wsi&tile=999999999")
            page.wait_for_function("document.body.dataset.ready === 'error'")
            assert "TILE_NOT_FOUND" in page.inner_text("#status")
        finally:
            page.close()
