"""Every input bounded: numbers past their column's range, vectors, ids, seeds, JSON depth,
decode budgets of uploads, load shedding and the per-request deadline. Each case here was a
500 (or a 1.7 s, +460 MB decode) before these bounds."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

API = "/api/v1"
SEARCH = f"{API}/collections/derm/search"


def _bomb_jpeg() -> bytes:
    """631 bytes: a 7000x7000 JPEG header, a few scan bytes, an end marker."""
    buf = io.BytesIO()
    Image.new("RGB", (7000, 7000), (200, 120, 100)).save(buf, "JPEG", quality=10)
    return buf.getvalue()[:629] + b"\xff\xd9"


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


@pytest.mark.parametrize(
    "flt",
    [
        {"age": {"lte": 2**128}},
        {"age": {"gt": -(2**200)}},
        {"age": {"lte": -1e308}},
        {"age": {"in": [1, 10**40]}},
        {"age": {"eq": "1e309"}},
        {"age": {"eq": "nan"}},
        {"diameter_1": {"gt": 10**400}},
        {"age": {"gte": "9" * 5000}},
    ],
)
def test_filter_numbers_beyond_the_column_range_are_4xx(client: Any, flt: dict) -> None:
    r = client.post(SEARCH, json={"tile_id": 3, "filter": flt})
    assert r.status_code == 422, r.get_json()
    body = r.get_json()
    assert body["code"] == "INVALID_FILTER" and next(iter(flt)) in body["error"]
    assert len(body["error"]) < 300


@pytest.mark.parametrize("expr", ["age<=-1e308", "age<=1e309", "age>nan", "age=" + "9" * 60])
def test_filter_expressions_beyond_range(client: Any, expr: str) -> None:
    r = client.post(SEARCH, json={"tile_id": 3, "filters": [expr]})
    assert r.status_code == 422 and "'age'" in r.get_json()["error"], r.get_json()


def test_in_range_numbers_still_filter(client: Any) -> None:
    r = client.post(SEARCH, json={"tile_id": 3, "k": 5, "filter": {"age": {"gte": 2**62}}})
    assert r.status_code == 200 and r.get_json()["hits"] == []
    r = client.post(SEARCH, json={"tile_id": 3, "k": 5, "filters": ["age>=59.5", "age<1e18"]})
    assert r.status_code == 200 and all(h["metadata"]["age"] >= 60 for h in r.get_json()["hits"])


def test_vectors_ids_k_and_seeds(app: Any, client: Any) -> None:
    dim = app.extensions["lamina"].service.collection("derm").dim
    for bad in ([10**400] * dim, [1e39] * dim, [0.1] * (dim - 1) + [10**40]):
        r = client.post(SEARCH, json={"vector": bad})
        assert r.status_code == 422 and "vector" in r.get_json()["error"], r.get_json()
    r = client.post(SEARCH, json={"tile_id": 3, "k": 10**30})
    assert r.status_code == 422 and "k must be" in r.get_json()["error"]
    r = client.post(f"{API}/collections/derm/search/batch", json={"tile_ids": [3, 2**64]})
    assert r.status_code == 404
    body = {"name": "x", "collection": "derm", "near_tile_ids": [3, 10**30]}
    r = client.post(f"{API}/cohorts", json=body)
    assert r.status_code == 422 and "near_tile_ids[1]" in r.get_json()["error"]
    r = client.post(f"{API}/cohorts", json={**body, "near_tile_ids": list(range(65))})
    assert r.status_code == 422 and "at most 64" in r.get_json()["error"]
    for route in ("exports", "probes"):
        for seed in (-1, 2**32, "x"):
            r = client.post(
                f"{API}/{route}",
                json={"collection": "derm", "label_column": "diagnostic", "seed": seed},
            )
            assert r.status_code == 422 and "seed" in r.get_json()["error"], (route, seed)


def test_json_depth_and_size(client: Any) -> None:
    deep = '{"tile_id": 3, "filter": {"age": {"in": ' + "[" * 100_000 + "]" * 100_000 + "}}}"
    r = client.post(SEARCH, data=deep, content_type="application/json")
    assert r.status_code == 400 and "nested" in r.get_json()["error"]
    r = client.post(SEARCH, data='{"tile_id": 3, "k": NaN}', content_type="application/json")
    assert r.status_code == 400 and "NaN" in r.get_json()["error"]
    form = {"tile_id": "3", "filter": '{"age": ' + "[" * 40 + "]" * 40 + "}"}
    r = client.post(SEARCH, data=form, content_type="multipart/form-data")
    assert r.status_code == 422 and r.get_json()["code"] == "INVALID_FILTER"
    assert "filter" in r.get_json()["error"] and "nested" in r.get_json()["error"]
    form = {"tile_id": "3", "params": "{" * 70_000}
    r = client.post(SEARCH, data=form, content_type="multipart/form-data")
    assert r.status_code == 422 and "params" in r.get_json()["error"]
    ok = {"tile_id": 3, "k": 2, "filter": {"diagnostic": {"in": ["MEL", "BCC"]}}}
    assert client.post(SEARCH, json=ok).status_code == 200


def test_decompression_bomb_is_refused_before_decoding(client: Any) -> None:
    from lamina.indexer.photos import decode_photo

    bomb = _bomb_jpeg()
    assert len(bomb) == 631
    # what it cost before: a full decode (CPU seconds, ~150 MB of pixels)
    t0, rss0 = time.process_time(), _rss_mb()
    pixels = decode_photo(bomb, "bomb.jpg", 80_000_000)
    before_cpu, before_mb = time.process_time() - t0, _rss_mb() - rss0
    assert pixels.shape == (7000, 7000, 3)
    del pixels
    t0, rss0 = time.process_time(), _rss_mb()
    r = client.post(
        SEARCH, data={"image": (io.BytesIO(bomb), "bomb.jpg")}, content_type="multipart/form-data"
    )
    after_cpu, after_mb = time.process_time() - t0, _rss_mb() - rss0
    assert r.status_code == 413 and "pixels per byte" in r.get_json()["error"], r.get_json()
    print(
        f"bomb: decode {before_cpu:.2f}s +{before_mb:.0f} MB -> refused {after_cpu:.3f}s "
        f"+{after_mb:.0f} MB"
    )
    assert after_cpu < 0.1 and after_mb < 20


def test_real_photos_pass_the_budget(client: Any, derm_images: list[Path]) -> None:
    from lamina.api.images import check_upload_pixels

    for p in derm_images[:50]:
        check_upload_pixels(p.read_bytes(), 50_000_000)
    big = io.BytesIO()  # a legitimate 12 Mpx camera-like photo passes too
    noise = Image.effect_noise((4000, 3000), 60).convert("RGB")
    noise.save(big, "JPEG", quality=85)
    assert check_upload_pixels(big.getvalue(), 50_000_000) == (4000, 3000)


def test_excess_searches_are_shed_with_429(derm_home: Path) -> None:
    from lamina.api.app import create_app

    app = create_app(
        {"HOME": str(derm_home), "TESTING": True, "API_TOKEN": None, "MAX_INFLIGHT": 1}
    )
    c = app.test_client()
    assert c.post(SEARCH, json={"tile_id": 3, "k": 2}).status_code == 200
    gate = app.extensions["lamina_gate"]
    assert gate.try_enter()  # one search in flight
    r = c.post(SEARCH, json={"tile_id": 3, "k": 2})
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert r.get_json()["code"] == "OVERLOADED"
    assert c.get(f"{API}/collections/derm").status_code == 429
    assert c.get(f"{API}/encoders").status_code == 200  # cheap routes still answer
    gate.leave()
    assert c.post(SEARCH, json={"tile_id": 3, "k": 2}).status_code == 200
    assert gate.running == 0 and gate.shed == 2


def test_waits_past_the_deadline_answer_503(derm_home: Path, derm_images: list[Path]) -> None:
    from lamina.api.app import create_app

    app = create_app(
        {"HOME": str(derm_home), "TESTING": True, "API_TOKEN": None, "SEARCH_TIMEOUT_S": 0.3}
    )
    c = app.test_client()
    lock = app.extensions["lamina"].embed_lock
    with lock:  # another request embedding for longer than this one's budget
        t0 = time.monotonic()
        r = c.post(
            SEARCH,
            data={"image": (io.BytesIO(derm_images[0].read_bytes()), "q.jpg")},
            content_type="multipart/form-data",
        )
        waited = time.monotonic() - t0
    assert r.status_code == 503 and r.get_json()["code"] == "DEADLINE_EXCEEDED"
    assert 0.25 < waited < 5
    assert app.extensions["lamina_gate"].running == 0


def test_filter_coercion_is_the_one_path_for_cli_and_api() -> None:
    """The column-wise filter itself refuses out-of-range values (the CLI's path too)."""
    import pyarrow as pa

    from lamina.search.errors import FilterError
    from lamina.search.filters import condition_mask, parse_expr

    ages = pa.array([10, 60, None, 90], pa.int64())
    assert condition_mask(ages, parse_expr("age>=60"), "BIGINT", 4).tolist() == [
        False,
        True,
        False,
        True,
    ]
    assert condition_mask(ages, parse_expr("age>59.5"), "BIGINT", 4).tolist() == [
        False,
        True,
        False,
        True,
    ]
    for expr in ("age<=-1e308", "age<=1e309", "age=nan", f"age<{2**63}", "age>" + "9" * 70):
        with pytest.raises(FilterError, match="'age'"):
            condition_mask(ages, parse_expr(expr), "BIGINT", 4)
    sizes = pa.array([1.5, 2.5], pa.float64())
    assert condition_mask(sizes, parse_expr(f"d<{2**70}"), "DOUBLE", 2).tolist() == [True, True]
    with pytest.raises(FilterError, match="'d'"):
        condition_mask(sizes, parse_expr("d<inf"), "DOUBLE", 2)
