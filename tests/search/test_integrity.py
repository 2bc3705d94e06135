"""Store integrity beyond the damage matrix: tile ids never reused, repair, changed files,
re-created collections and their cohorts, the verify/repair CLI, ANN sidecars rebuilt."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lamina.search import SearchService, Store
from lamina.search.verify import verify

N = 24
PER_SEGMENT = 8


def _ingest(home: Path, src: Path, derm_dir: Path, name: str = "derm") -> object:
    from lamina.encoders import create_encoder
    from lamina.indexer import IngestOptions, Manifest, ingest

    return ingest(
        Store(home),
        name,
        [str(src)],
        create_encoder("classic/stain-texture"),
        IngestOptions(progress=False, commit_sources=PER_SEGMENT),
        Manifest.load(derm_dir / "labels.csv", "filename"),
    )


@pytest.fixture()
def photos(tmp_path: Path, derm_dir: Path) -> list[Path]:
    return sorted((derm_dir / "images").glob("*.jpg"))[: 2 * N]


@pytest.fixture()
def built(tmp_path: Path, derm_dir: Path, photos: list[Path]) -> tuple[Path, Path]:
    src = tmp_path / "src" / "images"  # the manifest names files as images/<name>
    src.mkdir(parents=True)
    for p in photos[:N]:
        shutil.copy(p, src / p.name)
    home = tmp_path / "home"
    _ingest(home, src, derm_dir)
    return home, src


def _ids(home: Path) -> np.ndarray:
    return SearchService(Store(home)).view("derm").all_tile_ids()


@pytest.mark.parametrize("counter", ["deleted", "empty", "garbage", "stale"])
def test_a_lost_or_damaged_counter_never_reuses_tile_ids(
    built: tuple[Path, Path], derm_dir: Path, photos: list[Path], counter: str
) -> None:
    home, src = built
    path = home / "collections" / "derm" / "next_tile_id"
    before = _ids(home)
    {
        "deleted": lambda: path.unlink(),
        "empty": lambda: path.write_text(""),
        "garbage": lambda: path.write_bytes(b"\xff\x00nope"),
        "stale": lambda: path.write_text("3"),
    }[counter]()
    for p in photos[N : N + 5]:
        shutil.copy(p, src / p.name)
    report = _ingest(home, src, derm_dir)
    assert report.indexed == 5 and not report.failed  # type: ignore[attr-defined]
    after = _ids(home)
    assert len(np.unique(after)) == len(after) == N + 5
    assert set(after) - set(before) == set(range(N, N + 5))
    assert int(path.read_text()) == N + 5  # repaired
    assert verify(Store(home).collection("derm"))["ok"]


def test_repair_reindexes_the_sources_of_a_damaged_segment(built: tuple[Path, Path]) -> None:
    from lamina.encoders import create_encoder
    from lamina.indexer.repair import repair

    home, _ = built
    svc = SearchService(Store(home))
    view = svc.view("derm")
    q = view.tile_vectors([3])[0]
    clean = [h.source for h in svc.search("derm", q, k=N).hits]
    seg = view.readers[1].info.path
    (seg / "vectors.f32").write_bytes((seg / "vectors.f32").read_bytes()[:100])

    col = Store(home).collection("derm")
    damaged = verify(col)
    assert not damaged["ok"] and damaged["problems"][0]["file"].endswith("vectors.f32")
    partial = SearchService(Store(home)).search("derm", q, k=N)
    assert partial.missing_segments == [seg.name] and len(partial.hits) == N - PER_SEGMENT

    doc = repair(col, create_encoder("classic/stain-texture"))
    assert doc["ok"] and doc["retired"] == [seg.name] and doc["reindexed"] == PER_SEGMENT
    assert verify(Store(home).collection("derm"), deep=True)["ok"]
    res = SearchService(Store(home)).search("derm", q, k=N)
    assert not res.missing_segments
    assert [h.source for h in res.hits] == clean  # same photos, same order
    meta = [h.metadata for h in res.hits]
    assert all(m.get("diagnostic") for m in meta)  # metadata carried over


def test_a_changed_photo_is_reported_refused_and_replaced(
    built: tuple[Path, Path], derm_dir: Path, photos: list[Path]
) -> None:
    from lamina.api.app import create_app

    home, src = built
    victim = sorted(src.iterdir())[5]
    view = SearchService(Store(home)).view("derm")
    (tile,) = [
        r["tile_id"]
        for r in view.sql("SELECT tile_id, source FROM tiles")
        if r["source"] == str(victim)
    ]
    victim.write_bytes(photos[-1].read_bytes())  # overwritten in place

    doc = verify(Store(home).collection("derm"))
    assert not doc["ok"] and doc["sources"]["changed"] == 1
    assert doc["sources"]["files"][0]["source"] == str(victim)
    from lamina.search.status import collection_status

    assert collection_status(Store(home).collection("derm"))["changed_sources"]["changed"] == 1
    client = create_app({"HOME": str(home), "TESTING": True, "API_TOKEN": None}).test_client()
    r = client.get(f"/api/v1/tiles/{tile}/image?collection=derm")
    assert r.status_code == 409 and r.get_json()["code"] == "SOURCE_CHANGED"
    assert str(home) not in r.get_data(as_text=True)

    report = _ingest(home, src, derm_dir)
    assert report.indexed == 1 and report.replaced[0]["file"] == str(victim)  # type: ignore[attr-defined]
    view = SearchService(Store(home)).view("derm")
    rows = view.sql("SELECT source, count(*) AS n FROM tiles GROUP BY source")
    assert len(rows) == N and all(r["n"] == 1 for r in rows)  # no stale row
    assert view.n_tiles == N and verify(Store(home).collection("derm"))["ok"]


def test_a_recreated_collection_makes_old_cohorts_say_so(
    built: tuple[Path, Path], derm_dir: Path
) -> None:
    from lamina.search.catalog import Catalog
    from lamina.search.cohorts import create_cohort, show_cohort
    from lamina.search.errors import StaleCohortError

    home, src = built
    svc = SearchService(Store(home))
    with Catalog(home) as cat:
        create_cohort(cat, svc, "near", "derm", near_tile_ids=[2], k=5)
        assert show_cohort(cat, svc, "near")["n_tiles"] == 5
    uuid = Store(home).collection("derm").uuid
    shutil.rmtree(home / "collections" / "derm")
    _ingest(home, src, derm_dir)
    assert Store(home).collection("derm").uuid != uuid
    svc = SearchService(Store(home))
    with Catalog(home) as cat, pytest.raises(StaleCohortError, match="created again"):
        show_cohort(cat, svc, "near")


def test_a_corrupt_ann_sidecar_is_not_trusted_and_rebuilt(built: tuple[Path, Path]) -> None:
    from lamina.search.ann import AnnIndex, update_index

    home, _ = built
    col = Store(home).collection("derm")
    col.set_index(factory="IVF2")
    update_index(col)
    ann = AnnIndex.load(col)
    assert ann is not None
    seg = col.segments()[0].segment_id
    side = ann.sidecar(seg)
    assign = np.load(side)
    assign[0] = 1 - assign[0]  # one tile moved to the other list: same size
    np.save(side, assign)
    assert AnnIndex.load(col).part_problem(seg) == "content does not match its checksum"  # type: ignore[union-attr]
    assert not verify(col)["ok"]
    view = SearchService(Store(home)).view("derm")
    assert view.ann is not None and view.ann.segment(seg) is None  # scanned exactly
    assert update_index(col)["segments_indexed"] == 1
    assert verify(col, deep=True)["ok"]


def _lamina(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lamina.api", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_verify_and_repair_cli(built: tuple[Path, Path]) -> None:
    home, _ = built
    ok = _lamina(home, "verify", "--json")
    assert ok.returncode == 0, ok.stderr
    seg = sorted((home / "collections" / "derm" / "segments").iterdir())[0]
    (seg / "tiles.parquet").unlink()
    bad = _lamina(home, "verify", "derm", "--json")
    assert bad.returncode == 1
    doc = json.loads(bad.stdout)
    (problem,) = doc["collections"][0]["problems"]
    assert problem["file"] == f"segments/{seg.name}/tiles.parquet"
    assert str(home) not in bad.stdout
    text = _lamina(home, "status")
    assert text.returncode == 0 and "DAMAGED" in text.stdout
    missing = _lamina(home, "verify", "nope")
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
    fixed = _lamina(home, "repair", "derm", "--json")
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["reindexed"] == PER_SEGMENT
    assert _lamina(home, "verify", "--deep").returncode == 0


def test_index_reindexes_a_damaged_segment_with_its_recorded_metadata(
    built: tuple[Path, Path],
) -> None:
    from lamina.encoders import create_encoder
    from lamina.indexer import IngestOptions, ingest

    home, src = built
    seg = SearchService(Store(home)).view("derm").readers[0].info.path
    flip = bytearray((seg / "vectors.f32").read_bytes())
    flip[7] ^= 0xFF  # same size: only the checksum tells
    (seg / "vectors.f32").write_bytes(bytes(flip))
    report = ingest(  # no manifest this time
        Store(home),
        "derm",
        [str(src)],
        create_encoder("classic/stain-texture"),
        IngestOptions(progress=False),
    )
    assert report.indexed == 0 and report.unchanged == N  # cheap checks pass: left to repair
    view = SearchService(Store(home)).view("derm")
    assert view.missing_segments == [seg.name]  # opening hashes it: quarantined
    assert not verify(Store(home).collection("derm"))["ok"]
    (seg / "tiles.parquet").unlink()  # now the cheap checks see it too
    report = ingest(
        Store(home),
        "derm",
        [str(src)],
        create_encoder("classic/stain-texture"),
        IngestOptions(progress=False),
    )
    assert report.indexed == PER_SEGMENT and not report.unmatched_manifest
    view = SearchService(Store(home)).view("derm")
    rows = view.sql("SELECT source, diagnostic FROM tiles")
    assert len(rows) == N and all(r["diagnostic"] for r in rows)
