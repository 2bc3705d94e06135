"""Slides through the real ingest pipeline: exact tile plans, failures, re-reads, search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile

from lamina.encoders import Encoder, create_encoder
from lamina.indexer import IngestOptions, Manifest, ingest
from lamina.indexer.slides import Slide
from lamina.indexer.tile_images import tile_image
from lamina.search import SearchService, Store

CELL = 128  # level-0 side of one synthetic tile (tile_px 64 at 0.5 µm/px on 0.25 µm/px)
OPTS = {"tile_px": 64, "mpp": 0.5, "workers": 3, "batch_size": 16, "progress": False}


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return create_encoder("test/tiny-vit", device="cpu")


def stored(
    home: Path, collection: str
) -> tuple[list[dict[str, Any]], np.ndarray, list[dict[str, Any]]]:
    """(tile rows, their vectors, source rows) of a collection, over all segments."""
    col = Store(home).collection(collection)
    rows: list[dict[str, Any]] = []
    vecs: list[np.ndarray] = []
    sources: list[dict[str, Any]] = []
    for seg in col.segments():
        t = pq.read_table(seg.tiles_path).to_pylist()
        v = np.asarray(seg.vectors())
        rows += t
        vecs += [v[r["row"]] for r in t]
        sources += pq.read_table(seg.sources_path).to_pylist()
    return rows, (np.stack(vecs) if vecs else np.zeros((0, col.dim), np.float32)), sources


def cells(rows: list[dict[str, Any]], source_name: str) -> set[tuple[int, int]]:
    return {(r["x"] // CELL, r["y"] // CELL) for r in rows if Path(r["source"]).name == source_name}


def rect_cells(*rects: tuple[int, int, int, int]) -> set[tuple[int, int]]:
    return {(c, r) for c0, r0, c1, r1 in rects for c in range(c0, c1) for r in range(r0, r1)}


TISSUE = [(2, 3, 6, 7), (9, 1, 12, 3)]
PENS = [("blue", (9, 2, 11, 10)), ("green", (12, 8, 15, 10)), ("black", (1, 9, 4, 11))]


def test_synthetic_slides_give_exact_tile_plans(
    make_slide: Any, encoder: Encoder, home: Path, tmp_path: Path
) -> None:
    pyr = make_slide("pyramid.tiff", tissue=TISSUE, folder="plan")
    make_slide("subifds.tiff", tissue=TISSUE, layout="subifds", seed=1, folder="plan")
    make_slide("pen.tiff", tissue=[(2, 2, 6, 6)], pens=PENS, seed=2, folder="plan")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "file,patient_id,label\npyramid.tiff,P1,tumour\nsubifds.tiff,P2,normal\n"
        "pen.tiff,P3,normal\n"
    )
    report = ingest(
        Store(home), "syn", [pyr.parent], encoder, IngestOptions(**OPTS), Manifest.load(manifest)
    )
    assert report.ok and report.indexed == 3
    rows, vecs, sources = stored(home, "syn")
    assert cells(rows, "pyramid.tiff") == rect_cells(*TISSUE)
    assert cells(rows, "subifds.tiff") == rect_cells(*TISSUE)
    assert cells(rows, "pen.tiff") == rect_cells((2, 2, 6, 6))  # no tile on any pen stroke
    assert report.tiles == len(rows) == 22 + 22 + 16
    by_name = {Path(r["source"]).name: r for r in rows}
    assert (by_name["pyramid.tiff"]["level"], by_name["pyramid.tiff"]["size_px"]) == (1, 64)
    assert (by_name["subifds.tiff"]["level"], by_name["subifds.tiff"]["size_px"]) == (0, 128)
    for r in rows:
        assert r["kind"] == "tile" and r["tile_px"] == 64 and r["mpp"] == 0.5
        assert r["tissue_fraction"] >= 0.99
        assert r["patient_id"] in {"P1", "P2", "P3"}
    assert len({(r["source_id"], r["x"], r["y"], r["level"]) for r in rows}) == len(rows)
    src = {Path(s["source"]).name: s for s in sources}
    assert src["pyramid.tiff"]["kind"] == "slide" and src["pyramid.tiff"]["n_tiles"] == 22
    assert src["pyramid.tiff"]["label"] == "tumour" and src["pyramid.tiff"]["mpp"] == 0.25
    props = json.loads(src["pyramid.tiff"]["properties"])
    assert props["vendor"] == "generic-tiff" and props["tissue_fraction"] == pytest.approx(
        22 / 192, abs=0.002
    )
    again = ingest(Store(home), "syn", [pyr.parent], encoder, IngestOptions(**OPTS))
    assert (again.indexed, again.unchanged) == (0, 3)


def test_slide_vectors_are_normalised_tile_means(
    make_slide: Any, encoder: Encoder, home: Path
) -> None:
    path = make_slide("mean.tiff", tissue=[(0, 0, 3, 3)], cols=4, rows=4, folder="mean")
    ingest(Store(home), "m", [path], encoder, IngestOptions(**OPTS))
    seg = Store(home).collection("m").segments()[0]
    vecs = np.asarray(seg.vectors())
    mean = vecs.mean(axis=0)
    np.testing.assert_allclose(
        np.asarray(seg.source_vectors())[0], mean / np.linalg.norm(mean), atol=1e-6
    )
    assert seg.n_tiles == 9


def test_real_slides_and_fixtures(slides_dir: Path, encoder: Encoder, home: Path) -> None:
    fixtures = slides_dir / "openslide_fixtures"
    paths = [
        slides_dir / "CMU-1-Small-Region.svs",
        slides_dir / "tcga-cr-7395-01a-01-ts1.svs",
        fixtures / "boxes.tiff",
        fixtures / "boxes_0.dcm",
        fixtures / "small.svs",
    ]
    opts = {**OPTS, "tile_px": 224}
    report = ingest(Store(home), "real", paths, encoder, IngestOptions(**opts))
    failed = {Path(f["file"]).name: f["reason"] for f in report.failed}
    assert set(failed) == {"tcga-cr-7395-01a-01-ts1.svs", "boxes.tiff"}
    assert "--mpp-override" in failed["tcga-cr-7395-01a-01-ts1.svs"]
    empty = {Path(e["file"]).name for e in report.empty}
    assert empty == {"boxes_0.dcm", "small.svs"}  # 16x16 px: no tile reaches 50 % tissue
    rows, _, sources = stored(home, "real")
    assert {Path(s["source"]).name for s in sources} == {
        "CMU-1-Small-Region.svs",
        "boxes_0.dcm",
        "small.svs",
    }
    assert 30 <= len(rows) <= 60  # CMU-1-Small-Region: 9 x 13 grid, a third of it tissue
    report = ingest(
        Store(home), "real", paths, encoder, IngestOptions(**opts, mpp_override=0.5, min_tissue=0.0)
    )
    assert report.ok and report.unchanged == 3 and report.indexed == 2
    rows, _, sources = stored(home, "real")
    tcga = [r for r in rows if "tcga" in r["source"]]
    assert len(tcga) == 19 * 15  # min_tissue 0: the whole grid of 224-px tiles
    assert len([r for r in rows if r["source"].endswith("boxes.tiff")]) == 1


def _corrupt_one_level0_tile(src: Path, dst: Path) -> None:
    """Copy of a TCGA slide with one level-0 JPEG 2000 tile in the tissue overwritten: the
    overview (level 1) still reads, the tile stream then fails mid-slide."""
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        i = len(page.dataoffsets) // 2
        off, n = page.dataoffsets[i], page.databytecounts[i]
    data[off : off + n] = bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8))
    dst.write_bytes(bytes(data))


def test_broken_slides_fail_alone_and_commit_nothing(
    slides_dir: Path, make_slide: Any, encoder: Encoder, home: Path, tmp_path: Path
) -> None:
    good = make_slide("good.tiff", tissue=[(0, 0, 2, 2)], cols=3, rows=3, folder="broken")
    cmu = (slides_dir / "CMU-1-Small-Region.svs").read_bytes()
    (tmp_path / "truncated.svs").write_bytes(cmu[: len(cmu) * 2 // 3])
    (tmp_path / "garbage.svs").write_bytes(b"not a slide at all" * 100)
    _corrupt_one_level0_tile(slides_dir / "tcga-cr-7395-01a-01-ts1.svs", tmp_path / "midway.svs")
    paths = [tmp_path / "truncated.svs", tmp_path / "garbage.svs", tmp_path / "midway.svs", good]
    report = ingest(
        Store(home),
        "b",
        paths,
        encoder,
        IngestOptions(**{**OPTS, "tile_px": 224}, mpp_override=0.5),
    )
    failed = {Path(f["file"]).name: f["reason"] for f in report.failed}
    assert set(failed) == {"truncated.svs", "garbage.svs", "midway.svs"}
    assert "truncated or damaged" in failed["truncated.svs"]
    assert "cannot read level 0" in failed["midway.svs"]
    assert report.indexed == 1 and not report.ok
    _, _, sources = stored(home, "b")
    assert [Path(s["source"]).name for s in sources] == ["good.tiff"]


def test_read_error_mid_slide_then_resume(
    make_slide: Any, encoder: Encoder, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = make_slide("a.tiff", tissue=[(0, 0, 4, 4)], cols=4, rows=4, folder="mid")
    b = make_slide("b.tiff", tissue=[(0, 0, 4, 4)], cols=4, rows=4, seed=3, folder="mid")
    original = Slide.read_tile
    calls = {"n": 0}

    def flaky(self: Slide, spec: Any, tile_px: int) -> np.ndarray:
        if self.path.name == "a.tiff":
            calls["n"] += 1
            if calls["n"] == 7:
                from lamina.indexer.errors import UnreadableSourceError

                raise UnreadableSourceError(f"{self.name}: cannot read level 1 at (1, 1): boom")
        return original(self, spec, tile_px)

    monkeypatch.setattr(Slide, "read_tile", flaky)
    first = ingest(Store(home), "mid", [a, b], encoder, IngestOptions(**OPTS))
    assert [Path(f["file"]).name for f in first.failed] == ["a.tiff"]
    rows, _, _ = stored(home, "mid")
    assert {Path(r["source"]).name for r in rows} == {"b.tiff"} and len(rows) == 16
    monkeypatch.setattr(Slide, "read_tile", original)
    second = ingest(Store(home), "mid", [a, b], encoder, IngestOptions(**OPTS))
    assert second.ok and (second.indexed, second.unchanged) == (1, 1)
    rows, _, _ = stored(home, "mid")
    assert len(rows) == 32


def test_reread_tiles_embed_to_stored_vectors_and_search_finds_them(
    slides_dir: Path, make_slide: Any, encoder: Encoder, home: Path
) -> None:
    from lamina.api.queries import region_vector

    syn = make_slide("search.tiff", tissue=[(0, 0, 5, 4)], cols=5, rows=4, seed=5, folder="search")
    cmu = slides_dir / "CMU-1-Small-Region.svs"
    ingest(Store(home), "s64", [syn], encoder, IngestOptions(**OPTS))
    ingest(Store(home), "s224", [cmu], encoder, IngestOptions(**{**OPTS, "tile_px": 224}))
    service = SearchService(Store(home), save_index=False)
    for name in ("s64", "s224"):
        rows, vecs, _ = stored(home, name)
        reread = encoder.embed([tile_image(r) for r in rows])
        np.testing.assert_allclose(reread, vecs, atol=1e-6)
        col = Store(home).collection(name)
        for r in rows[:: max(1, len(rows) // 5)]:
            assert service.search_tile(name, r["tile_id"], k=3).hits[0].tile_id == r["tile_id"]
            vec = encoder.embed([tile_image(r)])[0]
            assert service.search(name, vec, k=3).hits[0].tile_id == r["tile_id"]
            extent = round(r["size_px"] * (2 if r["level"] == 1 else 1))
            qv, _ = region_vector(col, r["source"], (r["x"], r["y"], extent, extent))
            assert service.search(name, qv, k=3).hits[0].tile_id == r["tile_id"]


def test_slides_keep_the_collection_scale(home: Path, slides_dir: Path) -> None:
    enc = create_encoder("classic/stain-texture")
    first = ingest(
        Store(home),
        "wsi",
        [slides_dir / "CMU-1-Small-Region.svs"],
        enc,
        IngestOptions(progress=False),
    )
    assert first.ok and first.tiles > 0
    other = ingest(
        Store(home),
        "wsi",
        [slides_dir / "tcga-cr-7395-01a-01-ts1.svs"],
        enc,
        IngestOptions(progress=False, mpp_override=0.5, tile_px=256),
    )
    assert other.indexed == 0 and "tiles slides at 224 px" in other.failed[0]["reason"]
