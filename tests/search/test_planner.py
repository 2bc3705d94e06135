"""The planner keeps recall and returns exactly k for every index family and selectivity.

Ground truth is a brute-force numpy ranking of the filtered tiles; recall@10 is averaged over
seeded queries drawn like the collection (clustered), not uniform noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lamina.search.ann import update_index
from lamina.search.errors import InvalidQueryError
from lamina.search.filters import parse_filters
from lamina.search.service import SearchService
from lamina.search.store import Store

from .clustered import clustered, write_collection

N, DIM, K, QUERIES = 20_000, 32, 10, 20
SELECTIVITY = {
    "100%": [],
    "50%": ["bucket<500"],
    "10%": ["bucket<100"],
    "1%": ["bucket<10"],
    "0.1%": ["bucket<1"],
    "correlated": ["cluster_group=3"],
    "all but one patient": ["patient_id!=P0"],
}
FAMILIES = ["Flat", "IVF64", "IVF64,PQ8", "HNSW16"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(12)
    vectors, cluster = clustered(rng, N + QUERIES, DIM, 64)
    home = tmp_path_factory.mktemp("planner")
    write_collection(home, "c", vectors[:N], cluster[:N], segments=4)
    return home, vectors[:N], vectors[N:]


def _truth(view, vectors: np.ndarray, q: np.ndarray, filters: list[str]) -> set[int]:  # noqa: ANN001
    mask = view.mask(parse_filters(filters))
    ids = view.all_tile_ids()
    allowed = np.arange(len(ids)) if mask is None else np.flatnonzero(mask)
    scores = vectors[allowed] @ q
    top = allowed[np.lexsort((ids[allowed], -scores))[:K]]
    return {int(t) for t in ids[top]}


@pytest.mark.parametrize("factory", FAMILIES)
def test_recall_and_exactly_k_for_every_family(data, factory: str) -> None:  # noqa: ANN001
    home, vectors, queries = data
    col = Store(home).collection("c")
    col.set_index(factory)
    update_index(col)
    svc = SearchService(Store(home))
    view = svc.view("c")
    for label, filters in SELECTIVITY.items():
        truths = [_truth(view, vectors, q, filters) for q in queries]
        for strategy in ("auto", "ann") if factory != "Flat" else ("auto",):
            recalls = []
            for q, truth in zip(queries, truths, strict=True):
                res = svc.search("c", q, K, filters=filters, params={"strategy": strategy})
                assert len(res.hits) == K, (factory, label, strategy)
                recalls.append(len(truth & {h.tile_id for h in res.hits}) / K)
            assert np.mean(recalls) >= 0.95, (factory, label, strategy, np.mean(recalls))
            plan = res.plan
            if factory == "Flat":
                assert plan["strategy"] == "exact"
            elif strategy == "ann":
                assert plan["strategy"] == "ann" and plan["segments_indexed"] == 4
            assert plan["matched"] == int(view.mask(parse_filters(filters)).sum()) if filters else N


def test_plan_reports_breadth_and_honours_overrides(data) -> None:  # noqa: ANN001
    home, _, queries = data
    col = Store(home).collection("c")
    col.set_index("IVF64", {"nprobe": 4})
    update_index(col)
    svc = SearchService(Store(home))
    res = svc.search("c", queries[0], K, params={"strategy": "ann"})
    assert res.plan["nprobe"] == 4 and res.plan["strategy"] == "ann"
    assert set(res.plan["ms"]) == {"filter", "search", "merge"}
    wider = svc.search("c", queries[0], K, params={"strategy": "ann", "nprobe": 32})
    assert wider.plan["nprobe"] == 32 and wider.plan["candidates"] > res.plan["candidates"]
    # a selective filter widens the probe (breadth follows selectivity)
    narrow = svc.search("c", queries[0], K, filters=["bucket<20"], params={"strategy": "ann"})
    assert narrow.plan["nprobe"] > 4
    # auto: a filter matching few tiles is ranked exactly
    few = svc.search("c", queries[0], K, filters=["bucket<5"])
    assert few.plan["strategy"] == "exact" and "exact_below" in few.plan["reason"]
    exact = svc.search("c", queries[0], K, params={"strategy": "exact"})
    assert exact.plan["strategy"] == "exact"
    with pytest.raises(InvalidQueryError, match="nprobe"):
        svc.search("c", queries[0], K, params={"nprobe": 0})
    with pytest.raises(InvalidQueryError, match="unknown search parameter"):
        svc.search("c", queries[0], K, params={"nlist": 3})


def test_segments_committed_after_the_index_are_scanned_exactly(data, tmp_path: Path) -> None:  # noqa: ANN001
    _, vectors, queries = data
    rng = np.random.default_rng(3)
    col = write_collection(tmp_path, "d", vectors[:4000], np.zeros(4000, int), segments=2, rng=rng)
    col.set_index("IVF16")
    update_index(col)
    svc = SearchService(Store(tmp_path))
    w = col.writer("late")
    late = queries[:3]
    w.add_source(
        {"source_id": "f" * 64, "source": "late.svs", "kind": "slide", "properties": {}},
        [{"x": i, "y": 0, "level": 0, "size_px": 1, "tile_px": 1, "bucket": 1} for i in range(3)],
        late,
    )
    w.commit()
    res = svc.search("c" if False else "d", late[1], 1, params={"strategy": "ann"})
    assert res.plan["segments_exact"] == 1 and res.plan["segments_indexed"] == 2
    assert res.hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert res.hits[0].metadata["bucket"] == 1


def test_float16_collection_matches_float32_ranking(data, tmp_path: Path) -> None:  # noqa: ANN001
    _, vectors, queries = data
    write_collection(tmp_path, "h", vectors[:5000], np.zeros(5000, int), dtype="float16")
    write_collection(tmp_path, "f", vectors[:5000], np.zeros(5000, int))
    svc = SearchService(Store(tmp_path))
    assert svc.view("h").readers[0].vectors.dtype == np.float16
    same = 0
    for q in queries:
        a = [h.tile_id for h in svc.search("h", q, K).hits]
        b = [h.tile_id for h in svc.search("f", q, K).hits]
        same += len(set(a) & set(b)) / K
    assert same / len(queries) >= 0.98


def test_batch_search_equals_single_queries(data) -> None:  # noqa: ANN001
    home, _, queries = data
    svc = SearchService(Store(home))
    batch = svc.search_batch("c", queries[:5], K, filters=["bucket<300"])
    for q, res in zip(queries[:5], batch, strict=True):
        single = svc.search("c", q, K, filters=["bucket<300"])
        assert [h.tile_id for h in res.hits] == [h.tile_id for h in single.hits]
        assert res.snapshot == single.snapshot


def test_clustering_puts_ivf_lists_in_runs_and_keeps_answers(data, tmp_path: Path) -> None:  # noqa: ANN001
    from lamina.search.compaction import cluster

    _, vectors, queries = data
    col = write_collection(tmp_path, "k", vectors[:6000], np.zeros(6000, int), segments=2)
    col.set_index("IVF32", {"nprobe": 4})
    update_index(col)
    svc = SearchService(Store(tmp_path))
    before = [svc.search("k", q, K, params={"strategy": "ann"}) for q in queries]
    old_ids = np.sort(svc.view("k").all_tile_ids())
    report = cluster(col, min_rows=1000)
    assert len(report["clustered"]) == 2
    assert cluster(col, min_rows=1000)["clustered"] == []  # already in list order
    view = svc.view("k")
    assert all(view.ann.segment(r.segment_id).contiguous for r in view.readers)
    np.testing.assert_array_equal(np.sort(view.all_tile_ids()), old_ids)
    for q, old in zip(queries, before, strict=True):
        new = svc.search("k", q, K, params={"strategy": "ann"})
        assert [h.tile_id for h in new.hits] == [h.tile_id for h in old.hits]
        assert [h.score for h in new.hits] == [h.score for h in old.hits]
        assert new.plan["segments_exact"] == 0
    # every tile keeps its own vector (ids were allocated 0..5999 in write order)
    ids = view.all_tile_ids()[:50]
    np.testing.assert_array_equal(view.tile_vectors(ids), vectors[:6000][ids])


def test_ivf_code_index_probes_the_lists_the_planner_chooses(data) -> None:  # noqa: ANN001
    """IVF-PQ: each row's list is read back from the FAISS index (equal to its nearest
    centroid); a correlated filter probes only lists holding matching tiles."""
    home, vectors, queries = data
    col = Store(home).collection("c")
    col.set_index("IVF64,PQ8")
    update_index(col)
    svc = SearchService(Store(home))
    view = svc.view("c")
    ann = view.ann
    assert ann is not None and ann.centroids is not None
    nearest = np.argmax(vectors @ ann.centroids.T, axis=1)
    lists = np.concatenate([ann.segment(r.segment_id).list_of_row for r in view.readers])
    assert np.mean(lists == nearest) > 0.999  # ties aside
    filters = ["cluster_group=3"]
    mask = view.mask(parse_filters(filters))
    holding = np.unique(lists[mask])
    for q in queries[:5]:
        res = svc.search("c", q, K, filters=filters, params={"strategy": "ann"})
        assert res.plan["strategy"] == "ann" and len(res.hits) == K
        assert res.plan["nprobe"] <= len(holding) < 64
