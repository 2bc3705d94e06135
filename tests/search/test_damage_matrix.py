"""Damage matrix: every file kind of a collection x truncate / flip / delete / duplicate / permute.

A real collection (48 PAD-UFES-20 photos, classic encoder, 4 segments, an IVF index) is built
once; each case damages a private copy. For every case:

- ``verify`` reports it (a problem, or a note for index parts that are merely absent);
- searches in process and through the HTTP app never fail with a 5xx, and never answer
  silently wrong: the hits equal the clean collection's, or the answer names
  ``missing_segments`` and its hits equal the clean ranking without those segments' tiles.
  A refusal with a clear 4xx (a damaged ``collection.json``) is allowed.

Files not in the matrix carry nothing an answer depends on: lock files (``ids.lock``,
``ingest.lock``, ``create.lock``), run records (``runs/*.json``, skipped when unreadable) and
the index build progress record.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from lamina.api.errors import DOMAIN_ERRORS, error_info
from lamina.search import SearchService, Store
from lamina.search.integrity import meta_checksum
from lamina.search.verify import verify, verify_named

N_PHOTOS = 48
PER_SEGMENT = 12
K = 8
QUERY_TILES = (0, 17, 41)
STRATEGIES = ("exact", "ann")


@dataclass
class Base:
    root: Path
    home: Path
    src: Path
    segments: list[str]  # directory names, oldest first
    seg_tiles: dict[str, set[int]]
    queries: list[np.ndarray]
    rankings: list[list[tuple[int, float]]]  # full exact ranking per query (clean)
    tile_source: dict[int, str]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, derm_dir: Path) -> Base:
    from lamina.encoders import create_encoder
    from lamina.indexer import IngestOptions, Manifest, ingest
    from lamina.search.ann import update_index

    root = tmp_path_factory.mktemp("damage")
    src = root / "src" / "images"  # the manifest names files as images/<name>
    src.mkdir(parents=True)
    for p in sorted((derm_dir / "images").glob("*.jpg"))[:N_PHOTOS]:
        shutil.copy(p, src / p.name)
    home = root / "home"
    ingest(
        Store(home),
        "derm",
        [str(src)],
        create_encoder("classic/stain-texture"),
        IngestOptions(progress=False, commit_sources=PER_SEGMENT),
        Manifest.load(derm_dir / "labels.csv", "filename"),
    )
    col = Store(home).collection("derm")
    col.set_index(factory="IVF4")
    update_index(col)
    view = SearchService(Store(home)).view("derm")
    assert view.ann is not None and len(view.readers) == N_PHOTOS // PER_SEGMENT
    svc = SearchService(Store(home))
    queries = [view.tile_vectors([t])[0] for t in QUERY_TILES]
    rankings = []
    for q in queries:
        res = svc.search("derm", q, k=N_PHOTOS, params={"strategy": "exact"})
        rankings.append([(h.tile_id, h.score) for h in res.hits])
        for s in STRATEGIES:  # the clean collection answers both ways alike
            top = svc.search("derm", q, k=K, params={"strategy": s}).hits
            assert [h.tile_id for h in top] == [t for t, _ in rankings[-1][:K]]
    seg_tiles = {r.info.path.name: {int(t) for t in r.tile_ids} for r in view.readers}
    rows = view.sql("SELECT tile_id, source FROM tiles")
    assert verify(col, deep=True)["ok"]
    return Base(
        root=root,
        home=home,
        src=src,
        segments=[r.info.path.name for r in view.readers],
        seg_tiles=seg_tiles,
        queries=queries,
        rankings=rankings,
        tile_source={int(r["tile_id"]): r["source"] for r in rows},
    )


# -- damages --------------------------------------------------------------------------------------
def truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def flip(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


def delete(p: Path) -> None:
    p.unlink()


def permute_rows(dim: int) -> Callable[[Path], None]:
    def swap(p: Path) -> None:
        a = np.fromfile(p, "<f4").reshape(-1, dim)
        a[[0, 1]] = a[[1, 0]]
        a.tofile(p)

    return swap


def permute_parquet(p: Path) -> None:
    t = pq.read_table(p)
    pq.write_table(t.take(list(range(t.num_rows))[::-1]), p)


def permute_npy(p: Path) -> None:
    a = np.load(p)
    np.save(p, a[::-1].copy())


def copy_segment(forge: bool) -> Callable[[Path], None]:
    def copy(p: Path) -> None:
        dst = p.parent / f"{p.name}-copy"
        shutil.copytree(p, dst)
        if forge:  # a copy whose record names itself, with a valid checksum
            meta = json.loads((dst / "segment.json").read_text())
            meta["segment_id"] = dst.name
            meta["checksum"] = meta_checksum(meta)
            (dst / "segment.json").write_text(json.dumps(meta))

    return copy


def rollback(p: Path) -> None:
    p.write_text("3")


def overwrite_photo(p: Path) -> None:
    other = sorted(p.parent.iterdir())[-1]
    p.write_bytes(other.read_bytes())


SEG = "@seg"  # the second segment's directory
DIM = 416  # classic/stain-texture
CASES: list[tuple[str, str, Callable[[Path], None]]] = [
    *[
        (f"{name}-{fn.__name__}", f"{SEG}/{name}", fn)
        for name in (
            "segment.json",
            "tiles.parquet",
            "sources.parquet",
            "vectors.f32",
            "source_vectors.f32",
        )
        for fn in (truncate, flip, delete)
    ],
    ("vectors.f32-permute", f"{SEG}/vectors.f32", permute_rows(DIM)),
    ("source_vectors.f32-permute", f"{SEG}/source_vectors.f32", permute_rows(DIM)),
    ("tiles.parquet-permute", f"{SEG}/tiles.parquet", permute_parquet),
    ("sources.parquet-permute", f"{SEG}/sources.parquet", permute_parquet),
    ("segment-duplicate", SEG, copy_segment(forge=False)),
    ("segment-duplicate-forged", SEG, copy_segment(forge=True)),
    *[(f"centroids-{fn.__name__}", "ivf/centroids.npy", fn) for fn in (truncate, flip, delete)],
    *[
        (f"assignment-{fn.__name__}", "ivf/seg.npy", fn)
        for fn in (truncate, flip, delete, permute_npy)
    ],
    *[(f"assignment-sum-{fn.__name__}", "ivf/seg.sum", fn) for fn in (truncate, flip, delete)],
    *[(f"index-pointer-{fn.__name__}", "index/IVF4.json", fn) for fn in (truncate, flip, delete)],
    *[
        (f"next_tile_id-{fn.__name__}", "next_tile_id", fn)
        for fn in (truncate, flip, delete, rollback)
    ],
    *[(f"collection.json-{fn.__name__}", "collection.json", fn) for fn in (truncate, flip, delete)],
    ("source-overwritten", "source", overwrite_photo),
    ("source-deleted", "source", delete),
]


def _target(base: Base, col_dir: Path, src: Path, where: str) -> Path:
    seg = base.segments[1]
    if where == "source":
        return src / Path(base.tile_source[min(base.seg_tiles[seg])]).name
    if where.startswith("ivf/"):
        pointer = json.loads((col_dir / "index" / "IVF4.json").read_text())
        ivf = col_dir / "index" / f"IVF4-{pointer['version']}"
        name = where[len("ivf/") :]
        return ivf / (f"seg-{seg}{name[3:]}" if name.startswith("seg.") else name)
    return col_dir / where.replace(SEG, f"segments/{seg}")


# -- checks ---------------------------------------------------------------------------------------
def _expected(base: Base, qi: int, missing: list[str]) -> list[int]:
    gone: set[int] = set()
    for m in missing:
        gone |= base.seg_tiles.get(m, set())
    return [t for t, _ in base.rankings[qi] if t not in gone][:K]


def _detected(doc: dict[str, Any]) -> bool:
    notes = doc.get("index") or {}
    return not doc["ok"] or bool(notes.get("not_built") or notes.get("unindexed"))


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_damage_is_detected_and_never_answers_wrong(base: Base, tmp_path: Path, case: str) -> None:
    _, where, damage = next(c for c in CASES if c[0] == case)
    home = tmp_path / "home"
    shutil.copytree(base.home, home)
    target = _target(base, home / "collections" / "derm", base.src, where)
    kept = target.read_bytes() if where == "source" else None  # shared photos are restored
    damage(target)
    try:
        _check(base, home, case)
    finally:
        if kept is not None:
            target.write_bytes(kept)


def _check(base: Base, home: Path, case: str) -> None:
    from lamina.api.app import create_app

    store = Store(home)
    doc = verify_named(store, "derm")
    assert _detected(doc), f"{case}: verify found nothing: {doc}"

    svc = SearchService(store)
    outcomes = []
    for qi, q in enumerate(base.queries):
        for strategy in STRATEGIES:
            try:
                res = svc.search("derm", q, k=K, params={"strategy": strategy})
            except DOMAIN_ERRORS as exc:
                assert error_info(exc).status < 500, f"{case}: {exc!r}"
                outcomes.append("refused")
                continue
            got = [h.tile_id for h in res.hits]
            assert got == _expected(base, qi, res.missing_segments), (case, strategy, got)
            outcomes.append("partial" if res.missing_segments else "identical")

    client = create_app({"HOME": str(home), "TESTING": True, "API_TOKEN": None}).test_client()
    for qi, q in enumerate(base.queries):
        body = {"vector": q.tolist(), "k": K, "params": {"strategy": "ann"}}
        r = client.post("/api/v1/collections/derm/search", json=body)
        assert r.status_code < 500, (case, r.status_code, r.get_data(as_text=True))
        if r.status_code == 200:
            doc = r.get_json()
            got = [h["tile_id"] for h in doc["hits"]]
            assert got == _expected(base, qi, doc.get("missing_segments", [])), (case, got)
    for url in ("/api/v1/collections", "/api/v1/collections/derm"):
        r = client.get(url)
        assert r.status_code < 500, (case, url, r.get_data(as_text=True))
    if "partial" in outcomes:  # the server's status names what its answers leave out
        status = r.get_json()["collection"]
        assert status["missing_segments"] and status["damaged"], (case, status)
    tile = min(base.seg_tiles[base.segments[1]])
    r = client.get(f"/api/v1/tiles/{tile}/image?collection=derm")
    assert r.status_code < 500, (case, r.get_data(as_text=True))
    if case == "source-overwritten":
        assert r.status_code == 409 and r.get_json()["code"] == "SOURCE_CHANGED"
    _RESULTS[case] = outcomes


_RESULTS: dict[str, list[str]] = {}


@pytest.fixture(scope="module", autouse=True)
def _summary() -> Any:
    """Prints the matrix's figures (run with -s): cases, outcomes per answer."""
    yield
    counts: dict[str, int] = {}
    for outcomes in _RESULTS.values():
        for o in outcomes:
            counts[o] = counts.get(o, 0) + 1
    print(
        f"\ndamage matrix: {len(_RESULTS)}/{len(CASES)} cases detected by verify, 0 5xx, "
        f"0 silently wrong; in-process answers: {counts}"
    )
