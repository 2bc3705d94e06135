"""Slide-level retrieval (top-m mean of tile similarities) on a case with a known answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

DIM = 16


@pytest.fixture()
def slides_home(home: Path, synthetic: Any) -> Path:
    rng = np.random.default_rng(0)
    q = np.zeros(DIM)
    q[0] = 1.0
    far = np.zeros(DIM)
    far[1] = 1.0

    def around(center: np.ndarray, n: int, noise: float) -> np.ndarray:
        return center + noise * rng.normal(size=(n, DIM))

    sources = {
        # A: every tile close to the query
        "A": around(q, 12, 0.15),
        # B: one outlier tile nearer than any tile of A, the rest far away
        "B": np.vstack([q[None, :] + 0.001 * rng.normal(size=(1, DIM)), around(far, 11, 0.1)]),
        # C: half close, half far
        "C": np.vstack([around(q, 3, 0.3), around(far, 9, 0.1)]),
        "D": around(far, 10, 0.1),
    }
    meta = {s: {"patient_id": f"P{s}", "label": "x" if s in "AB" else "y"} for s in sources}
    synthetic(home, "slides", sources, DIM, meta)
    return home


def test_slide_level_beats_outlier(slides_home: Path) -> None:
    from lamina.search import SearchService
    from lamina.search.slide_ranking import rank_slides

    svc = SearchService(slides_home_store(slides_home))
    q = np.zeros(DIM, np.float32)
    q[0] = 1
    tile_level = svc.search("slides", q, 1)
    assert tile_level.hits[0].source_id == "B"  # the outlier wins at tile level
    res = rank_slides(svc, "slides", vectors=q, k=4, top_m=5)
    assert [g.value for g in res.groups or []] == ["A", "C", "B", "D"]
    assert res.snapshot == tile_level.snapshot and res.query["method"] == "top_m_mean"
    assert [h.source_id for h in res.hits] == ["A", "C", "B", "D"]
    # top_m=1 degenerates to best-tile ranking: B first
    assert (rank_slides(svc, "slides", vectors=q, k=1, top_m=1).groups or [])[0].value == "B"
    # filters apply before ranking
    only_y = rank_slides(svc, "slides", vectors=q, k=4, filter_json={"label": {"eq": "y"}})
    assert [g.value for g in only_y.groups or []] == ["C", "D"]


def test_query_by_slide_excludes_itself(slides_home: Path) -> None:
    from lamina.search import SearchService
    from lamina.search.slide_ranking import rank_slides

    svc = SearchService(slides_home_store(slides_home))
    res = rank_slides(svc, "slides", source_id="D", k=3)
    values = [g.value for g in res.groups or []]
    assert "D" not in values and values[0] in ("B", "C")  # mostly-far slides resemble D
    assert res.query["n_queries"] == 10


def test_slide_level_over_http(slides_home: Path) -> None:
    from lamina.api.app import create_app

    c = create_app({"HOME": str(slides_home), "TESTING": True}).test_client()
    q = [1.0] + [0.0] * (DIM - 1)
    r = c.post("/api/v1/collections/slides/search", json={"vector": q, "level": "slide", "k": 2})
    body = r.get_json()
    assert r.status_code == 200 and [g["value"] for g in body["groups"]] == ["A", "C"]
    assert body["snapshot"] and body["query"]["level"] == "slide"
    r = c.post(
        "/api/v1/collections/slides/search",
        json={"source_id": "A", "level": "slide", "k": 3, "exclude_same": "label"},
    )
    assert [g["value"] for g in r.get_json()["groups"]] == ["C", "D"]
    r = c.post(
        "/api/v1/collections/slides/search", json={"vector": q, "level": "slide", "top_m": 0}
    )
    assert r.status_code == 422
    r = c.post("/api/v1/collections/slides/search", json={"source_id": "Z", "level": "slide"})
    assert r.status_code == 404 and r.get_json()["code"] == "SOURCE_NOT_FOUND"


def slides_home_store(home: Path) -> Any:
    from lamina.search import Store

    return Store(home)
