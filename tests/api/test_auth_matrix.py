"""Auth that fails closed, scoped tokens on every route, what answers expose, the audit log.

Placeholder tokens stop both ``create_app`` and a real ``lamina serve``; every registered route
has a scope and answers 401/403 as its scope says for every kind of caller; the CLI sends
``--token`` / ``LAMINA_TOKEN`` / the 0600 config file's token to a real ``lamina serve``;
no JSON answer holds the home or an absolute path; the audit log names tokens and never holds
vectors.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

ENV_TOKEN = "env-admin-7Qk2xP9sLm4RtV8w"
PLACEHOLDERS = [
    "", "null", "none", "None", "false", "true", "0", "1e3", "[]", "{}", "changeme", "token",
    "   ", "\t", "short-token", "aaaaaaaaaaaaaaaaaaaaaaaa", "secret", "password",
]  # fmt: skip
ABS_PATH = re.compile(r'"(/[^"]*)"')


def write_collection(home: Path, name: str, folder: Path, n_sources: int = 4) -> list[str]:
    """A small collection of hand-made vectors whose sources live under ``folder/sub``.

    Returns the source ids."""
    from lamina.search import Store

    rng = np.random.default_rng(7)
    col = Store(home).open_or_create(
        name, encoder="synthetic/v1", fingerprint="synthetic@1", embed_dim=16, tile_px=224, mpp=0.5
    )
    w = col.writer("synthetic")
    ids = []
    for s in range(n_sources):
        vecs = rng.normal(size=(5, 16))
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        sid = f"{name}-src{s}"
        ids.append(sid)
        tiles = [
            {
                "kind": "tile", "x": 224 * i, "y": 0, "level": 0, "size_px": 224,
                "tile_px": 224, "mpp": 0.5, "tissue_fraction": 1.0,
                "patient_id": f"P{s % 2}", "label": "a" if s % 2 else "b",
            }
            for i in range(5)
        ]  # fmt: skip
        w.add_source(
            {
                "source_id": sid,
                "source": str(folder / "sub" / f"TCGA-{s:02d}.svs"),
                "kind": "slide",
                "width": 224 * 5,
                "height": 224,
                "mpp": 0.5,
            },
            tiles,
            vecs.astype(np.float32),
        )
    w.commit()
    return ids


def make_world(base: Path) -> dict[str, Any]:
    """A home with collection ``syn`` (sources under a recorded root) and ``secret-study``,
    and one token of each scope."""
    from lamina.api.auth import TokenStore
    from lamina.api.exposure import record_roots

    home = base / "home"
    home.mkdir()
    study = base / "study"
    (study / "sub").mkdir(parents=True)
    other = base / "other-study"
    other.mkdir()
    sids = write_collection(home, "syn", study)
    write_collection(home, "secret-study", other, n_sources=2)
    record_roots(home, [study])
    store = TokenStore(home)
    tokens = {scope: store.add(f"t-{scope}", scope) for scope in ("read", "write", "admin")}
    return {"home": home, "study": study, "sids": sids, "tokens": tokens}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The home of the in-process apps."""
    return make_world(tmp_path_factory.mktemp("authm"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The home of the `lamina serve` subprocess (which owns its catalog)."""
    return make_world(tmp_path_factory.mktemp("auths"))


def _app(world: dict[str, Any], **config: Any) -> Any:
    from lamina.api.app import create_app

    return create_app({"HOME": str(world["home"]), "API_TOKEN": ENV_TOKEN, **config})


@pytest.fixture(scope="module")
def app(world: dict[str, Any]) -> Any:
    return _app(world)


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


# -- placeholder tokens refuse to start -------------------------------------------------------


@pytest.mark.parametrize("value", PLACEHOLDERS)
def test_create_app_refuses_placeholder_token(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lamina.api.app import create_app
    from lamina.api.auth import AuthConfigError

    monkeypatch.setenv("LAMINA_API_TOKEN", value)
    with pytest.raises(AuthConfigError, match="LAMINA_API_TOKEN"):
        create_app({"HOME": str(tmp_path)})
    with pytest.raises(AuthConfigError, match="API_TOKEN"):
        create_app({"HOME": str(tmp_path), "API_TOKEN": value})


def test_env_token_is_read_raw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token that JSON would decode (a number, quotes) is still the exact string."""
    from lamina.api.app import create_app

    for raw in ("12345678901234567890", '"quoted-token-value-x1"'):
        monkeypatch.setenv("LAMINA_API_TOKEN", raw)
        app = create_app({"HOME": str(tmp_path)})
        assert app.config["API_TOKEN"] == raw
        c = app.test_client()
        assert c.get("/api/v1/encoders").status_code == 401
        assert c.get("/api/v1/encoders", headers=bearer(raw)).status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow  # one `lamina serve` per placeholder, in parallel: ~10 s on 2 cores
def test_serve_refuses_placeholder_token(tmp_path: Path) -> None:
    """Every placeholder: `lamina serve --host 0.0.0.0` exits 2 with an error, serving nothing."""
    procs = []
    for value in PLACEHOLDERS:
        env = dict(os.environ, LAMINA_API_TOKEN=value, LAMINA_HOME=str(tmp_path))
        cmd = [sys.executable, "-m", "lamina.api", "serve", "--host", "0.0.0.0", "--port", "0"]
        procs.append((value, subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)))
    failures = []
    for value, p in procs:
        try:
            _, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            failures.append(f"{value!r}: still serving after 60 s")
            continue
        if p.returncode != 2 or "error: " not in err or "LAMINA_API_TOKEN" not in err:
            failures.append(f"{value!r}: exit {p.returncode}, {err.strip()[-200:]}")
    assert not failures, failures


# -- every route has a scope; the matrix ------------------------------------------------------


def test_every_route_has_a_scope(app: Any) -> None:
    from lamina.api.auth import ROUTES

    missing = sorted(
        f"{sorted(r.methods - {'HEAD', 'OPTIONS'})} {r.rule} ({r.endpoint})"
        for r in app.url_map.iter_rules()
        if r.endpoint not in ROUTES
    )
    assert not missing, f"routes without a scope in api.auth.ROUTES: {missing}"


def _sample_requests(app: Any) -> list[tuple[str, str, str]]:
    """(method, path, endpoint) for every registered API route, with sample arguments."""
    values = {"name": "syn", "tile_id": "0", "source_id": "x", "job_id": "nope", "filename": "x"}
    values |= {"level": "0", "col": "0", "row": "0", "fmt": "jpeg"}  # deep-zoom tiles
    out = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/"):
            continue
        path = rule.rule
        for arg in rule.arguments:
            path = re.sub(rf"<(?:\w+:)?{arg}>", values[arg], path)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((method, path, rule.endpoint))
    return out


def test_scope_matrix(app: Any, world: dict[str, Any]) -> None:
    """Each route x caller: none/wrong -> 401, lower scope -> 403, enough -> neither."""
    from lamina.api.auth import RANK, ROUTES

    c = app.test_client()
    callers: dict[str, tuple[str | None, int]] = {
        "none": (None, -1),
        "wrong": ("lam_wrong-token-0123456789abcdef", -1),
        "read": (world["tokens"]["read"], RANK["read"]),
        "write": (world["tokens"]["write"], RANK["write"]),
        "admin": (world["tokens"]["admin"], RANK["admin"]),
        "env": (ENV_TOKEN, RANK["admin"]),
    }
    requests = _sample_requests(app)
    assert len(requests) >= 17
    bad = []
    for method, path, endpoint in requests:
        need = ROUTES[endpoint][0]
        for who, (token, rank) in callers.items():
            r = c.open(path, method=method, headers=bearer(token), json={})
            if need == "public":
                ok = r.status_code not in (401, 403)
            elif rank < 0:
                ok = r.status_code == 401 and "Bearer" in r.headers.get("WWW-Authenticate", "")
            elif rank < RANK[need]:
                ok = r.status_code == 403 and r.get_json()["code"] == "FORBIDDEN"
            else:
                ok = r.status_code not in (401, 403)
            if not ok:
                bad.append(f"{who} {method} {path} (needs {need}): {r.status_code}")
    assert not bad, bad


def test_read_cannot_write_and_revoked_is_refused(app: Any, world: dict[str, Any]) -> None:
    from lamina.api.auth import TokenStore

    c = app.test_client()
    body = {"name": "m1", "collection": "syn", "near_tile_ids": [0], "k": 3}
    r = c.post("/api/v1/cohorts", json=body, headers=bearer(world["tokens"]["read"]))
    assert r.status_code == 403 and "write" in r.get_json()["error"]
    r = c.post("/api/v1/cohorts", json=body, headers=bearer(world["tokens"]["write"]))
    assert r.status_code == 200, r.get_json()
    assert c.get("/api/v1/cohorts/m1", headers=bearer(world["tokens"]["read"])).status_code == 200
    store = TokenStore(world["home"])
    temp = store.add("short-lived", "write")
    assert c.get("/api/v1/cohorts", headers=bearer(temp)).status_code == 200
    store.revoke("short-lived")
    assert c.get("/api/v1/cohorts", headers=bearer(temp)).status_code == 401
    assert c.delete("/api/v1/cohorts/m1", headers=bearer(temp)).status_code == 401


def test_revoking_every_token_locks_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lamina.api.app import create_app
    from lamina.api.auth import TokenStore

    monkeypatch.delenv("LAMINA_API_TOKEN", raising=False)
    store = TokenStore(tmp_path)
    secret = store.add("only", "read")
    app = create_app({"HOME": str(tmp_path)})
    c = app.test_client()
    assert c.get("/api/v1/collections", headers=bearer(secret)).status_code == 200
    store.revoke("only")
    assert c.get("/api/v1/collections").status_code == 401
    assert "snapshots" not in c.get("/api/v1/health").get_json()
    store.path.unlink()  # a deleted tokens file does not open a running server either
    assert c.get("/api/v1/collections").status_code == 401


def test_tokens_file_is_private_and_holds_no_secret(world: dict[str, Any]) -> None:
    from lamina.api.app import create_app
    from lamina.api.auth import AuthConfigError, TokenStore

    store = TokenStore(world["home"])
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.dir.stat().st_mode) == 0o700
    text = store.path.read_text()
    for secret in world["tokens"].values():
        assert secret not in text and secret[4:20] not in text
    assert {t["name"] for t in json.loads(text)["tokens"]} >= {"t-read", "t-write", "t-admin"}
    res = CliRunner().invoke(
        __import__("lamina.api.cli", fromlist=["cli"]).cli,
        ["--home", str(world["home"]), "token", "list", "--json"],
    )
    assert res.exit_code == 0, res.output
    assert not any(s in res.output for s in world["tokens"].values())
    listed = json.loads(res.output)["tokens"]
    assert {t["name"]: t["scope"] for t in listed}["t-write"] == "write"
    assert all(set(t) == {"name", "scope", "created"} for t in listed)
    os.chmod(store.path, 0o644)  # a tokens file others can read stops the server
    try:
        with pytest.raises(AuthConfigError, match="chmod 600"):
            create_app({"HOME": str(world["home"]), "API_TOKEN": None})
    finally:
        os.chmod(store.path, 0o600)


