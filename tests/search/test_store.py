"""Segments commit atomically, leftovers are cleaned, views and search follow the snapshot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lamina.search import (
    EncoderMismatchError,
    InvalidQueryError,
    SearchService,
    Store,
    TileNotFoundError,
)
from lamina.search.ann import update_index
from lamina.search.segments import TMP_PREFIX, remove_stale

DIM = 16


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _collection(home: Path, name: str = "c"):  # noqa: ANN202
    return Store(home).open_or_create(
        name, encoder="test/x", fingerprint="test/x@1", embed_dim=DIM, tile_px=224, mpp=0.5
    )


def _add(col, rng, n_sources: int = 3, tiles: int = 4, labels=("A", "B")):  # noqa: ANN001, ANN202
    w = col.writer("run")
    all_vecs = []
    for s in range(n_sources):
        vecs = _unit(rng, tiles)
        rows = [
            {
                "x": i * 224,
                "y": 0,
                "level": 0,
                "size_px": 224,
                "tile_px": 224,
                "mpp": 0.5,
                "tissue_fraction": 1.0,
                "kind": "tile",
                "label": labels[(s + i) % len(labels)],
                "patient_id": f"P{s % 2}",
                "age": 40 + s,
            }
            for i in range(tiles)
        ]
        src = {
            "source_id": f"src{rng.integers(1e9)}-{s}",
            "source": f"/data/s{s}.svs",
            "kind": "slide",
            "width": 1000,
            "height": 1000,
            "mpp": 0.5,
            "properties": {"v": 1},
        }
        w.add_source(src, rows, vecs)
        all_vecs.append(vecs)
    return w, np.concatenate(all_vecs)


def test_commit_is_atomic_and_visible_only_after_rename(home: Path) -> None:
    col = _collection(home)
    rng = np.random.default_rng(0)
    w, vecs = _add(col, rng)
    assert col.segments() == []  # nothing visible before commit
    assert any(p.name.startswith(TMP_PREFIX) for p in col.segments_dir.iterdir())
    info = w.commit()
    assert info is not None and info.n_tiles == 12 and info.n_sources == 3
    assert [s.segment_id for s in col.segments()] == [info.segment_id]
    assert not any(p.name.startswith(TMP_PREFIX) for p in col.segments_dir.iterdir())
    np.testing.assert_array_equal(np.asarray(info.vectors()), vecs)
    assert info.source_vectors().shape == (3, DIM)


def test_abort_and_stale_cleanup(home: Path) -> None:
    col = _collection(home)
    rng = np.random.default_rng(1)
    w, _ = _add(col, rng)
    # a live writer's directory is not removed
    assert remove_stale(col.segments_dir) == []
    w.abort()
    assert list(col.segments_dir.iterdir()) == []


def test_leftovers_of_a_killed_writer_are_removed(home: Path) -> None:
    col = _collection(home)
    code = (
        "import numpy as np, os, sys\n"
        "from lamina.search import Store\n"
        f"col = Store({str(home)!r}).collection('c')\n"
        "w = col.writer('r')\n"
        "w.add_source({'source_id': 's', 'source': 'x', 'kind': 'photo'}, "
        "[{'x': 0, 'y': 0, 'level': 0, 'size_px': 1, 'tile_px': 1}], "
        f"np.ones((1, {DIM}), np.float32))\n"
        "os._exit(0)\n"  # dies without commit or cleanup, like a SIGKILL
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
    leftovers = [p.name for p in col.segments_dir.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(TMP_PREFIX)
    assert col.segments() == []
    assert col.cleanup() == leftovers
    assert list(col.segments_dir.iterdir()) == []


def test_tile_ids_are_unique_across_writers(home: Path) -> None:
    col = _collection(home)
    rng = np.random.default_rng(2)
    w1, _ = _add(col, rng)
    w2, _ = _add(col, rng)
    w2.commit()
    w1.commit()
    view = SearchService(Store(home)).view("c")
    ids = view.all_tile_ids()
    assert len(ids) == 24 and len(set(ids.tolist())) == 24


def test_search_filters_before_ranking_and_returns_k(home: Path) -> None:
    col = _collection(home)
    rng = np.random.default_rng(3)
    w, vecs = _add(col, rng, n_sources=10, tiles=10, labels=("A", "B", "C", "D", "E"))
    w.commit()
    svc = SearchService(Store(home))
    q = vecs[0]
    res = svc.search("c", q, k=5)
    assert res.hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert len(res.hits) == 5
    # a rare value: exactly 20 tiles have label E; k=20 returns all of them, ranked
    res = svc.search("c", -q, k=20, filters=["label=E"])
    assert len(res.hits) == 20 and {h.metadata["label"] for h in res.hits} == {"E"}
    assert [h.score for h in res.hits] == sorted((h.score for h in res.hits), reverse=True)
    res = svc.search("c", q, k=50, filters=["label=E", "age>=45"])
    assert len(res.hits) == 10 and all(h.metadata["age"] >= 45 for h in res.hits)
    assert svc.search("c", q, k=5, filters=["label=Z"]).hits == []
    # exact scores: brute force over the filtered set
    view = svc.view("c")
    allowed = [i for i, t in enumerate(view.all_tile_ids()) if view.tile(int(t))["label"] == "E"]
    best = max(allowed, key=lambda i: float(view.vectors[i] @ -q))
    assert (
        svc.search("c", -q, k=1, filters=["label=E"]).hits[0].tile_id == view.all_tile_ids()[best]
    )


def test_group_by_and_exclude_same(home: Path) -> None:
    col = _collection(home)
    rng = np.random.default_rng(4)
    w, vecs = _add(col, rng, n_sources=6, tiles=5)
    w.commit()
    svc = SearchService(Store(home))
    res = svc.search("c", vecs[0], k=3, group_by="slide")
    assert res.groups is not None and len(res.groups) == 3
    assert len({g.value for g in res.groups}) == 3
    assert [g.score for g in res.groups] == sorted((g.score for g in res.groups), reverse=True)
    res = svc.search("c", vecs[0], k=5, group_by="patient")
    assert res.groups is not None and {g.value for g in res.groups} == {"P0", "P1"}
    tid = int(svc.view("c").all_tile_ids()[0])
    res = svc.search_tile("c", tid, k=10, exclude_same="patient_id")
    own = svc.view("c").tile(tid)["patient_id"]
    assert res.hits and all(h.metadata["patient_id"] != own for h in res.hits)
    with pytest.raises(InvalidQueryError):
        svc.search("c", vecs[0], k=3, exclude_same="patient_id")
    with pytest.raises(InvalidQueryError):
        svc.search("c", vecs[0], k=3, group_by="ward")


def test_view_follows_new_commits_and_names_the_snapshot(home: Path) -> None:
    col = _collection(home)
    rng = np.random.default_rng(5)
    svc = SearchService(Store(home))
    empty = svc.search("c", _unit(rng, 1)[0], k=3)
    assert empty.hits == [] and empty.snapshot == "empty"
    w, vecs = _add(col, rng)
    w.commit()
    first = svc.search("c", vecs[0], k=3)
    w, vecs2 = _add(col, rng)
    w.commit()
    second = svc.search("c", vecs2[0], k=3)
    assert first.snapshot != second.snapshot
    assert second.hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert svc.view("c").n_tiles == 24
    # a fresh service agrees
    again = SearchService(Store(home)).search("c", vecs2[0], k=3)
    assert [h.tile_id for h in again.hits] == [h.tile_id for h in second.hits]


def test_new_snapshot_reuses_the_readers_of_known_segments(home: Path) -> None:
    col = _collection(home)
    rng = np.random.default_rng(6)
    w, _ = _add(col, rng)
    w.commit()
    svc = SearchService(Store(home))
    first = svc.view("c")
    w, vecs = _add(col, rng)
    w.commit()
    view = svc.view("c")
    assert [r.segment_id for r in view.readers] == [s.segment_id for s in col.segments()]
    assert view.readers[0] is first.readers[0]  # O(new segments): the old reader is shared
    vec = view.readers[1].vectors  # a read-only view of the memory-mapped file, not a copy
    assert not vec.flags.owndata and not vec.flags.writeable
    pos = view.positions_of([int(view.all_tile_ids()[-1])])
    np.testing.assert_allclose(view.vectors[pos][0], vecs[-1])


def test_query_validation_and_fingerprint(home: Path) -> None:
    col = _collection(home)
    rng = np.random.default_rng(7)
    w, vecs = _add(col, rng)
    w.commit()
    svc = SearchService(Store(home))
    with pytest.raises(InvalidQueryError, match="dimensions"):
        svc.search("c", np.ones(3), k=3)
    with pytest.raises(InvalidQueryError, match="zeros"):
        svc.search("c", np.zeros(DIM), k=3)
    with pytest.raises(InvalidQueryError, match="k must"):
        svc.search("c", vecs[0], k=0)
    with pytest.raises(EncoderMismatchError):
        svc.search("c", vecs[0], k=3, fingerprint="other@2")
    with pytest.raises(TileNotFoundError):
        svc.search_tile("c", 10_000, k=3)
    with pytest.raises(EncoderMismatchError):
        Store(home).open_or_create(
            "c", encoder="test/x", fingerprint="test/x@2", embed_dim=DIM, tile_px=224, mpp=0.5
        )


def test_index_factories_give_k_filtered_hits(home: Path) -> None:
    col = _collection(home)
    rng = np.random.default_rng(8)
    w, vecs = _add(col, rng, n_sources=20, tiles=20, labels=("A", "B", "C", "D"))
    w.commit()
    col.set_index("HNSW16")
    assert update_index(col)["segments_indexed"] == 1
    svc = SearchService(Store(home))
    res = svc.search("c", vecs[3], k=10, filters=["label=A"], params={"strategy": "ann"})
    assert len(res.hits) == 10 and all(h.metadata["label"] == "A" for h in res.hits)
    assert res.plan["strategy"] == "ann" and res.plan["index"] == "HNSW16"
    assert svc.view("c").ann is not None


def test_old_views_stay_valid_after_new_commits(home: Path) -> None:
    col = _collection(home)
    rng = np.random.default_rng(9)
    w, vecs = _add(col, rng)
    w.commit()
    svc = SearchService(Store(home))
    old = svc.view("c")
    np.testing.assert_array_equal(old.vectors[np.arange(12)], vecs)
    w, vecs2 = _add(col, rng)
    w.commit()
    new = svc.view("c")
    assert new is not old and new.n_tiles == 24 and old.n_tiles == 12
    np.testing.assert_array_equal(new.vectors[np.arange(12, 24)], vecs2)
    # the old view (held by a request in flight) still answers on its own snapshot
    res = svc.search("c", vecs[0], k=1, view=old)
    assert res.hits[0].score == pytest.approx(1.0, abs=1e-5) and res.snapshot == old.snapshot.id
