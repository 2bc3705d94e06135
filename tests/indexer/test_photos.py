"""Photo reading, the manifest join and photo ingest on the real PAD-UFES-20 subset."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lamina.encoders import create_encoder
from lamina.indexer import IngestOptions, Manifest, ManifestError, UnreadableSourceError, ingest
from lamina.indexer.photos import decode_photo
from lamina.indexer.sources import discover
from lamina.search import SearchService, Store


def _encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_modes_become_rgb() -> None:
    rgba = Image.new("RGBA", (4, 3), (255, 0, 0, 0))  # fully transparent -> white
    assert decode_photo(_encode(rgba, "PNG"))[0, 0].tolist() == [255, 255, 255]
    grey = Image.new("L", (4, 3), 100)
    assert decode_photo(_encode(grey, "PNG")).shape == (3, 4, 3)
    cmyk = Image.new("CMYK", (4, 3), (0, 0, 0, 0))
    assert decode_photo(_encode(cmyk, "JPEG")).mean() > 250
    i16 = Image.fromarray(np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000)
    out = decode_photo(_encode(i16, "PNG"))
    assert out.dtype == np.uint8 and out.max() == 255 and out.min() == 0
    pal = Image.new("P", (4, 3), 0)
    assert decode_photo(_encode(pal, "PNG")).shape == (3, 4, 3)


def test_exif_orientation_is_applied() -> None:
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = decode_photo(_encode(im, "JPEG", exif=exif))
    assert out.shape == (40, 20, 3)


def test_bad_inputs_raise_clear_errors(bad_images: dict[str, Path]) -> None:
    reasons = {}
    for name, path in bad_images.items():
        with pytest.raises(UnreadableSourceError) as info:
            decode_photo(path.read_bytes(), str(path))
        reasons[name] = str(info.value)
        assert str(path) in reasons[name]
    assert "empty" in reasons["empty"]
    assert "truncated" in reasons["truncated"]
    assert "not an image" in reasons["text"]
    assert "30000x30000" in reasons["huge"] or "too large" in reasons["huge"]


def test_manifest_matching(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text(
        "file,label,age,x\nimages/a.jpg,MEL,60,1\nb.jpg,BCC,,2\nsub/c.jpg,NEV,3.5,3\n"
        "other/c.jpg,SEK,1,4\n"
    )
    m = Manifest.load(csv)
    assert m.match(Path("/data/set/images/a.jpg"))["label"] == "MEL"
    assert m.match(Path("/data/set/images/a.jpg"))["age"] == 60
    assert m.match(Path("/anywhere/b.jpg"))["age"] is None
    assert m.match(Path("/data/images2/a.jpg")) is None  # trailing part must match whole parts
    assert m.match(Path("/d/sub/c.jpg"))["label"] == "NEV"
    assert "meta_x" in m.columns  # reserved column names are renamed, not dropped
    csv.write_text("file,label\nc.jpg,A\nc.jpg,B\n")
    with pytest.raises(ManifestError, match="ambiguous"):
        Manifest.load(csv).match(Path("/d/c.jpg"))
    with pytest.raises(ManifestError, match="no column 'path'"):
        Manifest.load(csv, source_column="path")
    with pytest.raises(ManifestError, match="does not exist"):
        Manifest.load(tmp_path / "missing.csv")


def test_discover_skips_unknown_files_in_folders(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.PNG").write_bytes(b"x")
    files, problems = discover(
        [tmp_path, tmp_path / "a.jpg", tmp_path / "notes.txt", tmp_path / "missing.jpg"]
    )
    assert [f.path.name for f in files] == ["a.jpg", "b.PNG"]
    assert {Path(p).name for p, _ in problems} == {"notes.txt", "missing.jpg"}


@pytest.fixture(scope="module")
def derm_store(tmp_path_factory: pytest.TempPathFactory, derm_dir: Path):  # noqa: ANN201
    home = tmp_path_factory.mktemp("derm-home")
    enc = create_encoder("test/tiny-vit", device="cpu")
    manifest = Manifest.load(derm_dir / "labels.csv", "filename")
    report = ingest(
        Store(home), "derm", [derm_dir / "images"], enc, IngestOptions(progress=False), manifest
    )
    return home, report, enc, manifest


def test_ingest_indexes_every_photo_with_metadata(derm_store, derm_dir: Path) -> None:  # noqa: ANN001
    home, report, _, _ = derm_store
    n = len(list((derm_dir / "images").glob("*.jpg")))
    # the subset holds one byte-identical pair (two SEK photos of PAT_701): the second is
    # reported as a duplicate of the first and not indexed again
    assert report.ok and report.indexed == n - 1 and report.tiles == n - 1
    assert not report.unmatched_manifest
    assert [(Path(d["file"]).name, Path(d["same_as"]).name) for d in report.duplicates] == [
        ("PAT_701_4056_457.jpg", "PAT_701_1321_156.jpg")
    ]
    view = SearchService(Store(home)).view("derm")
    assert view.n_tiles == n - 1
    assert len(view.sql("SELECT DISTINCT source_id FROM tiles")) == n - 1
    rows = view.sql("SELECT diagnostic, count(*) AS n FROM tiles GROUP BY 1")
    counts = {r["diagnostic"]: r["n"] for r in rows}
    assert counts == {"ACK": 114, "BCC": 194, "MEL": 43, "NEV": 182, "SCC": 22, "SEK": 130}
    assert view.schema["age"] == "BIGINT" and view.schema["biopsed"] == "BOOLEAN"


def test_every_photo_finds_itself_first(derm_store) -> None:  # noqa: ANN001
    home, _, _, _ = derm_store
    svc = SearchService(Store(home))
    view = svc.view("derm")
    ids = view.all_tile_ids()
    results = svc.search_batch("derm", view.vectors[np.arange(view.n_tiles)], 1)
    own = np.array([r.hits[0].tile_id for r in results])
    scores = np.array([r.hits[0].score for r in results])
    same = own == ids
    # where the top hit is another tile it must be the byte-identical twin (same source_id)
    for i in np.flatnonzero(~same):
        a = view.tile(int(ids[i]))["source_id"]
        b = view.tile(int(own[i]))["source_id"]
        assert a == b
    assert scores.min() >= 0.999


def test_rerun_is_a_noop(derm_store, derm_dir: Path) -> None:  # noqa: ANN001
    home, first, enc, manifest = derm_store
    again = ingest(
        Store(home), "derm", [derm_dir / "images"], enc, IngestOptions(progress=False), manifest
    )
    assert again.indexed == 0 and again.unchanged == first.indexed and again.segments == []
    assert len(again.duplicates) == 1 and not again.moved  # the twin is still a duplicate
    assert SearchService(Store(home)).view("derm").n_tiles == first.indexed


def test_bad_files_are_reported_and_the_rest_indexed(
    home: Path, derm_dir: Path, bad_images: dict[str, Path]
) -> None:
    folder = bad_images["empty"].parent
    good = sorted((derm_dir / "images").glob("*.jpg"))[:5]
    for p in good:
        shutil.copy(p, folder / p.name)
    enc = create_encoder("test/tiny-vit", device="cpu")
    report = ingest(Store(home), "mixed", [folder], enc, IngestOptions(progress=False))
    assert report.indexed == 5 and not report.ok
    failed = {Path(f["file"]).name: f["reason"] for f in report.failed}
    assert set(failed) == {p.name for p in bad_images.values()}
    assert all(failed.values())
    assert SearchService(Store(home)).view("mixed").n_tiles == 5
    # a later run retries only the failures and keeps what was committed
    again = ingest(Store(home), "mixed", [folder], enc, IngestOptions(progress=False))
    assert again.unchanged == 5 and len(again.failed) == 4


def test_photo_tiles_when_tile_px_is_given(home: Path, derm_dir: Path) -> None:
    from lamina.indexer.tile_images import tile_image

    photo = sorted((derm_dir / "images").glob("*.jpg"))[0]
    enc = create_encoder("test/tiny-vit", device="cpu")
    report = ingest(
        Store(home),
        "tiles",
        [photo],
        enc,
        IngestOptions(progress=False, photo_tiles=True, tile_px=100),
    )
    assert report.ok and report.indexed == 1 and report.tiles == 1 + 9  # 300 px -> 3 x 3 tiles
    view = SearchService(Store(home)).view("tiles")
    rows = view.sql("SELECT * FROM tiles ORDER BY tile_id")
    assert [r["kind"] for r in rows] == ["photo"] + ["photo-tile"] * 9
    corner = next(r for r in rows if r["x"] == 200 and r["y"] == 100)
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    np.testing.assert_array_equal(tile_image(corner), rgb[100:200, 200:300])
    # re-embedding the re-read tile gives its stored vector
    np.testing.assert_allclose(
        enc.embed([tile_image(corner)])[0],
        view.tile_vectors([int(corner["tile_id"])])[0],
        atol=1e-5,
    )
