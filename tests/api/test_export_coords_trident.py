"""Exports that feed other tools: coordinates in every format, TRIDENT .h5 files that re-import."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from lamina.api.cli import cli
from lamina.encoders import create_encoder
from lamina.indexer import IngestOptions, Manifest, ingest
from lamina.search import SearchService, Store
from lamina.search.exports import read_labeled_set

SLIDES = ("CMU-1-Small-Region.svs", "trident-blocks.tiff")
"""A real Aperio slide (one level) and a synthetic pyramid whose tiles are read at level 1."""
# the attributes TRIDENT's save_h5 puts on coords (WSI.extract_tissue_coords / coords_to_h5)
TRIDENT_COORD_ATTRS = {
    "patch_size",
    "patch_size_level0",
    "level0_magnification",
    "target_magnification",
    "overlap",
    "name",
    "level0_width",
    "level0_height",
}


def run(home: Path, *args: str) -> Result:
    """The real command line, in this process (no interpreter start per call)."""
    return CliRunner().invoke(cli, ["--home", str(home), *args])


def lamina(home: Path, *args: str) -> Result:
    res = run(home, *args)
    assert res.exit_code == 0, f"exit {res.exit_code}\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def mixed(
    tmp_path_factory: pytest.TempPathFactory, slides_dir: Path, derm_dir: Path, make_slide: Any
) -> Any:
    """Two real slides and two photos, labelled through a manifest, in one collection."""
    home = tmp_path_factory.mktemp("export-home")
    photos = sorted((derm_dir / "images").iterdir())[:2]
    manifest = home / "labels.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "diagnostic"])
        w.writerows([[SLIDES[0], "BCC"], [SLIDES[1], "SCC"], [photos[0].name, "NEV"]])
        w.writerow([photos[1].name, "MEL"])
    synthetic = make_slide(SLIDES[1], tissue=[(2, 2, 10, 9)], folder="trident")
    paths = [str(slides_dir / SLIDES[0]), str(synthetic)] + [str(p) for p in photos]
    report = ingest(
        Store(home),
        "mix",
        paths,
        create_encoder("classic/stain-texture"),
        IngestOptions(mpp_override=0.5, progress=False, workers=2),
        Manifest.load(manifest, "file"),
    )
    assert report.ok and report.indexed == 4, report.to_dict()
    return {"home": home, "photos": photos, "synthetic": synthetic}


def test_every_format_carries_coordinates(mixed: dict[str, Any], tmp_path: Path) -> None:
    home = mixed["home"]
    view = SearchService(Store(home)).view("mix")
    stored = {r["tile_id"]: r for r in view.sql("SELECT * FROM tiles")}
    sizes = {p.name: max(Image.open(p).size) for p in mixed["photos"]}
    got = {}
    for fmt in ("parquet", "csv", "npz"):
        out = tmp_path / f"x.{fmt}"
        lamina(
            home, "export", "--collection", "mix", "--label-column", "diagnostic", "--out", str(out)
        )
        ls = read_labeled_set(out)
        assert set(ls.coords) == {"x", "y", "level", "size_px", "mpp"}
        assert ls.n == len(stored) > 0
        for i, tid in enumerate(ls.tile_id.tolist()):
            row = stored[tid]
            assert ls.coords["x"][i] == row["x"] and ls.coords["y"][i] == row["y"]
            assert ls.coords["level"][i] == row["level"]
            assert ls.coords["size_px"][i] == row["size_px"]
            if row["kind"] == "photo":
                assert (row["x"], row["y"], row["level"]) == (0, 0, 0)
                assert row["size_px"] == sizes[Path(row["source"]).name]
                assert np.isnan(ls.coords["mpp"][i])  # no manifest mpp: null
            else:
                assert ls.coords["mpp"][i] == pytest.approx(0.5)
        got[fmt] = ls.coords
    for c in ("x", "y", "level", "size_px", "mpp"):
        np.testing.assert_array_equal(got["parquet"][c], got["csv"][c])
        np.testing.assert_array_equal(got["parquet"][c], got["npz"][c])
    table = pq.read_table(tmp_path / "x.parquet")
    assert table.column("mpp").null_count == len(mixed["photos"])
    assert str(table.schema.field("x").type) == "int64"


def test_trident_h5_round_trip(mixed: dict[str, Any], tmp_path: Path, slides_dir: Path) -> None:
    home = mixed["home"]
    out = tmp_path / "trident"
    proc = lamina(
        home, "export", "--collection", "mix", "--format", "trident-h5", "--out", str(out),
        "--label-column", "diagnostic", "--json",
    )  # fmt: skip
    doc = json.loads(proc.stdout)
    meta = doc["meta"]
    assert meta["n_slides"] == 2 and meta["skipped_rows"] == len(mixed["photos"])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{Path(s).stem}.h5" for s in SLIDES] + ["slides.csv"]
    )
    assert str(home) not in proc.stdout and str(slides_dir) not in proc.stdout
    view = SearchService(Store(home)).view("mix")
    with open(out / "slides.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["slide_id"]: r["label"] for r in rows} == {
        Path(SLIDES[0]).stem: "BCC",
        Path(SLIDES[1]).stem: "SCC",
    }
    originals: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for r in rows:
        with h5py.File(out / f"{r['slide_id']}.h5", "r") as f:
            feats, coords = f["features"], f["coords"]
            assert feats.dtype == np.float32 and coords.dtype == np.int64
            assert feats.shape == (int(r["tiles"]), view.dim) and coords.shape == (
                int(r["tiles"]),
                2,
            )
            assert feats.chunks == (1, view.dim) and feats.maxshape == (None, view.dim)
            assert coords.chunks == (1, 2) and coords.maxshape == (None, 2)
            attrs = dict(coords.attrs)
            assert set(attrs) >= TRIDENT_COORD_ATTRS and "savetodir" not in attrs
            assert feats.attrs["name"] == attrs["name"] == r["slide_id"]
            # TRIDENT's reader: level-0 patch side from the magnifications
            src = round(
                attrs["patch_size"] * attrs["level0_magnification"] / attrs["target_magnification"]
            )
            assert abs(src - attrs["patch_size_level0"]) <= 1
            assert attrs["target_magnification"] == 20 and attrs["patch_size"] == 224
            # 0.25 µm/px synthetic: 224 px read at level 1 (downsample 2) are 448 level-0 px
            synthetic = r["slide_id"] == Path(SLIDES[1]).stem
            assert attrs["patch_size_level0"] == (448 if synthetic else 224)
            assert attrs["patch_level"] == (1 if synthetic else 0)
            ids = f["tile_ids"][()]
            stored = view.vectors[view.positions_of(ids)]
            np.testing.assert_array_equal(feats[()].view(np.uint32), stored.view(np.uint32))
            xy = view.sql(
                f"SELECT tile_id, x, y FROM tiles WHERE tile_id IN ({','.join(map(str, ids))})"
            )
            by_id = {t["tile_id"]: (t["x"], t["y"]) for t in xy}
            assert [tuple(c) for c in coords[()].tolist()] == [by_id[int(t)] for t in ids]
            originals[r["slide_id"]] = (feats[()], coords[()])
    # ... and `lamina import` reads them back: identical vectors (bitwise) and coordinates
    dim = str(view.dim)
    lamina(home, "import", str(out), "--collection", "back", "--encoder-name", "external/x",
           "--dim", dim, "--slides", str(slides_dir), "--slides", str(mixed["synthetic"]))  # fmt: skip
    back = SearchService(Store(home)).view("back")
    for name, (feats, coords) in originals.items():
        rows_b = back.sql(
            "SELECT tile_id, x, y, source FROM tiles ORDER BY tile_id",
        )
        mine = [t for t in rows_b if Path(t["source"]).stem == name]
        assert [(t["x"], t["y"]) for t in mine] == [tuple(c) for c in coords.tolist()]
        vecs = back.vectors[back.positions_of([t["tile_id"] for t in mine])]
        np.testing.assert_array_equal(vecs.view(np.uint32), feats.view(np.uint32))
    # imported vectors have no tiling of ours: no slide QC to show
    sid = back.sql("SELECT source_id FROM sources WHERE kind = 'slide' LIMIT 1")[0]["source_id"]
    res = run(home, "qc", sid, "--collection", "back", "--out", str(tmp_path))
    assert res.exit_code == 2 and "NO_SLIDE_QC" in res.stderr


def test_trident_refusals(mixed: dict[str, Any], tmp_path: Path) -> None:
    base = ["export", "--collection", "mix"]
    for extra, words in (
        (["--format", "trident-h5", "--split-by", "patient_id"], "do not apply"),
        (["--format", "trident-h5", "--label-column", "nope"], "unknown label column"),
        (["--format", "csv"], "--label-column is required"),
    ):
        res = run(mixed["home"], *base, "--out", str(tmp_path / "t"), *extra)
        assert res.exit_code == 2 and words in res.stderr, (extra, res.stderr)
