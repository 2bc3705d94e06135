"""Slide readers: formats, mpp, property allowlist, no associated images, regions, thumbnails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest

from lamina.indexer import IngestOptions
from lamina.indexer.errors import MissingMppError, UnreadableSourceError
from lamina.indexer.slides import PROPERTY_ALLOWLIST, Slide, prepare_slide, read_region_rgb
from lamina.indexer.sources import SourceFile, classify
from lamina.indexer.tile_images import source_thumbnail, tile_image

ALLOWED_KEYS = set(PROPERTY_ALLOWLIST.values()) | {
    "level_count",
    "level_dimensions",
    "level_downsamples",
    "mpp_source",
}
# Values that exist in the real files' properties and must never be stored.
FORBIDDEN = [
    "CMU-1",
    "12/29/09",
    "09:59:15",
    "b414003d",
    "CPAPERIOCS",
    "Aperio Image Library",
    "PixelMed",
    "Bangor",
    "SPECIMEN_1",
    "SLIDE_1",
    "ImageDescription",
    "Patient",
]

CMU = "CMU-1-Small-Region.svs"
TCGA = "tcga-cr-7395-01a-01-ts1.svs"


def _fixture(slides_dir: Path, name: str) -> Path:
    return slides_dir / "openslide_fixtures" / name


def test_real_svs_mpp_and_allowlisted_properties(slides_dir: Path) -> None:
    with Slide(slides_dir / CMU) as s:
        assert (s.width, s.height) == (2220, 2967)
        assert s.mpp == pytest.approx(0.499) and s.mpp_source == "properties"
        props = s.properties()
    assert set(props) <= ALLOWED_KEYS
    assert props["vendor"] == "aperio" and props["objective_power"] == 20.0
    text = json.dumps(props)
    for bad in FORBIDDEN:
        assert bad not in text


def test_dicom_wsi_reads_without_dicom_fields(slides_dir: Path) -> None:
    with Slide(_fixture(slides_dir, "boxes_0.dcm")) as s:
        assert s.properties()["vendor"] == "dicom"
        assert s.mpp == pytest.approx(0.499)
        text = json.dumps(s.properties())
    assert "dicom" not in text.replace('"dicom"', "")
    for bad in FORBIDDEN:
        assert bad not in text


def test_missing_mpp_is_refused_with_a_clear_message(slides_dir: Path) -> None:
    with pytest.raises(MissingMppError, match=r"tcga-cr-7395.*--mpp-override"):
        Slide(slides_dir / TCGA)
    with Slide(slides_dir / TCGA, mpp_override=0.5) as s:
        assert (s.mpp, s.mpp_source) == (0.5, "override")
        assert s.level_dimensions == ((4443, 3567), (2221, 1783))
    with Slide(slides_dir / TCGA, metadata={"meta_mpp": 0.25}, mpp_override=0.5) as s:
        assert (s.mpp, s.mpp_source) == (0.25, "manifest")


def test_default_tiff_resolution_is_not_an_mpp(slides_dir: Path) -> None:
    boxes = _fixture(slides_dir, "boxes.tiff")
    assert classify(boxes) == "slide"
    with pytest.raises(MissingMppError, match="TIFF resolution says 352.8"):
        Slide(boxes)
    with Slide(boxes, mpp_override=0.5) as s:
        assert s.properties()["vendor"] == "generic-tiff"
        assert len(s.level_dimensions) == 4


def test_synthetic_tiff_mpp_comes_from_resolution_tags(make_slide: Any) -> None:
    path = make_slide("res.tiff", tissue=[(1, 1, 3, 3)], cols=4, rows=4)
    with Slide(path) as s:
        assert s.mpp == pytest.approx(0.25) and s.level_downsamples == (1.0, 2.0, 4.0)
    none = make_slide("nores.tiff", tissue=[(1, 1, 3, 3)], cols=4, rows=4, mpp=None)
    with pytest.raises(MissingMppError):
        Slide(none)


def test_associated_images_are_never_read(
    slides_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def forbidden(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("associated image accessed")

    monkeypatch.setattr(openslide.OpenSlide, "associated_images", property(forbidden))
    for name in (
        "get_associated_image_names",
        "get_associated_image_dimensions",
        "read_associated_image",
    ):
        monkeypatch.setattr(openslide.lowlevel, name, forbidden)
    path = slides_dir / CMU
    prepared = prepare_slide(SourceFile(path, "slide"), "sid", {}, IngestOptions(workers=2))
    try:
        images = list(prepared.images)
    finally:
        prepared.close()
    assert len(images) == len(prepared.tiles) > 0
    row = {**prepared.tiles[0], "source": str(path)}
    assert tile_image(row).shape == (224, 224, 3)
    assert source_thumbnail(path, "slide", 128).shape[0] == 128
    assert read_region_rgb(path, (0, 0, 300, 300), 1.0).shape == (150, 150, 3)


def test_tile_image_rereads_exactly_what_the_ingest_read(make_slide: Any) -> None:
    path = make_slide("reread.tiff", tissue=[(0, 0, 3, 2)], cols=4, rows=3)
    opts = IngestOptions(tile_px=64, workers=3, min_tissue=0.5)
    prepared = prepare_slide(SourceFile(path, "slide"), "sid", {}, opts)
    try:
        images = list(prepared.images)
    finally:
        prepared.close()
    assert len(images) == 6
    for tile, image in zip(prepared.tiles, images, strict=True):
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(tile_image({**tile, "source": str(path)}), image)


def test_read_region_at_target_mpp(make_slide: Any) -> None:
    path = make_slide("region.tiff", tissue=[(0, 0, 4, 4)], cols=4, rows=4)
    with Slide(path) as s:
        tile = s.read_rgb(128, 256, 1, 64, 64)
    # 0.25 µm/px slide: a 128-pixel box at 0.5 µm/px is 64 pixels of level 1, unresized
    np.testing.assert_array_equal(read_region_rgb(path, (128, 256, 128, 128), 0.5), tile)
    assert read_region_rgb(path, (0, 0, 400, 200), 1.0).shape == (50, 100, 3)
    with pytest.raises(UnreadableSourceError, match="outside the slide"):
        read_region_rgb(path, (5000, 0, 10, 10), 0.5)


def test_outside_the_slide_is_white(slides_dir: Path) -> None:
    opts = IngestOptions(tile_px=64, min_tissue=0.0, workers=1)
    small = _fixture(slides_dir, "small.svs")
    prepared = prepare_slide(SourceFile(small, "slide"), "sid", {}, opts)
    try:
        (image,) = list(prepared.images)
    finally:
        prepared.close()
    assert prepared.tiles[0]["size_px"] == 64 and image.shape == (64, 64, 3)
    assert (image[17:] == 255).all() and (image[:, 17:] == 255).all()
    assert (image[:15, :15] < 255).any()


def test_thumbnails_come_from_pyramid_levels_and_photos(
    slides_dir: Path, make_slide: Any, tmp_path: Path
) -> None:
    from PIL import Image

    thumb = source_thumbnail(slides_dir / TCGA, max_px=200)
    assert max(thumb.shape[:2]) == 200 and thumb.shape[2] == 3
    assert source_thumbnail(_fixture(slides_dir, "boxes_0.dcm"), max_px=64).shape == (16, 16, 3)
    photo = tmp_path / "p.png"
    Image.new("RGB", (300, 150), (10, 200, 30)).save(photo)
    assert source_thumbnail(photo, max_px=100).shape == (50, 100, 3)
    assert tile_image({"kind": "photo", "source": str(photo)}).shape == (150, 300, 3)
    with pytest.raises(UnreadableSourceError, match="gone"):
        source_thumbnail(tmp_path / "missing.svs")


def test_truncated_and_corrupt_files_are_unreadable(slides_dir: Path, tmp_path: Path) -> None:
    data = (slides_dir / CMU).read_bytes()
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableSourceError, match="truncated or damaged"):
        Slide(truncated)
    garbage = tmp_path / "garbage.svs"
    garbage.write_bytes(b"\0" * 64 + data[64:])
    with pytest.raises(UnreadableSourceError, match="truncated or damaged"):
        Slide(garbage)


def test_raw_and_public_openslide_reads_agree(
    slides_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lamina.indexer.slides as slides

    boxes = (
        (slides_dir / CMU, (1000, 1000, 300, 200)),
        (_fixture(slides_dir, "small.svs"), (0, 0, 40, 30)),
    )
    for path, (x, y, w, h) in boxes:
        with Slide(path) as s:
            raw = s.read_rgb(x, y, 0, w, h)
        monkeypatch.setattr(slides, "_RAW_READ", None)
        with Slide(path) as s:
            public = s.read_rgb(x, y, 0, w, h)
        monkeypatch.undo()
        assert raw.shape == (h, w, 3)
        np.testing.assert_array_equal(raw, public)