# -- a real `lamina serve`: the CLI sends tokens --------------------------------------------


@pytest.fixture(scope="module")
def server(served: dict[str, Any]) -> Iterator[str]:
    port = _free_port()
    env = dict(os.environ, LAMINA_API_TOKEN=ENV_TOKEN)
    env.pop("LAMINA_TOKEN", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lamina.api",
            "--home",
            str(served["home"]),
            "serve",
            "--port",
            str(port),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        from lamina.api.client import Client, LaminaError

        deadline = time.monotonic() + 60
        while True:
            try:
                Client(url, token="", timeout=2).health()
                break
            except LaminaError:
                assert proc.poll() is None, proc.communicate()[1][-2000:]
                assert time.monotonic() < deadline, "lamina serve did not start in 60 s"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _lamina(args: list[str], env: dict[str, str | None] | None = None) -> Any:
    from lamina.api.cli import cli

    base: dict[str, str | None] = {"LAMINA_TOKEN": None, "LAMINA_CONFIG": None, "LAMINA_URL": None}
    return CliRunner().invoke(cli, args, env={**base, **(env or {})})


def test_cli_sends_token_to_a_protected_server(
    server: str, served: dict[str, Any], tmp_path: Path
) -> None:
    world = served
    tok = world["tokens"]
    search = ["--url", server, "search", "--collection", "syn", "--tile-id", "0", "--json"]

    res = _lamina(search)  # no token: 401 as a clear CLI error
    assert res.exit_code == 2 and "UNAUTHORIZED" in res.output, res.output

    res = _lamina(["--token", tok["read"], *search])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.output)["hits"]
    assert hits and hits[0]["source"] == "sub/TCGA-00.svs"  # root-relative, never absolute

    res = _lamina(search, env={"LAMINA_TOKEN": tok["read"]})
    assert res.exit_code == 0, res.output

    create = ["--url", server, "cohort", "create", "--collection", "syn", "--near-tile", "0"]
    res = _lamina(["--token", tok["read"], *create, "--k", "3", "c-read", "--json"])
    assert res.exit_code == 2 and "FORBIDDEN" in res.output, res.output
    res = _lamina([*create, "--k", "3", "c-env", "--json"], env={"LAMINA_TOKEN": tok["write"]})
    assert res.exit_code == 0 and json.loads(res.output)["cohort"]["n_tiles"] == 3, res.output

    config = tmp_path / "config.toml"
    config.write_text(f'token = "{tok["read"]}"\n[servers."{server}"]\ntoken = "{tok["write"]}"\n')
    os.chmod(config, 0o600)
    res = _lamina([*create, "--k", "2", "c-conf", "--json"], env={"LAMINA_CONFIG": str(config)})
    assert res.exit_code == 0, res.output
    res = _lamina(["--url", server, "cohort", "show", "c-conf", "--json"],
                  env={"LAMINA_CONFIG": str(config)})  # fmt: skip
    assert res.exit_code == 0 and json.loads(res.output)["cohort"]["n_tiles"] == 2

    out = tmp_path / "set.parquet"
    export = ["--url", server, "export", "--collection", "syn", "--label-column", "label"]
    res = _lamina([*export, "--out", str(out), "--json"], env={"LAMINA_CONFIG": str(config)})
    assert res.exit_code == 0 and out.is_file(), res.output
    import pyarrow.parquet as pq

    assert set(pq.read_table(out).column("source").to_pylist()) == {
        f"sub/TCGA-{s:02d}.svs" for s in range(4)
    }
    res = _lamina(["--token", tok["read"], *export, "--out", str(tmp_path / "r.parquet")])
    assert res.exit_code == 2 and "FORBIDDEN" in res.output, res.output

    os.chmod(config, 0o644)  # a config file others can read is refused, not used
    res = _lamina(search, env={"LAMINA_CONFIG": str(config)})
    assert res.exit_code == 2 and "chmod 600" in res.output and "error:" in res.output

    from lamina.api.auth import TokenStore

    temp = TokenStore(world["home"]).add("cli-temp", "read")
    assert _lamina(["--token", temp, *search]).exit_code == 0
    res = _lamina(["--home", str(world["home"]), "token", "revoke", "cli-temp"])
    assert res.exit_code == 0, res.output
    res = _lamina(["--token", temp, *search])  # the running server re-reads the tokens file
    assert res.exit_code == 2 and "UNAUTHORIZED" in res.output


