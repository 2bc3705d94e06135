"""API token: every endpoint but /health needs `Authorization: Bearer <token>`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

TOKEN = "s3cret-token-4f9a2c7e"


@pytest.fixture()
def secured(derm_home: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from lamina.api.app import create_app

    monkeypatch.setenv("LAMINA_API_TOKEN", TOKEN)  # read raw, never JSON-decoded
    app = create_app({"HOME": str(derm_home)})
    assert app.config["API_TOKEN"] == TOKEN
    return app.test_client()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/encoders"),
        ("GET", "/api/v1/collections"),
        ("GET", "/api/v1/collections/derm"),
        ("POST", "/api/v1/collections/derm/search"),
        ("GET", "/api/v1/tiles/1"),
        ("GET", "/api/v1/tiles/1/image"),
        ("GET", "/api/v1/sources/x/thumbnail"),
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/api/v1/cohorts"),
        ("POST", "/api/v1/exports"),
        ("POST", "/api/v1/probes"),
        ("GET", "/api/v1/nope"),
    ],
)
def test_needs_token(secured: Any, method: str, path: str) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": "Basic " + TOKEN},
    ):
        r = secured.open(path, method=method, headers=headers, json={"tile_id": 1})
        assert r.status_code == 401, (path, headers)
        assert r.get_json()["code"] == "UNAUTHORIZED"
        assert "Bearer" in r.headers["WWW-Authenticate"]


def test_with_token(secured: Any) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert secured.get("/api/v1/collections", headers=auth).status_code == 200
    r = secured.post("/api/v1/collections/derm/search", json={"tile_id": 1}, headers=auth)
    assert r.status_code == 200 and r.get_json()["hits"]


def test_health_and_page_without_token(secured: Any) -> None:
    r = secured.get("/api/v1/health")
    assert r.status_code == 200 and "snapshots" not in r.get_json()
    page = secured.get("/")
    assert page.status_code == 200 and b'data-auth="yes"' in page.data
    assert secured.get("/static/lamina.js").status_code == 200


def test_client_token(
    secured: Any, flask_transport_cls: Any, derm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lamina.api.app import create_app
    from lamina.api.client import Client, Unauthorized

    monkeypatch.setenv("LAMINA_API_TOKEN", TOKEN)
    app = create_app({"HOME": str(derm_home)})
    with pytest.raises(Unauthorized) as err:
        Client("http://x", transport=flask_transport_cls(app)).collections()
    assert err.value.status == 401 and err.value.code == "UNAUTHORIZED"
    ok = Client("http://x", token=TOKEN, transport=flask_transport_cls(app))
    assert ok.collections()[0]["name"] == "derm"


def test_serve_refuses_public_host_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from lamina.api.cli import cli
    from lamina.api.commands.serve import is_loopback

    monkeypatch.delenv("LAMINA_API_TOKEN", raising=False)
    res = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "LAMINA_API_TOKEN" in res.output
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
