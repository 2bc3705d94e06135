"""Files to manifest rows: name, name without extension, trailing path, NFC/NFD, case."""

from __future__ import annotations

import csv
import unicodedata
from pathlib import Path

import pytest

from lamina.indexer import Manifest, ManifestError

NFC_NAME = unicodedata.normalize("NFC", "Zoë_naevus.jpg")
NFD_NAME = unicodedata.normalize("NFD", "Zoë_naevus.jpg")


def _csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def test_name_stem_and_trailing_path(tmp_path: Path) -> None:
    m = Manifest.load(
        _csv(
            tmp_path / "m.csv",
            [["file", "label"], ["a/b.jpg", "A"], ["c", "C"], ["x/d", "D"], ["e.jpg", "E"]],
        )
    )
    assert m.match(Path("/data/a/b.jpg"))["label"] == "A"
    assert m.match(Path("/data/z/b.jpg")) is None  # the folder part must match too
    assert m.match(Path("/data/c.png"))["label"] == "C"  # keyed without the extension
    assert m.match(Path("/data/x/d.tif"))["label"] == "D"
    assert m.match(Path("/data/y/d.tif")) is None
    assert m.match(Path("/data/e.png")) is None  # another extension is another file
    # the most specific row wins; two rows as specific are ambiguous
    m = Manifest.load(_csv(tmp_path / "m2.csv", [["file", "l"], ["b.jpg", "1"], ["a/b.jpg", "2"]]))
    assert m.match(Path("/d/a/b.jpg"))["l"] == 2 and m.match(Path("/d/q/b.jpg"))["l"] == 1
    m = Manifest.load(_csv(tmp_path / "m3.csv", [["file", "l"], ["b.jpg", "1"], ["b.jpg", "2"]]))
    with pytest.raises(ManifestError, match=r"ambiguous .* \(line 2: b\.jpg, line 3: b\.jpg\)"):
        m.match(Path("/d/b.jpg"))


def test_case_insensitive_only_when_unique(tmp_path: Path) -> None:
    m = Manifest.load(
        _csv(
            tmp_path / "m.csv",
            [["file", "l"], ["IMG_1.JPG", "1"], ["img_2.jpg", "2"], ["IMG_2.jpg", "3"]],
        )  # fmt: skip
    )
    assert m.find(Path("/d/img_1.jpg")) == (0, "case-insensitive")
    assert m.match(Path("/d/IMG_2.jpg"))["l"] == 3  # exact case wins
    assert m.match(Path("/d/Img_2.JPG")) is None  # two rows ignoring case: no guess
    report = m.match_report([Path("/d/img_1.jpg"), Path("/d/Img_2.JPG")])
    assert report.matched == 1 and report.case_insensitive == 1
    assert report.unmatched_files == ["/d/Img_2.JPG"]
    assert [r["line"] for r in report.unmatched_rows] == [3, 4]


@pytest.mark.parametrize(("on_disk", "in_manifest"), [(NFD_NAME, NFC_NAME), (NFC_NAME, NFD_NAME)])
def test_unicode_forms_match(tmp_path: Path, on_disk: str, in_manifest: str) -> None:
    assert on_disk != in_manifest
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / on_disk).write_bytes(b"x")
    [file] = list(folder.iterdir())
    assert file.name == on_disk  # the file system kept the form it was given
    m = Manifest.load(_csv(tmp_path / "m.csv", [["file", "l"], [f"imgs/{in_manifest}", "7"]]))
    assert m.find(file) == (0, "exact")
    assert m.match(file) == {"file": f"imgs/{in_manifest}", "l": 7}


def test_pad_ufes_manifest_keyed_without_extensions(tmp_path: Path, derm_dir: Path) -> None:
    """PAD-UFES-20's own metadata names images by id (``img_id``); keyed by the id without an
    extension, every photo of the subset finds its row."""
    with open(derm_dir / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = [["img_id", "diagnostic", "patient_id"]]
    out += [[Path(r["filename"]).stem, r["diagnostic"], r["patient_id"]] for r in rows]
    m = Manifest.load(_csv(tmp_path / "metadata.csv", out), "img_id")
    photos = sorted((derm_dir / "images").glob("*.jpg"))
    report = m.match_report(photos)
    assert report.files == len(photos) == len(rows) and report.matched == len(photos)
    assert not report.unmatched_rows and not report.ambiguous
    want = {Path(r["filename"]).name: r["diagnostic"] for r in rows}
    assert all(m.match(p)["diagnostic"] == want[p.name] for p in photos[:50])