def test_audit_log_names_tokens_and_holds_no_vectors(server: str, served: dict[str, Any]) -> None:
    world = served
    from lamina.api.audit import FIELDS
    from lamina.api.client import Client, Forbidden

    vec = [round(float(v), 6) for v in np.random.default_rng(5).normal(size=16)]
    Client(server, token=world["tokens"]["read"]).search_vector(
        "syn", vec, k=3, encoder="synthetic@1"
    )
    with pytest.raises(Forbidden):
        Client(server, token=world["tokens"]["read"]).delete_cohort("c-env")
    Client(server, token=ENV_TOKEN).collections()
    log = world["home"] / "audit" / "audit.jsonl"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert all(tuple(line) == FIELDS for line in lines)
    searches = [x for x in lines if x["action"] == "search" and x["token"] == "t-read"]
    assert searches and searches[-1]["collection"] == "syn" and searches[-1]["status"] == 200
    assert re.fullmatch(r"\d+-[0-9a-f]+", searches[-1]["snapshot"] or ""), searches[-1]
    assert searches[-1]["time"].endswith("Z") and searches[-1]["remote"] == "127.0.0.1"
    denied = [x for x in lines if x["action"] == "cohort delete" and x["token"] == "t-read"]
    assert denied and denied[-1]["status"] == 403
    assert any(x["token"] == "env" and x["action"] == "collections" for x in lines)
    assert any(x["token"] == "t-write" and x["action"] == "cohort create" for x in lines)
    assert any(x["token"] == "-" and x["status"] == 401 for x in lines)
    assert any(x["action"] == "token revoke" and x["target"] == "cli-temp" for x in lines)
    for v in vec[:4]:
        assert str(v) not in text
    for secret in world["tokens"].values():
        assert secret not in text


