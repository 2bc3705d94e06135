"""Bring your own embeddings: TRIDENT .h5 for the bundled slides, Parquet/NPZ tables, Google
embedding-API JSON; checks, idempotence, crash safety, CLI, HTTP route and client."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py  # noqa: E402  (a test dependency: missing fails, never skips)
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lamina.encoders import NoLocalEncoderError, create_encoder  # noqa: E402
from lamina.indexer.errors import DeclaredEncoderError  # noqa: E402
from lamina.indexer.importer import (  # noqa: E402
    Import,
    ImportOptions,
    declare_encoder,
    import_embeddings,
    open_import_collection,
)
from lamina.search import SearchService, Store  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PATCH = 256


def save_h5_like_trident(path: Path, assets: dict[str, np.ndarray], attributes: dict) -> None:
    """TRIDENT's writer layout: each asset a dataset chunked by row, resizable along axis 0,
    attributes per dataset (dicts as JSON, None as the string 'None')."""
    with h5py.File(path, "w") as f:
        for key, val in assets.items():
            dset = f.create_dataset(
                key, shape=val.shape, maxshape=(None, *val.shape[1:]),
                chunks=(1, *val.shape[1:]), dtype=val.dtype,
            )  # fmt: skip
            dset[:] = val
            for k, v in attributes.get(key, {}).items():
                dset.attrs[k] = (
                    json.dumps(v) if isinstance(v, dict) else ("None" if v is None else v)
                )


def trident_features(slide: Path, out_dir: Path, encoder: Any, step: int = PATCH) -> Path:
    """What TRIDENT writes for ``slide`` (20x, 256 px patches at level 0): features of the patches
    (here by ``encoder``), their level-0 coords and the patching attributes."""
    import openslide

    osr = openslide.OpenSlide(str(slide))
    w, h = osr.dimensions
    coords = np.array(
        [(x, y) for y in range(0, h - PATCH + 1, step) for x in range(0, w - PATCH + 1, step)],
        np.int64,
    )
    patches = [np.asarray(osr.read_region((int(x), int(y)), 0, (PATCH, PATCH)).convert("RGB"))
               for x, y in coords]  # fmt: skip
    osr.close()
    name = slide.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.h5"
    coords_attrs = {
        "patch_size": PATCH, "patch_size_level0": PATCH, "level0_magnification": 20,
        "target_magnification": 20, "overlap": 0, "name": name, "savetodir": str(out_dir),
        "level0_width": w, "level0_height": h,
    }  # fmt: skip
    save_h5_like_trident(
        path,
        {"features": encoder.embed(patches), "coords": coords},
        {"features": {"name": name, "savetodir": str(out_dir)}, "coords": coords_attrs},
    )
    return path


@pytest.fixture(scope="module")
def trident_dir(tmp_path_factory: pytest.TempPathFactory, slides_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("trident") / "20x_256px_0px_overlap" / "features_classic"
    enc = create_encoder("classic/stain-texture")
    for name in ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs"):
        trident_features(slides_dir / name, out, enc, step=PATCH * 2)
    return out


def _rows(home: Path, name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for seg in Store(home).collection(name).segments():
        rows.extend(pq.read_table(seg.tiles_path).to_pylist())
    return rows


def test_trident_h5_of_the_bundled_slides(home: Path, trident_dir: Path, slides_dir: Path) -> None:
    from lamina.indexer.tile_images import tile_image

    declared = declare_encoder("external/trident-classic", 416)
    opts = ImportOptions(slides=[slides_dir], progress=False)
    report = import_embeddings(Store(home), "tri", [trident_dir], declared, opts)
    assert report.ok and report.indexed == 2 and report.failed == []
    rows = _rows(home, "tri")
    assert report.tiles == len(rows) > 20
    assert {Path(r["source"]).name for r in rows} == {
        "CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs"}  # fmt: skip
    svc = SearchService(Store(home))
    with h5py.File(trident_dir / "CMU-1-Small-Region.h5") as f:
        feats, coords = f["features"][()], f["coords"][()]
    by_xy = {(r["x"], r["y"]): r for r in rows if r["source"].endswith("CMU-1-Small-Region.svs")}
    for i in (0, len(coords) // 2, len(coords) - 1):
        row = by_xy[(int(coords[i, 0]), int(coords[i, 1]))]
        hit = svc.search_tile("tri", row["tile_id"], k=1).hits[0]
        assert hit.tile_id == row["tile_id"] and hit.score == pytest.approx(1.0, abs=1e-5)
        # the tile's slide region is viewable, and it is the patch the features came from
        image = tile_image(row)
        assert image.shape == (PATCH, PATCH, 3)
        again = create_encoder("classic/stain-texture").embed([image])[0]
        assert float(again @ (feats[i] / np.linalg.norm(feats[i]))) > 0.9999
    # the region is viewable over HTTP too
    from lamina.api.app import create_app

    web = create_app({"HOME": str(home), "TESTING": True}).test_client()
    resp = web.get(
        f"/api/v1/tiles/{by_xy[(int(coords[0, 0]), int(coords[0, 1]))]['tile_id']}/image?collection=tri"
    )
    assert resp.status_code == 200 and resp.mimetype == "image/png"
    # the same files again: nothing new
    again_report = import_embeddings(Store(home), "tri", [trident_dir], declared, opts)
    assert again_report.indexed == 0 and again_report.unchanged == 2
    assert again_report.segments == [] and len(_rows(home, "tri")) == len(rows)


def test_image_queries_need_a_local_encoder_with_the_fingerprint(
    home: Path, trident_dir: Path, slides_dir: Path, derm_dir: Path
) -> None:
    from lamina.api.queries import image_vector

    photo = next((derm_dir / "images").iterdir()).read_bytes()
    store = Store(home)
    opts = ImportOptions(slides=[slides_dir], progress=False)
    import_embeddings(store, "ext", [trident_dir], declare_encoder("external/t", 416), opts)
    with pytest.raises(NoLocalEncoderError, match="cannot be queried by image"):
        image_vector(store.collection("ext"), photo)
    # the same vectors declared as the encoder that made them: image queries work
    local = declare_encoder("classic/stain-texture")
    assert local.fingerprint == create_encoder("classic/stain-texture").fingerprint
    import_embeddings(store, "loc", [trident_dir], local, opts)
    vec = image_vector(store.collection("loc"), photo)
    assert vec.shape == (416,)
    with pytest.raises(DeclaredEncoderError, match="external/<name>"):
        declare_encoder("path/not-registered", 384)
    with pytest.raises(DeclaredEncoderError, match="--dim"):
        declare_encoder("external/no-dim")


def _table(n_sources: int, per: int, dim: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = n_sources * per
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return pa.table({
        "source": [f"slide-{i // per:05d}" for i in range(n)],
        "x": np.tile(np.arange(per) * 224, n_sources), "y": np.zeros(n, np.int64),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        "label": [f"c{i % 3}" for i in range(n)],
    })  # fmt: skip


def test_checks_name_file_and_row(home: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(_table(3, 4, 8), good)
    cases = {}
    for case, row in (("nan", 5), ("zero", 7), ("dim", 0), ("dup", 2)):
        t = _table(3, 4, 8).to_pydict()
        vecs = [list(v) for v in t["vector"]]
        if case == "nan":
            vecs[row][3] = float("nan")
        elif case == "zero":
            vecs[row] = [0.0] * 8
        elif case == "dim":
            vecs = [v[:6] for v in vecs]
        else:
            t["x"][row] = t["x"][row - 1]
        t["vector"] = vecs
        p = tmp_path / f"{case}.parquet"
        pq.write_table(pa.table(t), p)
        cases[case] = p
    report = import_embeddings(
        Store(home), "chk", [good, *cases.values()], declare_encoder("external/x", 8),
        ImportOptions(progress=False),
    )  # fmt: skip
    reasons = {Path(f["file"]).stem: f["reason"] for f in report.failed}
    assert reasons["nan"] == "row 5: vector holds NaN or infinity"
    assert reasons["zero"] == "row 7: vector is all zeros"
    assert reasons["dim"].startswith(
        "row 0: vector has 6 dimensions; the collection's encoder makes 8"
    )
    assert reasons["dup"] == "rows 1 and 2: duplicate (x, y) in source 'slide-00000'"
    assert report.indexed == 3 and report.tiles == 12 and not report.ok  # good.parquet only


def test_npz_and_google_json(home: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    npz = tmp_path / "emb.npz"
    np.savez(npz, vectors=rng.standard_normal((6, 4)).astype(np.float32),
             source=np.array(["a", "a", "b", "b", "b", "c"]), patient_id=np.arange(6) // 3)  # fmt: skip
    preds = {
        "instances": [{"image_file_uri": "gs://bucket/one.png", "patch_coordinates": []},
                      {"image_file_uri": "gs://bucket/two.png", "patch_coordinates": []}],
        "predictions": [
            {"model_version": "1.0", "result": {"patch_embeddings": [
                {"patch_coordinate": {"x_origin": 0, "y_origin": 0}, "embedding_vector": [1, 0, 0, 1]},
                {"patch_coordinate": {"x_origin": 224, "y_origin": 0}, "embedding_vector": [0, 1, 1, 0]},
            ]}},
            {"model_version": "1.0", "result": {"patch_embeddings": [
                {"patch_coordinate": {"x_origin": 0, "y_origin": 0, "width": 448, "height": 448},
                 "embedding_vector": [1, 1, 0, 0]}]}},
        ],
    }  # fmt: skip
    js = tmp_path / "api.json"
    js.write_text(json.dumps(preds))
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"predictions": [{"error": {"code": "IMAGE_ERROR", "description": "x"}}]})
    )
    report = import_embeddings(Store(home), "mix", [npz, js, bad], declare_encoder("external/g", 4),
                               ImportOptions(progress=False))  # fmt: skip
    assert report.indexed == 5 and report.tiles == 9
    assert report.failed == [{"file": str(bad), "reason": "prediction 0: the API answered an error (IMAGE_ERROR: x)"}]  # fmt: skip
    rows = _rows(home, "mix")
    assert {r["source"] for r in rows} == {
        "a",
        "b",
        "c",
        "gs://bucket/one.png",
        "gs://bucket/two.png",
    }
    two = [r for r in rows if r["source"] == "gs://bucket/two.png"]
    assert (two[0]["x"], two[0]["size_px"]) == (0, 448)
    assert sorted(r["patient_id"] for r in rows if r["source"] in "abc") == [0, 0, 0, 1, 1, 1]


def test_a_killed_import_leaves_nothing_and_the_next_run_completes(
    home: Path, tmp_path: Path
) -> None:
    files = []
    for i in range(3):
        files.append(tmp_path / f"part{i}.parquet")
        pq.write_table(_table(2, 5, 8, seed=i).set_column(0, "source", pa.array([f"p{i}-{j // 5}" for j in range(10)])), files[-1])  # fmt: skip
    declared = declare_encoder("external/k", 8)
    import_embeddings(Store(home), "crash", files[:1], declared, ImportOptions(progress=False))
    # a second import dies (SIGKILL) with a segment half written
    code = (
        "import os, signal, numpy as np\n"
        "from lamina.search import Store\n"
        f"col = Store({str(home)!r}).collection('crash')\n"
        "w = col.writer('dying')\n"
        "w.add_source({'source_id': 'x', 'source': 'p1-0', 'kind': 'external'},"
        " [{'kind': 'external', 'x': 0, 'y': 0, 'level': 0, 'size_px': 0}], np.ones((1, 8)))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO)
    assert proc.returncode == -9
    assert any(p.name.startswith(".tmp-") for p in (home / "collections/crash/segments").iterdir())
    report = import_embeddings(Store(home), "crash", files, declared, ImportOptions(progress=False))
    assert report.cleaned_up and report.unchanged == 2 and report.indexed == 4
    rows = _rows(home, "crash")
    assert len(rows) == 30 and len({(r["source"], r["x"]) for r in rows}) == 30


@pytest.mark.slow
def test_parquet_import_of_100k_vectors_takes_at_most_10_s(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "100k.parquet"
    pq.write_table(_table(1000, 100, 384), path)
    declared = declare_encoder("external/pf-api", 384)
    col = open_import_collection(Store(home), "big", declared)
    t0 = time.perf_counter()
    report = Import(col, declared, ImportOptions(progress=False)).run([path])
    seconds = time.perf_counter() - t0
    assert report.ok and report.tiles == 100_000 and report.indexed == 1000
    assert seconds <= 10.0, f"import of 100k vectors took {seconds:.1f} s"
    hit = SearchService(Store(home)).search_tile("big", 54_321, k=1).hits[0]
    assert hit.tile_id == 54_321


def _lamina(home: Path, *args: str, code: int = 0) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "lamina.api", "--home", str(home), *args, "--json"],
                          capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert proc.returncode == code, proc.stderr[-2000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_cli_import_then_cohort_export_probe(home: Path, tmp_path: Path, derm_dir: Path) -> None:
    """Photos' vectors computed elsewhere, with the manifest's labels: the curation workflow."""
    import csv

    labels = list(csv.DictReader((derm_dir / "labels.csv").open()))[:120]
    enc = create_encoder("classic/stain-texture")
    from lamina.indexer.photos import read_photo

    vecs = enc.embed([read_photo(derm_dir / r["filename"])[1] for r in labels])
    table = pa.table({
        "source": [str(derm_dir / r["filename"]) for r in labels],
        "embedding": [list(map(float, v)) for v in vecs],
    })  # fmt: skip
    pq.write_table(table, tmp_path / "derm.parquet")
    args = ["import", str(tmp_path / "derm.parquet"), "--collection", "byo", "--encoder-name",
            "external/derm-api", "--dim", "416", "--manifest", str(derm_dir / "labels.csv"),
            "--source-column", "filename", "--no-progress"]  # fmt: skip
    report = _lamina(home, *args)
    assert report["indexed"] == 120 and report["ok"]
    assert _lamina(home, *args)["unchanged"] == 120
    hit = _lamina(home, "search", "--collection", "byo", "--tile-id", "7", "-k", "1")["hits"][0]
    assert hit["tile_id"] == 7 and hit["kind"] == "photo" and "diagnostic" in hit["metadata"]
    refused = _lamina(home, "search", "--collection", "byo", "--image",
                      table.column("source")[0].as_py(), code=2)  # fmt: skip
    assert refused["code"] == "NO_LOCAL_ENCODER"
    cohort = _lamina(home, "cohort", "create", "near7", "--collection", "byo", "--near-tile", "7",
                     "--k", "10")  # fmt: skip
    assert cohort["ok"]
    out = tmp_path / "set.parquet"
    _lamina(home, "export", "--collection", "byo", "--label-column", "diagnostic",
            "--split-by", "patient_id", "--out", str(out))  # fmt: skip
    assert pq.read_table(out).num_rows == 120
    probe = _lamina(home, "probe", "--collection", "byo", "--label-column", "diagnostic",
                    "--split-by", "patient_id")  # fmt: skip
    assert probe["ok"]
    bad = _lamina(home, "import", str(tmp_path / "derm.parquet"), "--collection", "byo",
                  "--encoder-name", "external/other", "--dim", "416", code=2)  # fmt: skip
    assert bad["code"] == "ENCODER_MISMATCH"


def test_http_route_and_client(home: Path, trident_dir: Path, tmp_path: Path) -> None:
    from urllib.parse import urlsplit

    from lamina.api.app import create_app
    from lamina.api.client import Client, InvalidRequest

    app = create_app({"HOME": str(home), "TESTING": True})
    test_client = app.test_client()

    def transport(method: str, url: str, headers: dict, body: bytes | None, timeout: float) -> Any:
        parts = urlsplit(url)
        resp = test_client.open(parts.path, method=method, headers=headers, data=body)
        return resp.status_code, dict(resp.headers.items()), resp.get_data()

    client = Client("http://in-process", transport=transport)
    h5 = sorted(trident_dir.glob("*.h5"))
    doc = client.import_embeddings("web", h5, "external/trident-classic", 416)
    assert doc["indexed"] == 2 and doc["ok"]
    assert client.import_embeddings("web", h5, "external/trident-classic", 416)["unchanged"] == 2
    hits = client.search_tile("web", 3, k=1).hits
    assert hits[0].tile_id == 3
    with h5py.File(h5[0]) as f:  # a vector query: the first patch of the first file
        first = [float(v) for v in f["features"][0]]
    hit = client.search_vector("web", first, k=1).hits[0]
    assert hit.score == pytest.approx(1.0, abs=1e-5) and (hit.x, hit.y) == (0, 0)
    bad = tmp_path / "bad.npz"
    np.savez(bad, vectors=np.zeros((2, 416), np.float32), source=np.array(["s", "s"]))
    with pytest.raises(InvalidRequest, match=r"bad.npz: row 0: vector is all zeros"):
        client.import_embeddings("web", [bad], "external/trident-classic", 416)
    with pytest.raises(InvalidRequest, match="--dim"):
        client.import_embeddings("web2", h5, "external/nodim")


def test_import_into_a_float16_collection(home: Path, tmp_path: Path) -> None:
    declared = declare_encoder("external/half", 8)
    Store(home).open_or_create(
        "half", encoder=declared.name, fingerprint=declared.fingerprint, embed_dim=8,
        tile_px=None, mpp=None, extra={"external": True, "vector_dtype": "float16"},
    )  # fmt: skip
    path = tmp_path / "t.parquet"
    pq.write_table(_table(2, 3, 8), path)
    report = import_embeddings(Store(home), "half", [path], declared, ImportOptions(progress=False))
    assert report.ok and report.tiles == 6
    hit = SearchService(Store(home)).search_tile("half", 4, k=1).hits[0]
    assert hit.tile_id == 4 and hit.score == pytest.approx(1.0, abs=1e-3)
