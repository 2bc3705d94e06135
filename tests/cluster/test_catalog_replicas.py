"""Two ``lamina serve --cluster`` coordinators (searches on shard actors of one real local Ray
cluster) on one home create cohorts at once while the local CLI creates one: nothing lost,
version numbers unique and dense, member lists intact, both servers list the same cohorts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CREATES = 20  # per server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _collection(home: Path) -> None:
    """Collection ``syn``: 2 sources x 30 tiles of hand-made 16-d vectors (tile ids 0..59)."""
    from lamina.search import Store

    rng = np.random.default_rng(5)
    col = Store(home).open_or_create(
        "syn", encoder="synthetic/v1", fingerprint="synthetic@1", embed_dim=16, tile_px=224, mpp=0.5
    )
    for s in range(2):  # one segment per source: two shards have work
        w = col.writer("synthetic")
        vecs = rng.normal(size=(30, 16))
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        tiles = [
            {"kind": "tile", "x": 224 * i, "y": 0, "level": 0, "size_px": 224, "tile_px": 224,
             "mpp": 0.5, "tissue_fraction": 1.0, "patient_id": f"P{s}"}
            for i in range(30)
        ]  # fmt: skip
        src = {"source_id": f"s{s}", "source": f"s{s}.svs", "kind": "slide", "width": 6720}
        w.add_source(src | {"height": 224, "mpp": 0.5}, tiles, vecs.astype(np.float32))
        w.commit()


@pytest.mark.slow  # two sharded servers on the shared cluster, 40 creates: ~30 s on 2 cores
def test_two_cluster_servers_and_the_cli_create_cohorts_at_once(
    tmp_path: Path, ray_cluster: Any
) -> None:
    from lamina.api.client import Client

    home = tmp_path / "home"
    _collection(home)
    env = ray_cluster.env(LAMINA_HOME=str(home), LAMINA_AUDIT="off")
    env.pop("LAMINA_API_TOKEN", None)
    env.pop("LAMINA_URL", None)
    procs, urls = [], []
    try:
        for _ in range(2):
            port = _free_port()
            cmd = [sys.executable, "-m", "lamina.api", "serve", "--port", str(port)]
            cmd += ["--cluster", ray_cluster.address, "--shards", "2", "--shard-cpus", "0"]
            procs.append(
                subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            )
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        for proc, url in zip(procs, urls, strict=True):
            while True:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
                try:
                    urllib.request.urlopen(f"{url}/api/v1/health", timeout=2)
                    break
                except OSError:
                    assert time.monotonic() < deadline, "lamina serve --cluster did not start"
                    time.sleep(0.5)
            hit = Client(url, timeout=120).search_tile("syn", 3, k=5)  # sharded: both shards
            assert hit.raw["plan"]["shards"] == 2, hit.raw["plan"]

        made: list[tuple[str, int, int]] = []
        errors: list[str] = []
        lock = threading.Lock()

        def worker(server: int) -> None:
            client = Client(urls[server], timeout=120)
            for j in range(CREATES):
                name = "shared" if j % 2 == 0 else f"only{server}"
                try:
                    got = client.create_cohort(name, "syn", filter={"tile_id": {"lte": j}}).data
                    version = int(got["version"])
                except Exception as exc:  # noqa: BLE001 - every failure is reported below
                    with lock:
                        errors.append(f"server {server} create {j}: {exc}")
                    continue
                with lock:
                    made.append((name, version, j))

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(2)]
        for t in threads:
            t.start()
        cli = subprocess.run(
            [sys.executable, "-m", "lamina.api", "cohort", "create", "cli-made", "--collection", "syn",
             "--filter", "tile_id<=4", "--json"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        for t in threads:
            t.join(timeout=300)
        assert cli.returncode == 0, cli.stderr[-2000:]
        assert json.loads(cli.stdout)["cohort"]["version"] == 1
        assert errors == [] and len(made) == 2 * CREATES
        assert len({(n, v) for n, v, _ in made}) == len(made)

        from lamina.search.catalog import Catalog

        with Catalog(home) as cat:
            for name in ("shared", "only0", "only1"):
                mine = sorted((v, j) for n, v, j in made if n == name)
                assert cat.versions(name) == [v for v, _ in mine] == list(range(1, len(mine) + 1))
                for v, j in mine:
                    assert cat.members(name, v)[0] == list(range(j + 1)), (name, v, j)
            listed = {c["name"]: c["n_versions"] for c in cat.cohorts()}
        for url in urls:
            assert {c.data["name"]: c.data["n_versions"] for c in Client(url).cohorts()} == listed
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
