"""Columnar bulk paths against row-by-row references: slide ranking (exact and ANN-candidate),
split assignment, export text, cohort members in the catalog, status sizes."""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.search import SearchService, Store
from lamina.search.catalog import Catalog
from lamina.search.exports import assign_split, column_text
from lamina.search.slide_ranking import rank_slides
from lamina.search.status import collection_status, resident_bytes

DIM = 8


def _collection(home: Path, n_sources: int = 24, seed: int = 0) -> Any:
    """Slides of 1..40 tiles around their own centre, in three segments; slide s3 twice (the
    same content committed at two paths, in two segments)."""
    rng = np.random.default_rng(seed)
    col = Store(home).open_or_create(
        "s", encoder="test/x", fingerprint="test/x@0", embed_dim=DIM, tile_px=8, mpp=1.0
    )
    centres = rng.normal(size=(n_sources, DIM))
    copy: Any = None
    writer = col.writer("r")
    for s in range(n_sources):
        n = int(rng.integers(1, 41))
        v = centres[s] + 0.8 * rng.normal(size=(n, DIM))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        tiles = [
            {
                "x": i,
                "y": 0,
                "level": 0,
                "size_px": 8,
                "tile_px": 8,
                "mpp": 1.0,
                "site": "AB"[i % 2],
            }
            for i in range(n)
        ]
        writer.add_source({"source_id": f"s{s}", "source": f"/d/{s}", "kind": "slide"}, tiles, v)
        if s == 3:
            copy = (tiles, v)
        if s == 12:  # s3 again, in another segment: one slide, tiles apart
            writer.add_source({"source_id": "s3", "source": "/d/copy3", "kind": "slide"}, *copy)
        if s % 10 == 9:
            writer.commit()
            writer = col.writer("r")
    writer.commit()
    return col


def _reference(view: Any, q: np.ndarray, top_m: int, site: str | None) -> dict[str, float]:
    """The top-m mean written out slide by slide over every tile row."""
    rows = view.sql("SELECT tile_id, source_id, site FROM tiles")
    vecs = view.tile_vectors([r["tile_id"] for r in rows])
    sims = vecs @ (q / np.linalg.norm(q)).astype(np.float32)
    per: dict[str, list[float]] = {}
    for r, s in zip(rows, sims, strict=True):
        if site is None or r["site"] == site:
            per.setdefault(r["source_id"], []).append(float(s))
    return {k: float(np.mean(sorted(v, reverse=True)[:top_m])) for k, v in per.items()}


@pytest.mark.parametrize("top_m,site", [(1, None), (5, None), (5, "A"), (64, "B")])
def test_slide_scores_equal_row_by_row_reference(tmp_path: Path, top_m: int, site: str) -> None:
    _collection(tmp_path)
    svc = SearchService(Store(tmp_path))
    view = svc.view("s")
    q = np.random.default_rng(1).normal(size=DIM)
    ref = _reference(view, q, top_m, site)
    filt = {"site": site} if site else None
    res = rank_slides(svc, "s", vectors=q, k=100, top_m=top_m, filter_json=filt)
    got = {g.value: g.score for g in res.groups or []}
    assert set(got) == set(ref) and res.query["candidates"] == "all"
    for s, v in ref.items():
        assert got[s] == pytest.approx(v, abs=1e-5)
    want = sorted(ref, key=lambda s: (-round(ref[s], 6), s))
    assert [g.value for g in res.groups or []] == want
    for g in res.groups or []:
        assert all(h.source_id == g.value for h in g.hits)
        assert [h.score for h in g.hits] == sorted((h.score for h in g.hits), reverse=True)


def test_slide_ranking_with_ivf_candidates_stays_exact(tmp_path: Path) -> None:
    from lamina.search.ann import update_index

    col = _collection(tmp_path, n_sources=60)
    col.set_index(factory="IVF4")
    update_index(col)
    svc = SearchService(Store(tmp_path))
    view = svc.view("s")
    assert view.ann is not None
    q = view.tile_vectors([int(view.all_tile_ids()[5])])[0]
    ref = _reference(view, q, 5, None)
    res = rank_slides(svc, "s", vectors=q, k=5, top_m=5, params={"strategy": "ann"})
    assert res.query["candidates"] == "ann" and res.plan["strategy"] == "ann"
    assert len(res.groups or []) == 5
    for g in res.groups or []:
        assert g.score == pytest.approx(ref[g.value], abs=1e-5)  # exact for what is returned
    exact = rank_slides(svc, "s", vectors=q, k=5, top_m=5, params={"strategy": "exact"})
    assert exact.query["candidates"] == "all"
    assert [g.value for g in exact.groups or []] == sorted(ref, key=lambda s: -ref[s])[:5]


def _split_reference(groups: list[str], labels: list[str], fraction: float, seed: int) -> Any:
    """The row-by-row definition of the split (the module docstring, written out)."""
    per_group: dict[str, dict[str, int]] = {}
    for g, lab in zip(groups, labels, strict=True):
        per_group.setdefault(g, {}).setdefault(lab, 0)
        per_group[g][lab] += 1
    strata: dict[str, list[tuple[str, int]]] = {}
    for g in sorted(per_group):
        c = per_group[g]
        strata.setdefault(min(c, key=lambda lab: (-c[lab], lab)), []).append((g, sum(c.values())))
    rng = np.random.default_rng(seed)
    test: set[str] = set()
    for lab in sorted(strata):
        members = strata[lab]
        if len(members) == 1:
            if rng.random() < fraction:
                test.add(members[0][0])
            continue
        target, taken = fraction * sum(n for _, n in members), 0
        for n_groups, i in enumerate(rng.permutation(len(members))):
            if taken >= target or n_groups >= len(members) - 1:
                break
            test.add(members[i][0])
            taken += members[i][1]
    return np.array([g in test for g in groups], dtype=bool)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["g1", "g10", "g2", "tile:9", "é", "Z"]), st.sampled_from("abC")),
        max_size=60,
    ),
    st.floats(0.0, 0.95),
    st.integers(0, 2**32 - 1),
)
def test_columnar_split_equals_row_by_row(
    rows: list[tuple[str, str]], fraction: float, seed: int
) -> None:
    groups, labels = [g for g, _ in rows], [lab for _, lab in rows]
    got = assign_split(groups, labels, fraction, seed)
    assert np.array_equal(got, _split_reference(groups, labels, fraction, seed))


