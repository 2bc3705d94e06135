"""Per-request search parameters, the plan in every answer, batch search, and the background
service of the server (new snapshots and ANN indexes prepared off the request path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.api.conftest import poll

DIM = 16
NLIST = 16


def _sources(seed: int, n_sources: int, per: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(8, DIM))
    return {
        f"s{seed}-{i}": centers[i % 8] + 0.4 * rng.normal(size=(per, DIM)) for i in range(n_sources)
    }


def _meta(sources: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    return {s: {"label": "A" if i % 5 == 0 else "B"} for i, s in enumerate(sources)}


@pytest.fixture(scope="module")
def ivf_app(tmp_path_factory: pytest.TempPathFactory, synthetic: Any) -> Any:
    """A 2000-tile collection with a built IVF16 index."""
    from lamina.api.app import create_app
    from lamina.search import Store
    from lamina.search.ann import update_index

    home = tmp_path_factory.mktemp("ivf") / "home"
    src = _sources(0, 20, 100)
    synthetic(home, "ivf", src, DIM, _meta(src))
    col = Store(home).collection("ivf")
    col.set_index(f"IVF{NLIST}")
    assert update_index(col)["segments_indexed"] == 1
    return create_app({"HOME": str(home), "TESTING": True})


def _search(c: Any, body: dict[str, Any], name: str = "ivf") -> dict[str, Any]:
    r = c.post(f"/api/v1/collections/{name}/search", json=body)
    assert r.status_code == 200, r.get_json()
    return r.get_json()  # type: ignore[no-any-return]


def test_params_reach_the_planner(ivf_app: Any) -> None:
    c = ivf_app.test_client()
    exact = _search(c, {"tile_id": 7, "k": 10, "params": {"strategy": "exact"}})
    assert exact["plan"]["strategy"] == "exact" and exact["plan"]["index"] == f"IVF{NLIST}"
    narrow = _search(c, {"tile_id": 7, "k": 10, "params": {"strategy": "ann", "nprobe": 1}})
    plan = narrow["plan"]
    assert plan["strategy"] == "ann" and plan["nprobe"] == 1 and plan["segments_indexed"] == 1
    assert 0 < plan["candidates"] < plan["total"] == 2000
    # probing every list scans every tile: the same answer as the exact scan
    full = _search(c, {"tile_id": 7, "k": 10, "params": {"strategy": "ann", "nprobe": NLIST}})
    assert full["plan"]["candidates"] == 2000
    assert [h["tile_id"] for h in full["hits"]] == [h["tile_id"] for h in exact["hits"]]
    for key in ("matched", "selectivity", "segments_exact", "fallback", "backend", "ms"):
        assert key in plan
    assert set(plan["ms"]) >= {"filter", "search", "merge"}


def test_filtered_plan_counts_matches(ivf_app: Any) -> None:
    c = ivf_app.test_client()
    doc = _search(c, {"tile_id": 7, "k": 5, "filter": {"label": "A"}})
    n_a = 4 * 100  # sources 0, 5, 10, 15
    assert doc["plan"]["matched"] == n_a and doc["plan"]["selectivity"] == n_a / 2000
    assert {h["metadata"]["label"] for h in doc["hits"]} == {"A"}


def test_multipart_params(ivf_app: Any) -> None:
    c = ivf_app.test_client()
    r = c.post(
        "/api/v1/collections/ivf/search",
        data={"tile_id": "3", "k": "4", "params": json.dumps({"strategy": "exact"})},
        content_type="multipart/form-data",
    )
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["plan"]["strategy"] == "exact"
    r = c.post(
        "/api/v1/collections/ivf/search",
        data={"tile_id": "3", "params": "{nope"},
        content_type="multipart/form-data",
    )
    assert r.status_code == 422 and r.get_json()["code"] == "INVALID_QUERY"


@pytest.mark.parametrize(
    "params",
    [
        {"nprobe": 0},
        {"nprobe": "8"},
        {"nprobe": True},
        {"ef_search": 1 << 20},
        {"refine": 0},
        {"strategy": "fast"},
        {"exact_below": -1},
        {"bogus": 1},
        [1, 2],
        "nprobe=8",
    ],
)
def test_bad_params_are_invalid_query(ivf_app: Any, params: Any) -> None:
    c = ivf_app.test_client()
    for path, body in (
        ("search", {"tile_id": 1, "params": params}),
        ("search/batch", {"tile_ids": [1], "params": params}),
    ):
        r = c.post(f"/api/v1/collections/ivf/{path}", json=body)
        assert r.status_code == 422, (path, r.get_json())
        assert r.get_json()["code"] == "INVALID_QUERY"


def test_batch_matches_single_queries(ivf_app: Any) -> None:
    c = ivf_app.test_client()
    ids = [0, 150, 777, 1999]
    params = {"strategy": "ann", "nprobe": 2}
    r = c.post(
        "/api/v1/collections/ivf/search/batch",
        json={"tile_ids": ids, "k": 6, "filter": {"label": "B"}, "params": params},
    )
    assert r.status_code == 200, r.get_json()
    doc = r.get_json()
    assert len(doc["results"]) == len(ids)
    assert {res["snapshot"] for res in doc["results"]} == {doc["snapshot"]}
    for t, res in zip(ids, doc["results"], strict=True):
        one = _search(c, {"tile_id": t, "k": 6, "filter": {"label": "B"}, "params": params})
        assert [h["tile_id"] for h in res["hits"]] == [h["tile_id"] for h in one["hits"]]
        # one plan for the whole batch: filtered, IVF probes at least nprobe lists per query
        assert res["plan"] == doc["results"][0]["plan"]
        assert res["plan"]["nprobe"] >= one["plan"]["nprobe"] >= 2
    # the same queries as vectors
    vecs = ivf_app.extensions["lamina"].service.view("ivf").tile_vectors(ids)
    r = c.post(
        "/api/v1/collections/ivf/search/batch",
        json={"vectors": vecs.tolist(), "k": 6, "filter": {"label": "B"}, "params": params},
    )
    by_vec = r.get_json()["results"]
    assert [[h["tile_id"] for h in x["hits"]] for x in by_vec] == [
        [h["tile_id"] for h in x["hits"]] for x in doc["results"]
    ]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 422, "INVALID_QUERY"),
        ({"vectors": [[1.0] * DIM], "tile_ids": [1]}, 422, "INVALID_QUERY"),
        ({"vectors": []}, 422, "INVALID_QUERY"),
        ({"vectors": [[1.0] * DIM] * 1001}, 422, "INVALID_QUERY"),
        ({"vectors": [[1.0] * DIM, [1.0] * (DIM - 1)]}, 422, "INVALID_QUERY"),
        ({"vectors": [[0.0] * DIM]}, 422, "INVALID_QUERY"),
        ({"vectors": [[1.0] * DIM], "k": 0}, 422, "INVALID_QUERY"),
        ({"vectors": [[1.0] * DIM], "filter": {"nope": 1}}, 422, "INVALID_FILTER"),
        ({"tile_ids": ["x"]}, 422, "INVALID_QUERY"),
        ({"tile_ids": [10**9]}, 404, "TILE_NOT_FOUND"),
        ({"vectors": [[1.0] * DIM], "encoder": "other@1"}, 409, "ENCODER_MISMATCH"),
    ],
)
def test_batch_errors(ivf_app: Any, body: dict[str, Any], status: int, code: str) -> None:
    r = ivf_app.test_client().post("/api/v1/collections/ivf/search/batch", json=body)
    assert r.status_code == status, r.get_json()
    assert r.get_json()["code"] == code
    if body.get("vectors") and len(body["vectors"]) == 2:
        assert "vectors[1]" in r.get_json()["error"]


def test_client_params_plan_and_batch(ivf_app: Any, flask_transport_cls: Any) -> None:
    from lamina.api.client import Client, InvalidRequest

    client = Client("http://lamina.test", transport=flask_transport_cls(ivf_app))
    res = client.search_tile("ivf", 5, k=3, params={"strategy": "ann", "nprobe": 3})
    assert res.plan["strategy"] == "ann" and res.plan["nprobe"] == 3
    assert res.to_dict()["plan"] == res.plan
    vec = ivf_app.extensions["lamina"].service.view("ivf").tile_vectors([5])[0]
    by_vec = client.search_vector("ivf", vec.tolist(), k=3, params={"strategy": "exact"})
    assert by_vec.plan["strategy"] == "exact"
    assert [h.tile_id for h in by_vec.hits][0] == 5
    batch = client.search_batch("ivf", tile_ids=[5, 6], k=3, params={"nprobe": 3})
    assert len(batch) == 2 and batch.results[0].snapshot == batch.snapshot
    assert [h.tile_id for h in batch.results[0].hits] == [h.tile_id for h in res.hits]
    batch = client.search_batch("ivf", [vec.tolist()], k=3)
    assert batch.results[0].hits[0].tile_id == 5
    with pytest.raises(InvalidRequest) as err:
        client.search_tile("ivf", 5, params={"nprobe": -1})
    assert err.value.code == "INVALID_QUERY"


def test_server_prepares_snapshots_and_indexes_in_background(
    tmp_path: Path, synthetic: Any
) -> None:
    """A collection with an IVF factory and no index gets one built by the server; a segment
    committed by another writer is picked up without a restart, never going backwards."""
    from lamina.api.app import create_app
    from lamina.search import Store

    home = tmp_path / "home"
    first = _sources(1, 10, 100)
    synthetic(home, "bg", first, DIM, _meta(first))
    Store(home).collection("bg").set_index(f"IVF{NLIST}")
    app = create_app({"HOME": str(home), "TESTING": True})
    c = app.test_client()
    body = {"tile_id": 3, "k": 5, "params": {"strategy": "ann"}}
    doc = _search(c, body, "bg")
    snap0 = doc["snapshot"]
    assert doc["plan"]["total"] == 1000
    # the index is trained and the segment indexed in a thread; searches go on meanwhile
    doc = poll(lambda: _search(c, body, "bg"), lambda d: d["plan"]["segments_indexed"] == 1)
    assert doc["plan"]["segments_indexed"] == 1 and doc["plan"]["segments_exact"] == 0
    status = c.get("/api/v1/collections/bg").get_json()["collection"]
    assert status["index_type"] == f"IVF{NLIST}" and status["snapshot"] == snap0

    second = _sources(2, 5, 100)
    synthetic(home, "bg", second, DIM, _meta(second))  # another segment, committed on disk
    seen = []
    doc = poll(
        lambda: _search(c, body, "bg"),
        lambda d: seen.append(d["plan"]["total"]) or d["snapshot"] != snap0,
    )
    assert doc["snapshot"] != snap0 and doc["plan"]["total"] == 1500
    assert seen == sorted(seen)  # the previous snapshot answers until the new one is ready
    # the new segment is searched exactly until the background build indexes it too
    doc = poll(lambda: _search(c, body, "bg"), lambda d: d["plan"]["segments_indexed"] == 2)
    assert doc["plan"]["segments_indexed"] == 2
    status = poll(
        lambda: c.get("/api/v1/collections/bg").get_json()["collection"],
        lambda s: s["snapshot"] == doc["snapshot"],
    )
    assert status["tiles"] == 1500 and status["snapshot"] == doc["snapshot"]
