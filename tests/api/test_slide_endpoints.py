"""Slides through the HTTP API: tile images, thumbnails, region queries, slide-level ranking."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest
from PIL import Image

from lamina.api.app import create_app
from lamina.encoders import create_encoder
from lamina.indexer import IngestOptions, ingest
from lamina.indexer.tile_images import tile_image
from lamina.search import SearchService, Store


@pytest.fixture(scope="module")
def wsi_app(tmp_path_factory: pytest.TempPathFactory, slides_dir: Path) -> Any:
    home = tmp_path_factory.mktemp("wsi-home")
    enc = create_encoder("classic/stain-texture")
    opts = IngestOptions(progress=False, mpp_override=0.5)
    report = ingest(
        Store(home),
        "wsi",
        [slides_dir / "CMU-1-Small-Region.svs", slides_dir / "tcga-cr-7395-01a-01-ts1.svs"],
        enc,
        opts,
    )
    assert report.ok and report.indexed == 2
    return create_app({"HOME": str(home), "DEVICE": "cpu"})


@pytest.fixture(autouse=True)
def no_associated_images(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: object) -> None:
        raise AssertionError("an associated image (label/macro/thumbnail) was read")

    monkeypatch.setattr(openslide.OpenSlide, "associated_images", property(refuse))


def _view(app: Any) -> Any:
    return app.extensions["lamina"].service.view("wsi")


def test_tile_image_is_the_stored_tile(wsi_app: Any) -> None:
    view = _view(wsi_app)
    row = view.sql("SELECT * FROM tiles WHERE source LIKE '%CMU%' ORDER BY tile_id LIMIT 1")[0]
    r = wsi_app.test_client().get(f"/api/v1/tiles/{row['tile_id']}/image?collection=wsi")
    assert r.status_code == 200 and r.mimetype == "image/png"
    served = np.asarray(Image.open(io.BytesIO(r.data)).convert("RGB"))
    assert served.shape == (224, 224, 3)
    np.testing.assert_array_equal(served, tile_image(row))


def test_thumbnail_comes_from_the_pyramid(wsi_app: Any) -> None:
    source = _view(wsi_app).sql("SELECT * FROM sources WHERE source LIKE '%tcga%'")[0]
    r = wsi_app.test_client().get(f"/api/v1/sources/{source['source_id']}/thumbnail")
    assert r.status_code == 200
    im = Image.open(io.BytesIO(r.data))
    assert max(im.size) <= 512 and abs(im.size[0] / im.size[1] - 4443 / 3567) < 0.02


def test_region_query_finds_its_tile(wsi_app: Any) -> None:
    view = _view(wsi_app)
    row = view.sql(
        "SELECT * FROM tiles WHERE source LIKE '%CMU%' ORDER BY tile_id LIMIT 1 OFFSET 5"
    )[0]
    body = {
        "region": {"slide": row["source_id"], "x": row["x"], "y": row["y"], "w": 224, "h": 224},
        "k": 3,
    }
    r = wsi_app.test_client().post("/api/v1/collections/wsi/search", json=body)
    assert r.status_code == 200, r.get_json()
    hits = r.get_json()["hits"]
    assert hits[0]["tile_id"] == row["tile_id"] and hits[0]["score"] > 0.999
    assert hits[0]["kind"] == "tile" and hits[0]["tissue_fraction"] >= 0.5


def test_slide_level_ranking_over_http(wsi_app: Any) -> None:
    view = _view(wsi_app)
    cmu = view.sql("SELECT source_id FROM sources WHERE source LIKE '%CMU%'")[0]["source_id"]
    tid = int(
        view.sql("SELECT tile_id FROM tiles WHERE source_id = ? LIMIT 1", [cmu])[0]["tile_id"]
    )
    r = wsi_app.test_client().post(
        "/api/v1/collections/wsi/search", json={"tile_id": tid, "level": "slide", "k": 2}
    )
    assert r.status_code == 200, r.get_json()
    groups = r.get_json()["groups"]
    assert len(groups) == 2 and groups[0]["value"] == cmu  # its own slide ranks first
    svc = SearchService(Store(wsi_app.extensions["lamina"].home))
    assert svc.view("wsi").n_tiles == view.n_tiles


def test_cli_region_search_through_a_server(wsi_app: Any, slides_dir: Path) -> None:
    import json
    import subprocess
    import sys

    from tests.api.conftest import LiveServer

    view = _view(wsi_app)
    row = view.sql("SELECT * FROM tiles WHERE source LIKE '%CMU%' ORDER BY tile_id LIMIT 1")[0]
    region = f"{row['x']},{row['y']},224,224"
    with LiveServer(wsi_app) as server:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "lamina.api",
                "--url",
                server.url,
                "search",
                "--collection",
                "wsi",
                "--slide",
                str(slides_dir / "CMU-1-Small-Region.svs"),
                "--region",
                region,
                "-k",
                "2",
                "--json",
            ],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["hits"][0]["tile_id"] == row["tile_id"]


def test_cli_status_through_a_server(wsi_app: Any) -> None:
    import json
    import subprocess
    import sys

    from tests.api.conftest import LiveServer

    with LiveServer(wsi_app) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "lamina.api", "--url", server.url, "status", "--json"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    (col,) = doc["collections"]
    assert doc["home"] == server.url and col["name"] == "wsi"
    assert col["tiles"] == _view(wsi_app).n_tiles and col["sources_by_kind"] == {"slide": 2}
