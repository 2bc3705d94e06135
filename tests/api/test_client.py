"""The Python client: typed results, errors, import hygiene, and congruence with the service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

QUERIES: list[dict[str, Any]] = [
    {"tile_id": 0, "k": 10},
    {"tile_id": 17, "k": 5, "filter": {"diagnostic": {"in": ["MEL", "BCC"]}}},
    {"tile_id": 42, "k": 7, "group_by": "patient"},
    {"tile_id": 99, "k": 8, "exclude_same": "patient_id", "filter": {"age": {"gte": 50}}},
    {"tile_id": 123, "k": 4, "group_by": "slide"},
]


def _untimed(doc: dict[str, Any]) -> dict[str, Any]:
    """An answer without the plan's milliseconds (the only part that differs between runs)."""
    doc = json.loads(json.dumps(doc))
    assert set(doc["plan"].pop("ms")) >= {"filter", "search", "merge"}
    return doc


def exposed(app: Any, doc: dict[str, Any]) -> dict[str, Any]:
    """What the server shows of an in-process answer (source paths made root-relative)."""
    return app.extensions["lamina"].exposure.expose(doc)  # type: ignore[no-any-return]


def test_client_import_is_light() -> None:
    code = (
        "import sys, lamina.api.client; heavy = [m for m in ('flask', 'torch', 'faiss', 'duckdb', "
        "'numpy', 'werkzeug', 'timm', 'pyarrow', 'PIL') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_congruence_service_vs_http(app: Any, live_url: str) -> None:
    """The same queries in-process (SearchService) and over real HTTP give identical answers."""
    from lamina.api.client import Client

    svc = app.extensions["lamina"].service
    client = Client(live_url)
    for q in QUERIES:
        local = svc.search_tile(
            "derm",
            q["tile_id"],
            q["k"],
            filter_json=q.get("filter"),
            group_by=q.get("group_by"),
            exclude_same=q.get("exclude_same"),
        )
        remote = client.search_tile(
            "derm",
            tile_id=q["tile_id"],
            k=q["k"],
            filter=q.get("filter"),
            group_by=q.get("group_by"),
            exclude_same=q.get("exclude_same"),
        )
        assert _untimed(remote.to_dict()) == _untimed(exposed(app, local.to_dict())), q
        assert [h.tile_id for h in remote.hits] == [h.tile_id for h in local.hits]


def test_congruence_vector_and_image(app: Any, live_url: str, derm_images: list[Path]) -> None:
    from lamina.api.client import Client
    from lamina.api.queries import image_vector

    svc = app.extensions["lamina"].service
    col = svc.collection("derm")
    client = Client(live_url)
    vec = np.random.default_rng(3).normal(size=col.dim).astype(np.float32)
    local = svc.search("derm", vec, 6)
    remote = client.search_vector("derm", vec.tolist(), k=6, encoder=col.fingerprint)
    assert [h.tile_id for h in remote.hits] == [h.tile_id for h in local.hits]
    data = derm_images[5].read_bytes()
    local = svc.search("derm", image_vector(col, data, device="cpu"), 6)
    remote = client.search_image("derm", derm_images[5], k=6)
    assert _untimed(remote.to_dict()) == _untimed(exposed(app, local.to_dict()))


def test_typed_results_and_errors(flask_transport: Any) -> None:
    from lamina.api import client as lc

    c = lc.Client("http://in-process", transport=flask_transport)
    assert c.health()["ok"] and c.encoders() and c.collections()[0]["name"] == "derm"
    # one byte-identical pair of the 686 photos is indexed once
    assert c.collection("derm")["tiles"] == 685
    res = c.search_tile("derm", tile_id=3, k=3, group_by="patient")
    assert isinstance(res, lc.SearchResult) and isinstance(res.hits[0], lc.Hit)
    assert res.hits[0].tile_id == 3 and res.snapshot and res.encoder and len(res) == 3
    assert isinstance(res.groups[0], lc.Group) and res.groups[0].key == "patient_id"
    assert res.to_dict()["hits"][0]["tile_id"] == 3
    tile = c.tile(3)
    assert tile["tile_id"] == 3
    assert c.tile_image(3, collection="derm")[:4] == b"\x89PNG"
    assert c.thumbnail(tile["source_id"])[:4] == b"\x89PNG"
    slides = c.search_slides("derm", tile_id=3, k=2)
    assert len(slides.groups or []) == 2
    cases = [
        (lambda: c.collection("nope"), lc.NotFound, 404, "COLLECTION_NOT_FOUND"),
        (lambda: c.search_tile("derm", 10**9), lc.NotFound, 404, "TILE_NOT_FOUND"),
        (
            lambda: c.search_vector("derm", [1.0] * 64, encoder="x@1"),
            lc.EncoderMismatch,
            409,
            "ENCODER_MISMATCH",
        ),
        (lambda: c.search_tile("derm", 3, k=0), lc.InvalidRequest, 422, "INVALID_QUERY"),
        (
            lambda: c.search_image("derm", b"not an image"),
            lc.InvalidRequest,
            422,
            "UNREADABLE_IMAGE",
        ),
    ]
    for call, cls, status, code in cases:
        with pytest.raises(cls) as err:
            call()
        assert isinstance(err.value, lc.LaminaError)
        assert (err.value.status, err.value.code) == (status, code)


def test_unreachable_server() -> None:
    from lamina.api.client import Client, ServerError

    with pytest.raises(ServerError) as err:
        Client("http://127.0.0.1:9", timeout=2).health()
    assert err.value.code == "UNREACHABLE"


def test_cli_search_through_url(live_url: str) -> None:
    from click.testing import CliRunner

    from lamina.api.cli import cli

    res = CliRunner().invoke(
        cli,
        [
            "--url",
            live_url,
            "search",
            "--collection",
            "derm",
            "--tile-id",
            "3",
            "-k",
            "2",
            "--filter",
            "diagnostic=MEL,BCC",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["ok"] and len(doc["hits"]) == 2 and doc["snapshot"]
    assert all(h["metadata"]["diagnostic"] in ("MEL", "BCC") for h in doc["hits"])


def test_cli_search_params_through_url(live_url: str) -> None:
    """--strategy and --explain work the same against a server: the plan comes back."""
    from click.testing import CliRunner

    from lamina.api.cli import cli

    args = ["--url", live_url, "search", "--collection", "derm", "--tile-id", "3", "-k", "2"]
    res = CliRunner().invoke(cli, [*args, "--strategy", "exact", "--explain"])
    assert res.exit_code == 0, res.output
    assert "plan: exact over index Flat" in res.stderr and "matched 685 of 685" in res.stderr
    res = CliRunner().invoke(cli, [*args, "--nprobe", "0"])
    assert res.exit_code == 2 and "--nprobe" in res.stderr