def test_audit_rotation_across_threads(tmp_path: Path) -> None:
    from lamina.api.audit import AuditLog

    log = AuditLog(tmp_path, max_bytes=16 * 1024, backups=50)

    def work(t: int) -> None:
        for i in range(150):
            log.record(token=f"t{t}", action="search", collection="c", status=200, ms=float(i))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    files = log.files()
    assert len(files) > 5
    lines = [json.loads(x) for f in files for x in f.read_text().splitlines()]
    assert len(lines) == 8 * 150  # none lost or split by a rotation
    assert all(f.stat().st_size <= 16 * 1024 for f in files)
    assert sorted((x["token"], x["ms"]) for x in lines) == sorted(
        (f"t{t}", float(i)) for t in range(8) for i in range(150)
    )
    (tmp_path / "b").mkdir()
    small = AuditLog(tmp_path / "b", max_bytes=2048, backups=2)
    for i in range(100):
        small.record(token="x", action="search", status=200, ms=float(i))
    assert len(small.files()) == 3  # the oldest rotated files are dropped
    AuditLog(tmp_path / "no-home").record(token="x", action="search", status=404)
    assert not (tmp_path / "no-home").exists()  # no stray folders for a missing home


def test_audit_can_be_disabled(world: dict[str, Any], tmp_path: Path) -> None:
    from lamina.api.app import create_app

    app = create_app({"HOME": str(tmp_path), "API_TOKEN": None, "AUDIT": "off"})
    assert app.test_client().get("/api/v1/collections").status_code == 200
    assert not (tmp_path / "audit").exists()


