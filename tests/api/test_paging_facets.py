"""Paging (``offset``), facets, multipart filters and hand-picked cohorts on the real derm photos.

Paging: for every query kind (image, tile, vector, region, groups, slide level, batch) the
pages at offsets 0, k, 2k concatenate to the unpaged top-3k (same tile ids, same scores, same
order). Facets are checked against labels.csv read with the
csv module. A two-line filter sent as one multipart field is two conditions.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import DERM_DIR

K = 5


def _post(c: Any, body: dict[str, Any], path: str = "search") -> dict[str, Any]:
    r = c.post(f"/api/v1/collections/derm/{path}", json=body)
    assert r.status_code == 200, r.get_json()
    return r.get_json()  # type: ignore[no-any-return]


def _upload(c: Any, image: Path, **fields: Any) -> dict[str, Any]:
    data = {k: str(v) for k, v in fields.items()}
    with image.open("rb") as fh:
        data["image"] = (fh, image.name)  # type: ignore[assignment]
        r = c.post("/api/v1/collections/derm/search", data=data)
    assert r.status_code == 200, r.get_json()
    return r.get_json()  # type: ignore[no-any-return]


def _ids(doc: dict[str, Any], groups: bool = False) -> list[tuple[Any, float]]:
    if groups:
        return [(g["value"], g["score"]) for g in doc["groups"]]
    return [(h["tile_id"], h["score"]) for h in doc["hits"]]


def _pages(fetch: Any, groups: bool = False) -> tuple[list[Any], list[Any]]:
    whole = _ids(fetch(3 * K, 0), groups)
    paged = [x for off in (0, K, 2 * K) for x in _ids(fetch(K, off), groups)]
    return whole, paged


@pytest.mark.parametrize(
    "query",
    [
        {"tile_id": 11},
        {"tile_id": 11, "filters": ["diagnostic=MEL,BCC", "age>=60"]},
        {"tile_id": 11, "exclude_same": "patient_id"},
        {"vector_of": 40},
    ],
)
def test_offset_pages_concatenate_to_the_unpaged_top_k(client: Any, query: dict[str, Any]) -> None:
    body = dict(query)
    if "vector_of" in body:
        tile = body.pop("vector_of")
        first = _post(client, {"tile_id": tile, "k": 1})["hits"][0]["tile_id"]
        assert first == tile
        from lamina.search import SearchService, Store

        home = Path(client.application.config["HOME"])
        body["vector"] = SearchService(Store(home)).view("derm").tile_vectors([tile])[0].tolist()
    whole, paged = _pages(lambda k, off: _post(client, {**body, "k": k, "offset": off}))
    assert len(whole) == 3 * K and paged == whole
    assert len({t for t, _ in paged}) == len(paged)  # no tile twice


def test_offset_on_uploads_groups_slides_and_batches(client: Any, derm_images: list[Path]) -> None:
    photo = derm_images[3]
    two_lines = "diagnostic=MEL,BCC\nage>=60"
    whole, paged = _pages(lambda k, off: _upload(client, photo, k=k, offset=off, filters=two_lines))
    assert len(whole) == 3 * K and paged == whole
    whole, paged = _pages(
        lambda k, off: _post(client, {"tile_id": 9, "k": k, "offset": off, "group_by": "patient"}),
        groups=True,
    )
    assert paged == whole and len({v for v, _ in paged}) == 3 * K
    whole, paged = _pages(
        lambda k, off: _post(client, {"tile_id": 9, "k": k, "offset": off, "level": "slide"}),
        groups=True,
    )
    assert paged == whole
    paged_doc = _post(client, {"tile_id": 9, "k": K, "offset": K, "level": "slide"})
    assert paged_doc["query"]["offset"] == K and paged_doc["query"]["level"] == "slide"

    def batch(k: int, off: int) -> dict[str, Any]:
        doc = _post(client, {"tile_ids": [9, 30], "k": k, "offset": off}, "search/batch")
        return {"hits": [h for r in doc["results"] for h in r["hits"]]}

    whole_b = _post(client, {"tile_ids": [9, 30], "k": 3 * K}, "search/batch")["results"]
    for j, res in enumerate(whole_b):
        pages = [
            _post(client, {"tile_ids": [9, 30], "k": K, "offset": o}, "search/batch")["results"][j]
            for o in (0, K, 2 * K)
        ]
        assert [h["tile_id"] for p in pages for h in p["hits"]] == [
            h["tile_id"] for h in res["hits"]
        ]


@pytest.mark.parametrize(
    ("offset", "k", "needle"),
    [(-1, 5, "offset must be an integer >= 0"), (9_999, 5, "offset + k must be at most 10000")],
)
def test_offset_out_of_bounds_is_a_clear_422(client: Any, offset: int, k: int, needle: str) -> None:
    for body in (
        {"tile_id": 1},
        {"tile_id": 1, "level": "slide"},
        {"tile_id": 1, "group_by": "slide"},
    ):
        r = client.post("/api/v1/collections/derm/search", json={**body, "k": k, "offset": offset})
        assert r.status_code == 422, r.get_json()
        assert r.get_json()["code"] == "INVALID_QUERY" and needle in r.get_json()["error"]
    r = client.post("/api/v1/collections/derm/search", json={"tile_id": 1, "offset": "two"})
    assert r.status_code == 422 and "offset must be an integer" in r.get_json()["error"]


def test_cli_offset_is_the_same_locally_and_over_http(
    derm_home: Path, live_url: str, client: Any
) -> None:
    from click.testing import CliRunner

    from lamina.api.cli import cli

    truth = _post(client, {"tile_id": 21, "k": 9})["hits"][4:9]
    args = ["search", "--collection", "derm", "--tile-id", "21", "-k", "5", "--offset", "4"]
    local = CliRunner().invoke(cli, ["--home", str(derm_home), *args, "--json"])
    remote = CliRunner().invoke(cli, ["--url", live_url, *args, "--json"])
    for res in (local, remote):
        assert res.exit_code == 0, res.output
        assert [h["tile_id"] for h in json.loads(res.output)["hits"]] == [
            h["tile_id"] for h in truth
        ]
    bad = CliRunner().invoke(cli, ["--home", str(derm_home), *args[:-1], "-1"])
    assert bad.exit_code == 2


def _indexed(client: Any) -> set[str]:
    """File names of the photos the collection holds (byte-identical files are indexed once)."""
    view = client.application.extensions["lamina"].service.view("derm")
    return {Path(r["source"]).name for r in view.sql("SELECT source FROM tiles")}


def _labels() -> list[dict[str, str]]:
    with (DERM_DIR / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_facets_match_the_manifest(client: Any) -> None:
    indexed = _indexed(client)
    rows = [r for r in _labels() if Path(r["filename"]).name in indexed]  # one per photo indexed
    r = client.get("/api/v1/collections/derm/facets?max_values=3")
    assert r.status_code == 200, r.get_json()
    doc = r.get_json()
    assert doc["n_tiles"] == len(rows)
    cols = {c["name"]: c for c in doc["columns"]}
    assert "source" not in cols and "tile_id" not in cols  # core columns are not facets
    diag = cols["diagnostic"]
    truth = Counter(r["diagnostic"] for r in rows)
    assert len(rows) > 600 and diag["kind"] == "text" and diag["n_distinct"] == len(truth) == 6
    assert [(v["value"], v["n"]) for v in diag["top"]] == sorted(
        truth.items(), key=lambda kv: (-kv[1], kv[0])
    )[:3]
    assert diag["truncated"] is True and diag["n_null"] == 0
    ages = [int(r["age"]) for r in rows if r["age"]]
    age = cols["age"]
    assert age["kind"] == "numeric"
    assert (age["min"], age["max"], age["count"]) == (min(ages), max(ages), len(ages))
    assert age["n_distinct"] == len(set(ages))
    full = client.get("/api/v1/collections/derm/facets").get_json()
    diag_full = next(c for c in full["columns"] if c["name"] == "diagnostic")
    assert diag_full["truncated"] is False and len(diag_full["top"]) == 6
    for bad in ("0", "201", "x"):
        r = client.get(f"/api/v1/collections/derm/facets?max_values={bad}")
        assert r.status_code == 422 and "max_values" in r.get_json()["error"]
    assert client.get("/api/v1/collections/nope/facets").status_code == 404


def test_two_line_filter_in_one_multipart_field(client: Any, derm_images: list[Path]) -> None:
    """The page's reported bug: the textarea's lines arrive as one field with CRLF."""
    photo = derm_images[0]
    by_name = {Path(r["filename"]).name: r for r in _labels()}
    want = {n for n, r in by_name.items() if r["diagnostic"] in ("MEL", "BCC") and r["age"]}
    want = {n for n in want if int(by_name[n]["age"]) >= 60} & _indexed(client)
    doc = _upload(client, photo, k=500, filters="diagnostic=MEL,BCC\r\nage>=60")
    got = {Path(h["source"]).name for h in doc["hits"]}
    assert got == want  # every matching photo, and nothing else
    assert {h["metadata"]["diagnostic"] for h in doc["hits"]} == {"MEL", "BCC"}


def test_cohort_of_hand_picked_tiles(flask_transport: Any, client: Any) -> None:
    from lamina.api.client import Client, LaminaError

    c = Client("http://x", transport=flask_transport)
    hits = c.search_tile("derm", 5, k=8).hits
    picked = [h.tile_id for h in hits]
    info = c.create_cohort("picked-ui", "derm", tile_ids=picked + picked[:2])
    assert info.data["n_tiles"] == len(set(picked))
    assert info.data["definition"]["tile_ids"] == sorted(set(picked))
    shown = client.get("/api/v1/cohorts/picked-ui").get_json()["cohort"]
    truth = Counter(h.metadata["diagnostic"] for h in hits)
    per_label = {r["value"]: r["n"] for r in shown["counts"]["per_label"]["diagnostic"]}
    assert per_label == dict(truth)
    # with a filter: only the picked tiles that pass it
    mel = c.create_cohort("picked-mel", "derm", filter={"diagnostic": "MEL"}, tile_ids=picked)
    assert mel.data["n_tiles"] == truth.get("MEL", 0)
    with pytest.raises(LaminaError) as exc:
        c.create_cohort("picked-bad", "derm", tile_ids=[picked[0], 10**12])
    assert exc.value.code == "TILE_NOT_FOUND"
    with pytest.raises(LaminaError) as exc:
        c.create_cohort("picked-bad", "derm", tile_ids=picked, near_tiles=[1], k=3)
    assert exc.value.code == "INVALID_QUERY" and "tile_ids" in str(exc.value)
    r = client.post(
        "/api/v1/cohorts",
        json={"name": "picked-bad", "collection": "derm", "tile_ids": list(range(10_001))},
    )
    assert r.status_code == 422 and "at most 10000 tile_ids" in r.get_json()["error"]


@pytest.fixture(scope="module")
def slide_app(tmp_path_factory: pytest.TempPathFactory, slides_dir: Path) -> Any:
    """A real SVS slide indexed with the classic encoder (region queries read it again)."""
    from lamina.api.app import create_app
    from lamina.encoders import create_encoder
    from lamina.indexer import IngestOptions, ingest
    from lamina.search import Store

    home = tmp_path_factory.mktemp("region-pages")
    report = ingest(
        Store(home),
        "wsi",
        [slides_dir / "CMU-1-Small-Region.svs"],
        create_encoder("classic/stain-texture"),
        IngestOptions(progress=False, mpp_override=0.5),
    )
    assert report.ok and report.indexed == 1
    return create_app({"HOME": str(home), "DEVICE": "cpu", "API_TOKEN": None})


def test_offset_pages_region_queries_and_the_cli_slide_search(
    slide_app: Any, slides_dir: Path
) -> None:
    from click.testing import CliRunner

    from lamina.api.cli import cli

    c = slide_app.test_client()
    slide = str((slides_dir / "CMU-1-Small-Region.svs").resolve())
    region = {"slide": slide, "x": 448, "y": 672, "w": 224, "h": 224}

    def fetch(k: int, off: int) -> dict[str, Any]:
        r = c.post("/api/v1/collections/wsi/search", json={"region": region, "k": k, "offset": off})
        assert r.status_code == 200, r.get_json()
        return r.get_json()  # type: ignore[no-any-return]

    whole, paged = _pages(fetch)
    assert len(whole) == 3 * K and paged == whole
    # the CLI's --slide search answers through the same route in process
    home = slide_app.config["HOME"]
    res = CliRunner().invoke(
        cli,
        ["--home", home, "search", "--collection", "wsi", "--slide", slide]
        + ["--region", "448,672,224,224", "-k", str(K), "--offset", str(K), "--json"],
    )
    assert res.exit_code == 0, res.output
    assert [(h["tile_id"], h["score"]) for h in json.loads(res.output)["hits"]] == whole[K : 2 * K]


def test_cli_filters_reach_the_server_as_typed(derm_home: Path, live_url: str) -> None:
    """Two conditions on one column both hold, locally and over HTTP (they were once merged
    into one JSON object, the last winning)."""
    from click.testing import CliRunner

    from lamina.api.cli import cli

    base = ["search", "--collection", "derm", "--tile-id", "3", "-k", "50", "--json"]
    for where in (["--home", str(derm_home)], ["--url", live_url]):
        older = CliRunner().invoke(
            cli, [*where, *base, "--filter", "age>=70", "--filter", "age>=60"]
        )
        assert older.exit_code == 0, older.output
        ages = [h["metadata"]["age"] for h in json.loads(older.stdout)["hits"]]
        assert ages and min(ages) >= 70
        none = CliRunner().invoke(
            cli, [*where, *base, "--filter", "diagnostic=MEL", "--filter", "diagnostic=BCC"]
        )
        assert none.exit_code == 0 and json.loads(none.stdout)["hits"] == []
        bad = CliRunner().invoke(cli, [*where, *base, "--filter", "no operator"])
        assert bad.exit_code == 2 and json.loads(bad.stdout)["code"] == "INVALID_FILTER"
