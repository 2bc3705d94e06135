"""Two real ``lamina serve`` processes on one home create cohorts at once (threads against
both, same and different names) while the local CLI creates one too: no CATALOG_LOCKED,
nothing lost, version numbers unique and dense per name, every member list what its
definition selects, and both servers list the same cohorts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
THREADS_PER_SERVER = 2
CREATES_PER_THREAD = 50  # 2 servers x 2 threads x 50 = 200 creates


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _collection(home: Path) -> None:
    """Collection ``syn``: 4 sources x 25 tiles of hand-made 16-d vectors (tile ids 0..99)."""
    from lamina.search import Store

    rng = np.random.default_rng(3)
    col = Store(home).open_or_create(
        "syn", encoder="synthetic/v1", fingerprint="synthetic@1", embed_dim=16, tile_px=224, mpp=0.5
    )
    w = col.writer("synthetic")
    for s in range(4):
        vecs = rng.normal(size=(25, 16))
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        tiles = [
            {"kind": "tile", "x": 224 * i, "y": 0, "level": 0, "size_px": 224, "tile_px": 224,
             "mpp": 0.5, "tissue_fraction": 1.0, "patient_id": f"P{s}"}
            for i in range(25)
        ]  # fmt: skip
        src = {"source_id": f"s{s}", "source": f"s{s}.svs", "kind": "slide", "width": 5600}
        w.add_source(src | {"height": 224, "mpp": 0.5}, tiles, vecs.astype(np.float32))
    w.commit()


@pytest.fixture()
def servers(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    home = tmp_path / "home"
    _collection(home)
    env = {k: v for k, v in os.environ.items() if k not in ("LAMINA_API_TOKEN", "LAMINA_URL")}
    procs, urls = [], []
    try:
        for _ in range(2):
            port = _free_port()
            cmd = [
                sys.executable,
                "-m",
                "lamina.api",
                "--home",
                str(home),
                "serve",
                "--port",
                str(port),
            ]
            procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
            urls.append(f"http://127.0.0.1:{port}")
        from lamina.api.client import Client, LaminaError

        deadline = time.monotonic() + 60
        for proc, url in zip(procs, urls, strict=True):
            while True:
                try:
                    Client(url, timeout=2).health()
                    break
                except LaminaError:
                    assert proc.poll() is None, proc.communicate()[1][-2000:]
                    assert time.monotonic() < deadline, "lamina serve did not start in 60 s"
                    time.sleep(0.2)
        yield home, urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


@pytest.mark.slow  # two servers, 200 creates over HTTP and a CLI command: ~10 s on 2 cores
def test_two_servers_and_the_cli_create_cohorts_at_once(
    servers: tuple[Path, list[str]],
) -> None:
    from lamina.api.client import Client

    home, urls = servers
    made: list[tuple[str, int, int]] = []  # (name, version, j)
    errors: list[str] = []
    lock = threading.Lock()

    def worker(server: int, thread: int) -> None:
        client = Client(urls[server], timeout=60)
        for j in range(CREATES_PER_THREAD):
            name = "shared" if j % 2 == 0 else f"only{server}"
            try:
                got = client.create_cohort(name, "syn", filter={"tile_id": {"lte": j}}).data
                version = int(got["version"])
            except Exception as exc:  # noqa: BLE001 - every failure is reported below
                with lock:
                    errors.append(f"server {server} thread {thread} create {j}: {exc}")
                continue
            with lock:
                made.append((name, version, j))

    threads = [
        threading.Thread(target=worker, args=(s, t))
        for s in range(2)
        for t in range(THREADS_PER_SERVER)
    ]
    for t in threads:
        t.start()
    # the local CLI writes the same catalog while both servers run
    cli = subprocess.run(
        [sys.executable, "-m", "lamina.api", "--home", str(home), "cohort", "create", "cli-made",
         "--collection", "syn", "--filter", "tile_id<=4", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "LAMINA_URL"},
    )  # fmt: skip
    for t in threads:
        t.join(timeout=300)
    assert cli.returncode == 0 and "CATALOG_LOCKED" not in cli.stderr, cli.stderr[-2000:]
    assert json.loads(cli.stdout)["cohort"]["version"] == 1
    assert errors == []
    total = 2 * THREADS_PER_SERVER * CREATES_PER_THREAD
    assert len(made) == total
    assert len({(n, v) for n, v, _ in made}) == total  # no version number taken twice

    from lamina.search.catalog import Catalog

    with Catalog(home) as cat:
        for name in ("shared", "only0", "only1"):
            mine = sorted((v, j) for n, v, j in made if n == name)
            assert cat.versions(name) == [v for v, _ in mine] == list(range(1, len(mine) + 1))
            for v, j in mine:  # every member list intact: exactly what its filter selects
                ids, _ = cat.members(name, v)
                assert ids == list(range(j + 1)), (name, v, j)
                assert cat.cohort(name, v)["definition"]["filter"] == {"tile_id": {"lte": j}}
        listed = {c["name"]: c["n_versions"] for c in cat.cohorts()}
    for url in urls:  # both servers see every cohort, the CLI's too
        doc: Any = Client(url).cohorts()
        assert {c.data["name"]: c.data["n_versions"] for c in doc} == listed
    assert listed["cli-made"] == 1 and listed["shared"] == sum(n == "shared" for n, _, _ in made)