# -- exposure ---------------------------------------------------------------------------------


def _json_requests(world: dict[str, Any]) -> list[tuple[str, str, Any]]:
    sid = world["sids"][0]
    return [
        ("GET", "/api/v1/health", None),
        ("GET", "/api/v1/encoders", None),
        ("GET", "/api/v1/collections", None),
        ("GET", "/api/v1/collections/syn", None),
        ("GET", "/api/v1/collections/nope", None),
        ("GET", "/api/v1/tiles/0?collection=syn", None),
        ("GET", "/api/v1/tiles/0", None),
        ("GET", "/api/v1/tiles/999999?collection=syn", None),
        ("GET", "/api/v1/tiles/0/image?collection=syn", None),
        ("GET", f"/api/v1/sources/{sid}/thumbnail?collection=syn", None),
        ("GET", "/api/v1/sources/nope/thumbnail?collection=syn", None),
        ("POST", "/api/v1/collections/syn/search", {"tile_id": 0, "k": 5}),
        ("POST", "/api/v1/collections/syn/search", {"tile_id": 0, "k": 3, "group_by": "slide"}),
        ("POST", "/api/v1/collections/syn/search", {"source_id": sid, "level": "slide"}),
        ("POST", "/api/v1/collections/syn/search",
         {"region": {"slide": sid, "x": 0, "y": 0, "w": 224, "h": 224}}),
        ("POST", "/api/v1/collections/syn/search",
         {"region": {"slide": "/etc/passwd", "x": 0, "y": 0, "w": 9, "h": 9}}),
        ("POST", "/api/v1/collections/nope/search", {"tile_id": 0}),
        ("POST", "/api/v1/collections/syn/search/batch", {"tile_ids": [0, 1]}),
        ("POST", "/api/v1/cohorts", {"name": "x1", "collection": "syn", "near_tile_ids": [0], "k": 4}),
        ("GET", "/api/v1/cohorts", None),
        ("GET", "/api/v1/cohorts/x1", None),
        ("GET", "/api/v1/cohorts/zz", None),
        ("POST", "/api/v1/exports", {"collection": "syn", "label_column": "label"}),
        ("POST", "/api/v1/probes", {"collection": "syn", "label_column": "label"}),
        ("GET", "/api/v1/jobs", None),
    ]  # fmt: skip


