"""Slide QC through the API and `lamina qc`: GeoJSON validated with shapely, the grid in the PNG."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest
from click.testing import CliRunner
from PIL import Image
from shapely.geometry import Point, box, shape
from shapely.ops import unary_union

from lamina.api.app import create_app
from lamina.api.cli import cli
from lamina.encoders import create_encoder
from lamina.indexer import IngestOptions, ingest
from lamina.indexer.slide_qc import KEPT_RGB, LEGEND_PX, REJECTED_RGB, TISSUE_RGB
from lamina.search import Store

CELL = 128  # level-0 side of one synthetic tile: tile_px 64 at 0.5 µm/px on a 0.25 µm/px slide
TISSUE = [(2, 3, 6, 7), (9, 1, 12, 3)]  # cells (col0, row0, col1, row1), end-exclusive
LAMINA = [sys.executable, "-m", "lamina.api"]


@pytest.fixture(scope="module")
def qc_home(
    tmp_path_factory: pytest.TempPathFactory, make_slide: Any, slides_dir: Path, derm_dir: Path
) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("qc-home")
    synthetic = make_slide("blocks.tiff", tissue=TISSUE, folder="qc")
    real = slides_dir / "CMU-1-Small-Region.svs"
    photo = sorted((derm_dir / "images").iterdir())[0]
    opts = IngestOptions(tile_px=64, mpp=0.5, progress=False, workers=2)
    report = ingest(
        Store(home), "qc", [synthetic, real, photo], create_encoder("classic/stain-texture"), opts
    )
    assert report.ok and report.indexed == 3, report.to_dict()
    app = create_app({"HOME": str(home), "DEVICE": "cpu"})
    view = app.extensions["lamina"].service.view("qc")
    sid = {
        Path(r["source"]).name: r["source_id"]
        for r in view.sql("SELECT source, source_id FROM sources")
    }
    return {"home": home, "app": app, "view": view, "sid": sid, "paths": (synthetic, real, photo)}


@pytest.fixture(autouse=True)
def no_associated_images(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: object) -> None:
        raise AssertionError("an associated image (label/macro/thumbnail) was read")

    monkeypatch.setattr(openslide.OpenSlide, "associated_images", property(refuse))


def _geojson(ctx: dict[str, Any], name: str) -> dict[str, Any]:
    r = (
        ctx["app"]
        .test_client()
        .get(f"/api/v1/collections/qc/sources/{ctx['sid'][name]}/qc.geojson")
    )
    assert r.status_code == 200, r.get_json()
    assert r.mimetype == "application/geo+json"
    return json.loads(r.data)


def _stored(ctx: dict[str, Any], name: str) -> dict[tuple[int, int], dict[str, Any]]:
    rows = ctx["view"].sql(
        "SELECT tile_id, x, y, tissue_fraction FROM tiles WHERE source_id = ?", [ctx["sid"][name]]
    )
    return {(r["x"], r["y"]): r for r in rows}


def _split(doc: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    assert doc["type"] == "FeatureCollection"
    tissue = [f for f in doc["features"] if f["properties"]["kind"] == "tissue"]
    tiles = [f for f in doc["features"] if f["properties"]["kind"] == "tile"]
    assert len(tissue) + len(tiles) == len(doc["features"])
    for f in doc["features"]:
        assert f["type"] == "Feature" and shape(f["geometry"]).is_valid, f["properties"]
    for f in tissue:
        assert f["geometry"]["type"] == "Polygon"
        assert f["properties"]["objectType"] == "annotation"
        assert f["properties"]["classification"]["name"] == "Tissue"
    for f in tiles:
        assert f["properties"]["objectType"] == "detection"
        assert isinstance(f["properties"]["kept"], bool)
        assert ("tile_id" in f["properties"]) == f["properties"]["kept"]
    return tissue, tiles


def test_synthetic_slide_geojson_is_the_ingest(qc_home: dict[str, Any]) -> None:
    doc = _geojson(qc_home, "blocks.tiff")
    tissue, tiles = _split(doc)
    # the whole grid (16 x 12 cells), each tile a CELL square in level-0 pixels
    assert len(tiles) == 16 * 12 == doc["lamina"]["grid_tiles"]
    for f in tiles:
        x0, y0, x1, y1 = shape(f["geometry"]).bounds
        assert (x1 - x0, y1 - y0) == (CELL, CELL) and x0 % CELL == 0 and y0 % CELL == 0
    kept = {
        (int(shape(f["geometry"]).bounds[0]), int(shape(f["geometry"]).bounds[1])): f["properties"]
        for f in tiles
        if f["properties"]["kept"]
    }
    stored = _stored(qc_home, "blocks.tiff")
    assert set(kept) == set(stored)  # kept tiles are exactly the stored tiles
    assert all(kept[xy]["tile_id"] == stored[xy]["tile_id"] for xy in kept)
    blocks = {(c, r) for c0, r0, c1, r1 in TISSUE for c in range(c0, c1) for r in range(r0, r1)}
    assert {(x // CELL, y // CELL) for x, y in kept} == blocks
    # the tissue polygons are the blocks (up to the mask's pixels) and hold every kept centre
    union = unary_union([shape(f["geometry"]) for f in tissue])
    truth = unary_union(
        [box(c0 * CELL, r0 * CELL, c1 * CELL, r1 * CELL) for c0, r0, c1, r1 in TISSUE]
    )
    assert union.symmetric_difference(truth).area < 0.05 * truth.area
    assert all(union.contains(Point(x + CELL / 2, y + CELL / 2)) for x, y in kept)
    assert doc["lamina"]["kept_tiles"] == len(stored) and doc["lamina"]["unmatched_tiles"] == 0


def test_real_slide_tile_fractions_are_the_polygons_share(qc_home: dict[str, Any]) -> None:
    doc = _geojson(qc_home, "CMU-1-Small-Region.svs")
    tissue, tiles = _split(doc)
    assert tissue and doc["lamina"]["width"] == 2220 and doc["lamina"]["height"] == 2967
    stored = _stored(qc_home, "CMU-1-Small-Region.svs")
    union = unary_union([shape(f["geometry"]) for f in tissue])
    kept = [f for f in tiles if f["properties"]["kept"]]
    assert len(kept) == len(stored) > 0
    for f in tiles:
        square = shape(f["geometry"])
        share = union.intersection(square).area / square.area
        assert abs(share - f["properties"]["tissue_fraction"]) < 0.06  # mask pixel rounding
        if f["properties"]["kept"]:
            row = stored[(int(square.bounds[0]), int(square.bounds[1]))]
            assert row["tile_id"] == f["properties"]["tile_id"]
            assert f["properties"]["tissue_fraction"] == pytest.approx(
                row["tissue_fraction"], abs=1e-4
            )
            assert row["tissue_fraction"] >= 0.5
        else:
            assert f["properties"]["tissue_fraction"] < 0.5


def test_png_draws_kept_and_rejected_tiles(qc_home: dict[str, Any]) -> None:
    sid = qc_home["sid"]["blocks.tiff"]
    r = qc_home["app"].test_client().get(f"/api/v1/collections/qc/sources/{sid}/qc.png?size=512")
    assert r.status_code == 200 and r.mimetype == "image/png"
    assert int(r.headers["X-Lamina-Tiles-Kept"]) == len(_stored(qc_home, "blocks.tiff"))
    im = np.asarray(Image.open(io.BytesIO(r.data)).convert("RGB"))
    th, tw = im.shape[0] - LEGEND_PX, im.shape[1]
    assert max(th, tw) == 512 and tw == 512  # 16 x 12 cells: landscape
    sx, sy = tw / (16 * CELL), th / (12 * CELL)

    def top_edge(col: int, row: int) -> tuple[int, ...]:
        x = int(col * CELL * sx) + int(CELL * sx / 3)
        return tuple(int(v) for v in im[int(row * CELL * sy), x])

    assert top_edge(3, 4) == KEPT_RGB  # inside block (2, 3)-(6, 7), away from its contour
    assert top_edge(10, 2) == KEPT_RGB
    assert top_edge(14, 9) == REJECTED_RGB  # glass
    assert top_edge(0, 0) == REJECTED_RGB
    colours = {tuple(c) for c in im[:th].reshape(-1, 3)[::7].tolist()}
    assert {KEPT_RGB, REJECTED_RGB, TISSUE_RGB} <= colours


def test_photos_and_unknown_sources_have_no_qc(qc_home: dict[str, Any]) -> None:
    client = qc_home["app"].test_client()
    photo = qc_home["paths"][2].name
    for suffix in ("qc.png", "qc.geojson"):
        r = client.get(f"/api/v1/collections/qc/sources/{qc_home['sid'][photo]}/{suffix}")
        assert r.status_code == 404 and r.get_json()["code"] == "NO_SLIDE_QC"
        r = client.get(f"/api/v1/collections/qc/sources/{'0' * 64}/{suffix}")
        assert r.status_code == 404 and r.get_json()["code"] == "SOURCE_NOT_FOUND"
    sid = qc_home["sid"]["blocks.tiff"]
    for bad in ("0", "99999", "big"):
        r = client.get(f"/api/v1/collections/qc/sources/{sid}/qc.png?size={bad}")
        assert r.status_code == 422 and "size" in r.get_json()["error"]
    text = client.get(f"/api/v1/collections/qc/sources/{sid}/qc.geojson").get_data(as_text=True)
    assert str(qc_home["paths"][0].parent) not in text  # no server paths


def test_cli_writes_png_and_geojson(qc_home: dict[str, Any], tmp_path: Path) -> None:
    synthetic = qc_home["paths"][0]
    base = [*LAMINA, "--home", str(qc_home["home"]), "qc", "--collection", "qc"]
    proc = subprocess.run(
        [*base, str(synthetic), "--out", str(tmp_path / "a"), "--size", "256", "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    png, geo = Path(doc["png"]), Path(doc["geojson"])
    assert png.name == "blocks.qc.png" and geo.name == "blocks.qc.geojson"
    assert max(Image.open(png).size) == 256
    assert (
        json.loads(geo.read_text())["lamina"]["kept_tiles"]
        == doc["qc"]["kept_tiles"]
        == 4 * 4 + 3 * 2
    )
    # the rest in this process (the same command, no interpreter start each time)
    home = ["--home", str(qc_home["home"]), "qc", "--collection", "qc"]
    sid = qc_home["sid"]["blocks.tiff"]
    res = CliRunner().invoke(cli, [*home, sid, "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "b" / "blocks.qc.geojson").is_file()
    photo = qc_home["paths"][2]
    res = CliRunner().invoke(cli, [*home, str(photo), "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "NO_SLIDE_QC" in res.stderr
    res = CliRunner().invoke(cli, [*home, "not-a-slide"])
    assert res.exit_code == 2 and "neither a slide file" in res.stderr


def test_a_slide_changed_after_its_qc_was_cached_is_refused(
    tmp_path: Path, make_slide: Any
) -> None:
    slide = tmp_path / "small.tiff"
    slide.write_bytes(make_slide("small.tiff", tissue=[(0, 0, 2, 2)], cols=4, rows=4).read_bytes())
    opts = IngestOptions(tile_px=64, mpp=0.5, progress=False, workers=1)
    report = ingest(
        Store(tmp_path / "home"), "c", [slide], create_encoder("classic/stain-texture"), opts
    )
    assert report.ok and report.tiles == 4
    app = create_app({"HOME": str(tmp_path / "home"), "DEVICE": "cpu"})
    sid = app.extensions["lamina"].service.view("c").sql("SELECT source_id FROM sources")[0]
    url = f"/api/v1/collections/c/sources/{sid['source_id']}/qc.geojson"
    assert app.test_client().get(url).status_code == 200  # computed and cached
    with open(slide, "ab") as fh:
        fh.write(b"\0" * 16)  # other bytes: the stored vectors no longer describe this file
    r = app.test_client().get(url)
    assert r.status_code == 409 and r.get_json()["code"] == "SOURCE_CHANGED"
