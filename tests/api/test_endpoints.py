"""Every endpoint and its error codes, through the Flask test client."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

API = "/api/v1"


def test_health(client: Any) -> None:
    r = client.get(f"{API}/health")
    assert r.status_code == 200
    body = r.get_json()
    assert body["ok"] is True and body["version"] and body["snapshot"]
    assert "derm" in body["snapshots"]


def test_encoders(client: Any) -> None:
    body = client.get(f"{API}/encoders").get_json()
    assert body["ok"] and any(e["key"] == "test/tiny-vit" for e in body["encoders"])


def test_collections(client: Any) -> None:
    body = client.get(f"{API}/collections").get_json()
    (col,) = body["collections"]
    assert col["name"] == "derm" and col["tiles"] == 685 and col["snapshot"]
    one = client.get(f"{API}/collections/derm").get_json()["collection"]
    assert one["snapshot"] == col["snapshot"] and "diagnostic" in one["metadata_columns"]


def test_collection_not_found(client: Any) -> None:
    r = client.get(f"{API}/collections/nope")
    assert r.status_code == 404 and r.get_json()["code"] == "COLLECTION_NOT_FOUND"
    r = client.post(f"{API}/collections/nope/search", json={"tile_id": 1})
    assert r.status_code == 404 and r.get_json()["code"] == "COLLECTION_NOT_FOUND"


def test_search_by_tile(client: Any) -> None:
    r = client.post(f"{API}/collections/derm/search", json={"tile_id": 5, "k": 4})
    body = r.get_json()
    assert r.status_code == 200 and body["ok"] and body["snapshot"] and body["encoder"]
    assert len(body["hits"]) == 4 and body["hits"][0]["tile_id"] == 5
    hit = body["hits"][0]
    for key in ("tile_id", "score", "source_id", "source", "x", "y", "size_px", "mpp", "metadata"):
        assert key in hit
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    plan = body["plan"]  # a Flat collection: every query is an exact scan of all tiles
    assert plan["strategy"] == "exact" and plan["index"] == "Flat"
    # 686 photos, one byte-identical pair indexed once
    assert plan["matched"] == plan["total"] == plan["candidates"] == 685


def test_search_filter_json_and_exprs(client: Any) -> None:
    spec = {"diagnostic": {"in": ["MEL", "BCC"]}, "age": {"gte": 50}}
    body = client.post(
        f"{API}/collections/derm/search", json={"tile_id": 5, "k": 20, "filter": spec}
    ).get_json()
    assert len(body["hits"]) == 20
    assert all(
        h["metadata"]["diagnostic"] in ("MEL", "BCC") and h["metadata"]["age"] >= 50
        for h in body["hits"]
    )
    same = client.post(
        f"{API}/collections/derm/search",
        json={"tile_id": 5, "k": 20, "filters": ["diagnostic=MEL,BCC", "age>=50"]},
    )
    assert [h["tile_id"] for h in same.get_json()["hits"]] == [h["tile_id"] for h in body["hits"]]


def test_search_group_by_and_exclude_same(client: Any) -> None:
    body = client.post(
        f"{API}/collections/derm/search",
        json={"tile_id": 5, "k": 5, "group_by": "patient", "exclude_same": "patient_id"},
    ).get_json()
    q = client.get(f"{API}/tiles/5").get_json()["tile"]["metadata"]["patient_id"]
    assert len(body["groups"]) == 5
    assert all(g["key"] == "patient_id" and g["value"] != q for g in body["groups"])
    assert all(h["metadata"]["patient_id"] != q for h in body["hits"])


def test_search_by_vector_and_encoder_mismatch(client: Any) -> None:
    col = client.get(f"{API}/collections/derm").get_json()["collection"]
    vec = np.random.default_rng(0).normal(size=col["embed_dim"]).tolist()
    r = client.post(
        f"{API}/collections/derm/search",
        json={"vector": vec, "k": 3, "encoder": col["fingerprint"]},
    )
    assert r.status_code == 200 and len(r.get_json()["hits"]) == 3
    r = client.post(f"{API}/collections/derm/search", json={"vector": vec, "encoder": "other@1"})
    assert r.status_code == 409 and r.get_json()["code"] == "ENCODER_MISMATCH"
    r = client.post(f"{API}/collections/derm/search", json={"vector": vec[:5]})
    assert r.status_code == 422 and r.get_json()["code"] == "INVALID_QUERY"
    r = client.post(f"{API}/collections/derm/search", json={"vector": [0.0] * len(vec)})
    assert r.status_code == 422


def test_search_by_image(client: Any, derm_images: list[Path]) -> None:
    data = derm_images[0].read_bytes()
    r = client.post(
        f"{API}/collections/derm/search",
        data={
            "image": (io.BytesIO(data), "q.jpg"),
            "k": "3",
            "filter": '{"diagnostic": {"ne": "NEV"}}',
            "group_by": "slide",
        },
    )
    body = r.get_json()
    assert r.status_code == 200, body
    assert len(body["hits"]) == 3 and body["groups"][0]["key"] == "slide"
    assert all(h["metadata"]["diagnostic"] != "NEV" for h in body["hits"])
    # the query photo itself is indexed: it comes first with score ~1
    r = client.post(
        f"{API}/collections/derm/search", data={"image": (io.BytesIO(data), "q.jpg"), "k": "1"}
    )
    assert r.get_json()["hits"][0]["source"].endswith(derm_images[0].name)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"tile_id": 5, "k": 0}, 422, "INVALID_QUERY"),
        ({"tile_id": 5, "k": "many"}, 422, "INVALID_QUERY"),
        ({"tile_id": 5, "filter": {"nope": {"eq": 1}}}, 422, "INVALID_FILTER"),
        ({"tile_id": 5, "filter": {"age": {"like": 1}}}, 422, "INVALID_FILTER"),
        ({"tile_id": 5, "filter": "[1]"}, 422, "INVALID_FILTER"),
        ({"tile_id": 5, "group_by": "lesion"}, 422, "INVALID_QUERY"),
        ({"tile_id": 10**9}, 404, "TILE_NOT_FOUND"),
        ({"tile_id": 5, "vector": [1.0]}, 422, "INVALID_QUERY"),
        ({}, 422, "INVALID_QUERY"),
        ({"source_id": "x"}, 422, "INVALID_QUERY"),
        ({"tile_id": 5, "level": "patient"}, 422, "INVALID_QUERY"),
        (
            {"region": {"slide": "/etc/passwd", "x": 0, "y": 0, "w": 10, "h": 10}},
            404,
            "SOURCE_NOT_FOUND",
        ),
        ({"region": {"slide": "s", "x": -1, "y": 0, "w": 10, "h": 10}}, 422, "INVALID_QUERY"),
    ],
)
def test_search_errors(client: Any, body: dict[str, Any], status: int, code: str) -> None:
    r = client.post(f"{API}/collections/derm/search", json=body)
    assert r.status_code == status, r.get_json()
    doc = r.get_json()
    assert doc == {"ok": False, "status": status, "code": code, "error": doc["error"]}


def test_bad_bodies(client: Any) -> None:
    r = client.post(
        f"{API}/collections/derm/search", data=b"{not json", content_type="application/json"
    )
    assert r.status_code == 400 and r.get_json()["code"] == "BAD_REQUEST"
    r = client.post(f"{API}/collections/derm/search", data=b"hello", content_type="text/plain")
    assert r.status_code == 415 and r.get_json()["code"] == "UNSUPPORTED_MEDIA_TYPE"
    r = client.post(f"{API}/collections/derm/search", data={"k": "3"})
    assert r.status_code == 422


def test_tile_metadata_image_thumbnail(client: Any) -> None:
    tile = client.get(f"{API}/tiles/7?collection=derm").get_json()
    assert tile["ok"] and tile["tile"]["tile_id"] == 7 and tile["snapshot"]
    r = client.get(f"{API}/tiles/7/image")
    assert r.status_code == 200 and r.mimetype == "image/png" and r.data[:8] == b"\x89PNG\r\n\x1a\n"
    sid = tile["tile"]["source_id"]
    r = client.get(f"{API}/sources/{sid}/thumbnail")
    assert r.status_code == 200 and r.mimetype == "image/png"
    r = client.get(f"{API}/tiles/999999")
    assert r.status_code == 404 and r.get_json()["code"] == "TILE_NOT_FOUND"
    r = client.get(f"{API}/tiles/999999/image")
    assert r.status_code == 404
    r = client.get(f"{API}/sources/nope/thumbnail")
    assert r.status_code == 404 and r.get_json()["code"] == "SOURCE_NOT_FOUND"
    r = client.get(f"{API}/tiles/7?collection=other")
    assert r.status_code == 404 and r.get_json()["code"] == "COLLECTION_NOT_FOUND"


def test_tile_needs_collection_when_several(home: Path, synthetic: Any) -> None:
    from lamina.api.app import create_app

    rng = np.random.default_rng(1)
    synthetic(home, "a", {"s1": rng.normal(size=(3, 8))}, 8)
    synthetic(home, "b", {"s2": rng.normal(size=(3, 8))}, 8)
    c = create_app({"HOME": str(home), "TESTING": True}).test_client()
    r = c.get(f"{API}/tiles/0")
    assert r.status_code == 400 and r.get_json()["code"] == "COLLECTION_REQUIRED"
    assert c.get(f"{API}/tiles/0?collection=a").status_code == 200
    # slide tiles of a missing file: 404 with a code, not 5xx
    r = c.get(f"{API}/tiles/0/image?collection=a")
    assert r.status_code == 404 and r.get_json()["code"] == "SOURCE_FILE_MISSING"


def test_http_errors_are_json(client: Any) -> None:
    r = client.get(f"{API}/nope")
    assert r.status_code == 404 and r.get_json()["code"] == "NOT_FOUND"
    r = client.get(f"{API}/collections/derm/search")
    assert r.status_code == 405 and r.get_json()["code"] == "METHOD_NOT_ALLOWED"


def test_internal_error_hides_details(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("secret /internal/path")

    monkeypatch.setattr(app.extensions["lamina"].service, "view", boom)
    r = app.test_client().post(f"{API}/collections/derm/search", json={"tile_id": 1})
    assert r.status_code == 500
    assert r.get_json() == {
        "ok": False,
        "status": 500,
        "code": "INTERNAL",
        "error": "internal error",
    }


def test_openapi_lists_every_endpoint(client: Any, app: Any) -> None:
    spec = client.get(f"{API}/openapi.json").get_json()
    assert spec["openapi"].startswith("3.1")
    paths = set(spec["paths"])
    for p in (
        "/health",
        "/encoders",
        "/collections",
        "/collections/{c}",
        "/collections/{c}/search",
        "/collections/{c}/search/batch",
        "/tiles/{tile_id}",
        "/tiles/{tile_id}/image",
        "/sources/{source_id}/thumbnail",
        "/cohorts",
        "/cohorts/{name}",
        "/exports",
        "/probes",
        "/openapi.json",
    ):
        assert p in paths
    # every route of ours under /api/v1 is documented
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(API + "/"):
            path = rule.rule[len(API) :].replace("<int:", "<").replace("<", "{").replace(">", "}")
            path = path.replace("{name}/search", "{c}/search")
            if path.startswith("/collections/{name}"):
                path = path.replace("{name}", "{c}")
            assert path in paths, path


def test_index_page(client: Any) -> None:
    r = client.get("/")
    assert r.status_code == 200 and b"Lamina" in r.data and b"lamina.js" in r.data
    assert client.get("/static/lamina.js").status_code == 200
