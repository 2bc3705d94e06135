"""The slide viewer's routes on real slides: deep-zoom descriptors and tiles, errors, bounds.

A collection of a real SVS (CMU-1-Small-Region, one level), OpenSlide's generic-TIFF pyramid
fixture (boxes.tiff, four levels) and one dermatology photo, indexed with the classic encoder.
Tiles are compared pixel for pixel with what OpenSlide reads at the same level-0 place.
"""

from __future__ import annotations

import io
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest
from PIL import Image

from lamina.api.app import create_app
from lamina.encoders import create_encoder
from lamina.indexer import IngestOptions, ingest
from lamina.search import Store

API = "/api/v1"


def _index(home: Path, files: list[Path]) -> None:
    report = ingest(
        Store(home),
        "wsi",
        files,
        create_encoder("classic/stain-texture"),
        IngestOptions(progress=False, mpp_override=0.5),
    )
    assert report.ok, report


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, slides_dir: Path, derm_dir: Path) -> Any:
    home = tmp_path_factory.mktemp("viewer-home")
    photo = sorted((derm_dir / "images").glob("*.jpg"))[0]
    cmu = slides_dir / "CMU-1-Small-Region.svs"
    boxes = slides_dir / "openslide_fixtures" / "boxes.tiff"
    _index(home, [cmu, boxes, photo])
    app = create_app({"HOME": str(home), "DEVICE": "cpu", "API_TOKEN": None})
    view = app.extensions["lamina"].service.view("wsi")
    ids = {
        key: view.sql("SELECT source_id FROM sources WHERE source LIKE ?", [f"%{part}%"])[0][
            "source_id"
        ]
        for key, part in (("cmu", "CMU"), ("boxes", "boxes"), ("photo", ".jpg"))
    }
    return {"app": app, "home": home, "ids": ids, "cmu": cmu, "boxes": boxes}


@pytest.fixture(autouse=True)
def no_associated_images(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: object) -> None:
        raise AssertionError("an associated image (label/macro/thumbnail) was read")

    monkeypatch.setattr(openslide.OpenSlide, "associated_images", property(refuse))


def _get(world: Any, path: str) -> Any:
    return world["app"].test_client().get(API + path)


def _src(world: Any, key: str) -> str:
    return f"/collections/wsi/sources/{world['ids'][key]}"


def _image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_descriptor_is_the_level0_geometry(world: Any) -> None:
    r = _get(world, _src(world, "cmu") + "/dzi")
    assert r.status_code == 200, r.get_json()
    doc = r.get_json()
    dzi = doc["dzi"]
    with openslide.OpenSlide(str(world["cmu"])) as s:
        w, h = s.dimensions
    assert (dzi["width"], dzi["height"]) == (w, h) == (2220, 2967)
    assert dzi["levels"] == int(np.ceil(np.log2(max(w, h)))) + 1 == 13
    assert dzi["level_dimensions"][-1] == [w, h] and dzi["level_dimensions"][0] == [1, 1]
    assert dzi["level_tiles"][-1] == [int(np.ceil(w / 254)), int(np.ceil(h / 254))]
    assert dzi["tile_size"] == 254 and dzi["overlap"] == 1 and dzi["format"] == "jpeg"
    assert dzi["tiles"] == "dz/{level}/{col}_{row}.jpeg"
    assert doc["mpp"] == pytest.approx(0.499) and doc["kind"] == "slide"
    # the answer names the slide, never a server path
    text = r.get_data(as_text=True)
    assert doc["source"] == "CMU-1-Small-Region.svs"
    assert str(world["cmu"].parent) not in text and str(world["home"]) not in text
    # png tiles on request; the DZI XML says the same geometry
    assert (
        _get(world, _src(world, "cmu") + "/dzi?tile_format=png")
        .get_json()["dzi"]["tiles"]
        .endswith(".png")
    )
    x = _get(world, _src(world, "cmu") + "/dzi?format=xml")
    assert x.status_code == 200 and x.mimetype == "application/xml"
    root = ET.fromstring(x.data)
    ns = "{http://schemas.microsoft.com/deepzoom/2008}"
    assert root.tag == ns + "Image" and root.get("TileSize") == "254"
    size = root.find(ns + "Size")
    assert size is not None and (size.get("Width"), size.get("Height")) == ("2220", "2967")