def _leaks(text: str, world: dict[str, Any]) -> list[str]:
    found = [m for m in ABS_PATH.findall(text)]
    for secret in (str(world["home"]), str(world["study"]), "secret-study"):
        if secret in text:
            found.append(secret)
    return found


def test_no_answer_shows_server_paths_or_other_collections(world: dict[str, Any]) -> None:
    app = _app(world)
    c = app.test_client()
    auth = bearer(world["tokens"]["admin"])
    seen: dict[int, int] = {}
    bad = []
    jobs = []
    for method, path, body in _json_requests(world):
        r = c.open(path, method=method, json=body, headers=auth)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        if r.mimetype == "application/json":
            if "collections" in path and path.endswith(("/collections", "collections/syn")):
                text = r.get_data(as_text=True).replace('"secret-study"', '""')  # listed by name
            else:
                text = r.get_data(as_text=True)
            if _leaks(text, world):
                bad.append((method, path, r.status_code, _leaks(text, world)[:3]))
            if r.status_code == 202:
                jobs.append(r.get_json()["job"]["id"])
    import io

    bad_upload = {"encoder_name": "external/x", "dim": "16", "file": (io.BytesIO(b"junk"), "e.h5")}
    r = c.post("/api/v1/collections/impx/import", data=bad_upload, headers=auth)
    assert r.status_code in (202, 422), r.get_data(as_text=True)
    if _leaks(r.get_data(as_text=True), world):
        bad.append(("POST", "import", r.status_code, _leaks(r.get_data(as_text=True), world)))
    if r.status_code == 202:
        jobs.append(r.get_json()["job"]["id"])
    for job in jobs:  # finished jobs' answers, results included
        deadline = time.monotonic() + 30
        while True:
            r = c.get(f"/api/v1/jobs/{job}", headers=auth)
            if r.get_json()["job"]["status"] not in ("queued", "running"):
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        if _leaks(r.get_data(as_text=True), world):
            bad.append(
                ("GET", f"/jobs/{job}", r.status_code, _leaks(r.get_data(as_text=True), world))
            )
    assert not bad, bad
    assert seen.get(200, 0) >= 12 and any(s >= 400 for s in seen), seen
    nope = c.get("/api/v1/collections/nope", headers=auth).get_json()
    assert nope["code"] == "COLLECTION_NOT_FOUND" and "syn" not in nope["error"]
    assert "zz" in c.get("/api/v1/cohorts/zz", headers=auth).get_json()["error"]
    assert "x1" not in c.get("/api/v1/cohorts/zz", headers=auth).get_json()["error"]