def test_export_text_is_duckdb_cast(tmp_path: Path) -> None:
    col = Store(tmp_path).open_or_create(
        "t", encoder="test/x", fingerprint="test/x@0", embed_dim=DIM, tile_px=8, mpp=1.0
    )
    w = col.writer("r")
    values = [2.0, 0.1, None, -3.0, 1e20, 2.5]
    tiles = [
        {"x": i, "y": 0, "level": 0, "size_px": 8, "tile_px": 8, "f": v, "n": i, "b": i % 2 == 0}
        for i, v in enumerate(values)
    ]
    w.add_source({"source_id": "a", "source": "/a", "kind": "photo"}, tiles, np.eye(6, DIM))
    w.commit()
    view = SearchService(Store(tmp_path)).view("t")
    pos = np.arange(view.n_tiles)
    for c in ("f", "n", "b", "source"):
        want = [r["v"] for r in view.sql(f'SELECT CAST("{c}" AS VARCHAR) AS v FROM tiles')]
        assert column_text(view, c, pos).to_pylist() == want


def test_members_round_trip_in_one_insert(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(10**9, 20_000, replace=False))
    scores = rng.random(20_000)
    rec: dict[str, Any] = {"name": "c", "collection": "x", "snapshot": "s", "encoder": "e"}
    rec |= {"definition": {}, "n_tiles": len(ids), "n_sources": 1, "n_patients": None}
    with Catalog(tmp_path) as cat:
        v1 = cat.add_cohort(rec, ids[::-1], scores[::-1])["version"]
        v2 = cat.add_cohort(rec, [7, 3], None)["version"]
        got_ids, got_scores = cat.members("c", v1)
        assert got_ids == ids.tolist()
        assert np.allclose(np.array(got_scores, float), scores, atol=1e-6)  # stored as FLOAT
        assert cat.members("c", v2) == ([3, 7], [None, None])


def test_status_sizes_and_resident_vectors(tmp_path: Path) -> None:
    col = _collection(tmp_path)
    svc = SearchService(Store(tmp_path))
    view = svc.view("s")
    plain = collection_status(col)
    assert plain["vector_dtype"] == "float32"
    assert plain["vector_bytes"] == view.n_tiles * DIM * 4
    on_disk = sum(p.stat().st_size for p in col.segments_dir.rglob("*") if p.is_file())
    assert plain["disk_bytes"] == on_disk
    assert plain["index"]["factory"] == "Flat" and plain["index"]["build"] is None
    assert plain["memory_bytes"] == 0  # this call holds no view: nothing mapped for it
    view.vectors[np.arange(view.n_tiles)]  # touch every vector page
    served = collection_status(col, view=view)
    assert served["memory_bytes"] == view.memory_bytes() > 0
    assert 0 < served["resident_vector_bytes"] <= plain["vector_bytes"] + 4096 * len(view.readers)
    assert {k for k in plain if k != "last_runs"} <= set(served)


def test_resident_bytes_counts_touched_pages(tmp_path: Path) -> None:
    path = tmp_path / "v.bin"
    path.write_bytes(b"\1" * (64 * mmap.PAGESIZE))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert resident_bytes([path]) in (0, 64 * mmap.PAGESIZE)  # mapped; maybe not touched
        for i in range(0, 16 * mmap.PAGESIZE, mmap.PAGESIZE):
            m[i]
        assert resident_bytes([path]) >= 16 * mmap.PAGESIZE
        assert resident_bytes([tmp_path / "other.bin"]) == 0
    assert resident_bytes([path], smaps=str(tmp_path / "missing")) == 0


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_score_positions_on_every_path(tmp_path: Path, dtype: str) -> None:
    from lamina.search.cohorts import score_positions

    col = Store(tmp_path).open_or_create(
        "v",
        encoder="test/x",
        fingerprint="test/x@0",
        embed_dim=DIM,
        tile_px=8,
        mpp=1.0,
        vector_dtype=dtype,
    )
    rng = np.random.default_rng(2)
    for _ in range(2):  # two segments of 300 tiles
        w = col.writer("r")
        tiles = [{"x": i, "y": 0, "level": 0, "size_px": 8, "tile_px": 8} for i in range(300)]
        w.add_source(
            {"source_id": "a", "source": "/a", "kind": "photo"}, tiles, rng.normal(size=(300, DIM))
        )
        w.commit()
    view = SearchService(Store(tmp_path)).view("v")
    q = rng.normal(size=(3, DIM)).astype(np.float32)
    runs = np.r_[0:70, 100:170, 300:380, 450:600]
    for pos in (np.arange(600), runs, np.arange(0, 600, 2), np.arange(5, 600, 9), np.zeros(0, int)):
        for queries in (q, q[:1]):
            want = queries @ view.vectors[pos].T
            got = score_positions(view, queries, pos)
            assert got.shape == want.shape and np.allclose(got, want, atol=1e-5)