def test_full_resolution_tiles_are_the_slide_pixels(world: Any) -> None:
    """Tile (c, r) of the last level covers level-0 pixels from 254*c - 1 (overlap) onward."""
    from lamina.indexer.slides import Slide

    with Slide(world["cmu"], require_mpp=False) as slide:
        for col, row in ((0, 0), (3, 5), (8, 11)):
            r = _get(world, _src(world, "cmu") + f"/dz/12/{col}_{row}.png")
            assert r.status_code == 200 and r.mimetype == "image/png"
            got = _image(r.data)
            x0, y0 = max(0, 254 * col - 1), max(0, 254 * row - 1)
            x1 = min(slide.width, 254 * (col + 1) + 1)
            y1 = min(slide.height, 254 * (row + 1) + 1)
            assert got.shape == (y1 - y0, x1 - x0, 3)
            np.testing.assert_array_equal(got, slide.read_rgb(x0, y0, 0, x1 - x0, y1 - y0))
    j = _get(world, _src(world, "cmu") + "/dz/12/3_5.jpeg")
    assert j.status_code == 200 and j.mimetype == "image/jpeg" and j.data[:2] == b"\xff\xd8"
    assert "max-age" in j.headers["Cache-Control"]


def test_coarse_levels_come_from_the_pyramid(world: Any) -> None:
    """boxes.tiff has four levels: every deep-zoom level answers, at its own size."""
    dzi = _get(world, _src(world, "boxes") + "/dzi").get_json()["dzi"]
    assert (dzi["width"], dzi["height"]) == (300, 250)
    for level in range(dzi["levels"]):
        w, h = dzi["level_dimensions"][level]
        r = _get(world, _src(world, "boxes") + f"/dz/{level}/0_0.png")
        assert r.status_code == 200, (level, r.get_json())
        # exactly the declared size (OpenSlide alone gives 38x31 for level 6's 38x32)
        assert _image(r.data).shape[:2] == (min(h, 255), min(w, 255)), level


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/collections/wsi/sources/{cmu}/dz/13/0_0.jpeg", 404, "DZ_TILE_NOT_FOUND"),
        ("/collections/wsi/sources/{cmu}/dz/12/9_0.jpeg", 404, "DZ_TILE_NOT_FOUND"),
        ("/collections/wsi/sources/{cmu}/dz/12/0_12.jpeg", 404, "DZ_TILE_NOT_FOUND"),
        ("/collections/wsi/sources/{cmu}/dz/0/1_0.jpeg", 404, "DZ_TILE_NOT_FOUND"),
        ("/collections/wsi/sources/{cmu}/dz/12/0_0.gif", 404, "DZ_TILE_NOT_FOUND"),
        ("/collections/wsi/sources/{cmu}/dz/" + "9" * 400 + "/0_0.jpeg", 404, "DZ_TILE_NOT_FOUND"),
        ("/collections/wsi/sources/{cmu}/dz/-1/0_0.jpeg", 404, "NOT_FOUND"),
        ("/collections/wsi/sources/{cmu}/dzi?format=yaml", 422, "INVALID_QUERY"),
        ("/collections/wsi/sources/{cmu}/dzi?tile_format=webp", 422, "INVALID_QUERY"),
        ("/collections/wsi/sources/nope/dzi", 404, "SOURCE_NOT_FOUND"),
        ("/collections/wsi/sources/nope/dz/0/0_0.jpeg", 404, "SOURCE_NOT_FOUND"),
        ("/collections/nope/sources/{cmu}/dzi", 404, "COLLECTION_NOT_FOUND"),
        ("/collections/wsi/sources/{photo}/dzi", 404, "NOT_A_SLIDE"),
        ("/collections/wsi/sources/{photo}/dz/0/0_0.jpeg", 404, "NOT_A_SLIDE"),
    ],
)
def test_errors_name_the_reason(world: Any, path: str, status: int, code: str) -> None:
    r = _get(world, path.format(**world["ids"]))
    doc = r.get_json()
    assert r.status_code == status and doc["code"] == code and doc["ok"] is False, doc
    assert len(doc["error"]) < 300 and "/" + "work" not in doc["error"]
    if code == "NOT_A_SLIDE":
        assert "photo" in doc["error"] and "thumbnail" in doc["error"]
    if code == "DZ_TILE_NOT_FOUND" and "9999" not in path and "gif" not in path:
        assert re.search(r"level|outside", doc["error"])