@pytest.mark.parametrize("mode", ["relative", "name", "hash", "none"])
def test_source_path_modes(world: dict[str, Any], mode: str) -> None:
    c = _app(world, SOURCE_PATHS=mode).test_client()
    auth = bearer(world["tokens"]["read"])
    hit = c.post("/api/v1/collections/syn/search", json={"tile_id": 0, "k": 1}, headers=auth)
    source = hit.get_json()["hits"][0]["source"]
    tile = c.get("/api/v1/tiles/0?collection=syn", headers=auth).get_json()["tile"]["source"]
    assert source == tile
    if mode == "relative":
        assert source == "sub/TCGA-00.svs"
    elif mode == "name":
        assert source == "TCGA-00.svs"
    elif mode == "hash":
        assert re.fullmatch(r"h-[0-9a-f]{24}", source)
        again = _app(world, SOURCE_PATHS="hash").test_client()  # stable for one server
        r = again.get("/api/v1/tiles/0?collection=syn", headers=auth)
        assert r.get_json()["tile"]["source"] == source
    else:
        assert source is None


def test_source_paths_per_scope(world: dict[str, Any]) -> None:
    c = _app(world, SOURCE_PATHS="read:none,write:name,admin:relative").test_client()
    body = {"tile_id": 0, "k": 1}
    got = {
        scope: c.post("/api/v1/collections/syn/search", json=body, headers=bearer(tok)).get_json()[
            "hits"
        ][0]["source"]
        for scope, tok in world["tokens"].items()
    }
    assert got == {"read": None, "write": "TCGA-00.svs", "admin": "sub/TCGA-00.svs"}
    from lamina.api.exposure import ExposureConfigError

    with pytest.raises(ExposureConfigError, match="LAMINA_SOURCE_PATHS"):
        _app(world, SOURCE_PATHS="full")


def _export_bytes(c: Any, headers: dict[str, str], body: dict[str, Any]) -> bytes:
    """The export file: answered directly, or made by a background job and then fetched."""
    r = c.post("/api/v1/exports", json=body, headers=headers)
    assert r.status_code in (200, 202), r.get_data(as_text=True)
    if r.status_code == 200:
        return bytes(r.get_data())
    job = r.get_json()["job"]["id"]
    deadline = time.monotonic() + 60
    while c.get(f"/api/v1/jobs/{job}", headers=headers).get_json()["job"]["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, "export job did not finish in 60 s"
        time.sleep(0.05)
    r = c.get(f"/api/v1/jobs/{job}/file", headers=headers)
    assert r.status_code == 200, r.get_data(as_text=True)
    return bytes(r.get_data())


def test_export_file_shows_sources_as_answers_do(world: dict[str, Any]) -> None:
    import io

    import pyarrow.parquet as pq

    c = _app(world, SOURCE_PATHS="write:hash").test_client()
    data = _export_bytes(
        c, bearer(world["tokens"]["write"]), {"collection": "syn", "label_column": "label"}
    )
    sources = set(pq.read_table(io.BytesIO(data)).column("source").to_pylist())
    assert len(sources) == 4 and all(re.fullmatch(r"h-[0-9a-f]{24}", s) for s in sources)
    assert str(world["study"]).encode() not in data
    c = _app(world).test_client()
    data = _export_bytes(
        c, bearer(world["tokens"]["admin"]), {"collection": "syn", "label_column": "label"}
    )
    sources = set(pq.read_table(io.BytesIO(data)).column("source").to_pylist())
    assert sources == {f"sub/TCGA-{s:02d}.svs" for s in range(4)}