def test_handles_are_reused_and_caches_bounded(world: Any) -> None:
    from lamina.indexer.deepzoom import DeepZoomCache

    cache = world["app"].extensions["lamina_deepzoom"]  # made by the tests above
    opened = cache.opened
    for _ in range(3):
        assert _get(world, _src(world, "cmu") + "/dz/11/1_1.jpeg").status_code == 200
    assert cache.opened == opened  # the slide stays open between requests
    hits = cache.tile_hits
    assert _get(world, _src(world, "cmu") + "/dz/11/1_1.jpeg").status_code == 200
    assert cache.tile_hits == hits + 1  # served from the tile cache
    assert cache.tile_bytes <= cache.max_tile_bytes

    view = world["app"].extensions["lamina"].service.view("wsi")
    cmu, boxes = (view.source(world["ids"][k]) for k in ("cmu", "boxes"))
    small = DeepZoomCache(max_slides=1, max_tile_bytes=20_000)
    for i in range(6):
        small.tile(cmu if i % 2 else boxes, 8, 0, 0, "png")
        assert small.open_slides == 1  # the other slide was evicted
    assert small.opened == 6
    for c in range(9):
        small.tile(cmu, 12, c, 0, "png")
        assert small.tile_bytes <= 20_000


def test_deep_zoom_is_load_shed(world: Any) -> None:
    app = world["app"]
    c = app.test_client()
    assert c.get(API + _src(world, "cmu") + "/dzi").status_code == 200
    gate = app.extensions["lamina_gate"]
    taken = 0
    while gate.try_enter():
        taken += 1
    try:
        r = c.get(API + _src(world, "cmu") + "/dz/10/0_0.jpeg")
        assert r.status_code == 429 and r.get_json()["code"] == "OVERLOADED"
        assert r.headers["Retry-After"]
    finally:
        for _ in range(taken):
            gate.leave()
    assert c.get(API + _src(world, "cmu") + "/dz/10/0_0.jpeg").status_code == 200


def test_deep_zoom_needs_a_read_token(world: Any) -> None:
    from lamina.api.auth import TokenStore

    home = world["home"]
    secret = TokenStore(home).add("viewer-reader", "read")
    try:
        app = create_app({"HOME": str(home), "DEVICE": "cpu", "API_TOKEN": None})
        c = app.test_client()
        for path in ("/dzi", "/dz/12/0_0.jpeg"):
            assert c.get(API + _src(world, "cmu") + path).status_code == 401
            r = c.get(
                API + _src(world, "cmu") + path, headers={"Authorization": f"Bearer {secret}"}
            )
            assert r.status_code == 200
        assert c.get("/viewer?collection=wsi&tile=1").status_code == 200  # the page holds no data
    finally:
        shutil.rmtree(home / "auth")


def test_changed_or_moved_slides_are_refused(tmp_path: Path, slides_dir: Path, world: Any) -> None:
    home = tmp_path / "home"
    folder = tmp_path / "slides"
    folder.mkdir()
    copy = folder / "boxes.tiff"
    shutil.copyfile(slides_dir / "openslide_fixtures" / "boxes.tiff", copy)
    _index(home, [copy])
    sid = world["ids"]["boxes"]  # same bytes, same id
    app = create_app({"HOME": str(home), "DEVICE": "cpu", "API_TOKEN": None})
    c = app.test_client()
    with copy.open("ab") as f:
        f.write(b"\0" * 64)
    r = c.get(f"{API}/collections/wsi/sources/{sid}/dzi")
    assert r.status_code == 409 and r.get_json()["code"] == "SOURCE_CHANGED"
    copy.unlink()
    r = c.get(f"{API}/collections/wsi/sources/{sid}/dz/0/0_0.jpeg")
    assert r.status_code == 404 and r.get_json()["code"] == "SOURCE_FILE_MISSING"
    assert str(folder) not in r.get_data(as_text=True)


def test_viewer_page_uses_only_local_scripts(world: Any) -> None:
    r = world["app"].test_client().get("/viewer?collection=wsi&tile=3")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    refs = re.findall(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="([^"]*)"', html)
    assert any(u.endswith("openseadragon.min.js") for u in refs)
    assert any(u.endswith("viewer.js") for u in refs) and any(u.endswith(".css") for u in refs)
    for url in refs:
        assert not re.match(r"^(?:[a-z]+:)?//", url, re.I), url  # no CDN, no other host
        assert url.startswith("/"), url
        if url.startswith("/static/"):
            assert world["app"].test_client().get(url).status_code == 200, url
    vendored = Path(__file__).resolve().parents[2] / "api" / "static" / "vendor" / "openseadragon"
    assert (vendored / "LICENSE.txt").is_file() and (
        vendored / "images" / "home_rest.png"
    ).is_file()
    assert "openseadragon 5.0.1" in (vendored / "openseadragon.min.js").read_text()[:200]
    assert "5.0.1" in (vendored / "VERSION.md").read_text()
