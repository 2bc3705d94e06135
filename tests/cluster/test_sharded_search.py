"""Sharded search on a real local Ray cluster equals single-process search on the same snapshot.

A Flat collection of 3000 clustered tiles (8 segments, 30 slides, 10 patients) on 2 shards:
200 random queries (vector or stored tile; filters; group by slide / patient / a metadata
column; exclude-same) and slide-level rankings compared with the single-process service; an
IVF collection checks that sharded recall is no worse; a commit after start becomes visible;
a shard process killed mid-query gives SHARD_UNAVAILABLE (or a partial answer naming the
shard), and a replica covers a killed peer; the HTTP API answers the same as one process.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lamina.search import SearchService, Store
from lamina.search.ann import update_index
from lamina.search.errors import ShardUnavailableError
from lamina.search.sharded import ShardedSearchService, assign_segments
from tests.search.clustered import clustered, write_collection

pytestmark = pytest.mark.slow
DIM = 24


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sharded")
    rng = np.random.default_rng(11)
    v, c = clustered(rng, 3000, DIM, 12)
    write_collection(root, "flat", v, c, segments=8, rng=rng)
    _copies(root, rng)
    v2, c2 = clustered(rng, 6000, DIM, 30)
    col = write_collection(root, "ivf", v2, c2, segments=4, rng=rng)
    col.set_index("IVF32", {"nprobe": 4})
    update_index(col)
    return root


COPIED = [0, 4, 8, 12, 16, 20, 24]  # slides also indexed from a second file, in a 9th segment
N_FLAT = 3000 + 20 * len(COPIED)


def _copies(root: Path, rng: np.random.Generator) -> None:
    """A segment holding 20 more tiles of several slides (the same source id under another
    path): their tiles lie in two segments, often on two shards."""
    col = Store(root).collection("flat")
    w = col.writer("copies")
    v, _ = clustered(rng, 20 * len(COPIED), DIM, 12)
    for j, slide in enumerate(COPIED):
        rows = [
            {
                "x": 224 * i,
                "y": 224,
                "level": 0,
                "size_px": 224,
                "tile_px": 224,
                "mpp": 0.5,
                "tissue_fraction": 1.0,
                "kind": "slide",
                "bucket": int(rng.integers(1000)),
                "cluster_group": i % 20,
                "patient_id": f"P{slide // 3}",
            }
            for i in range(20)
        ]
        src = {
            "source_id": f"{slide:064x}",
            "source": f"copy_{slide:05d}.svs",
            "kind": "slide",
            "width": 1,
            "height": 1,
            "mpp": 0.5,
            "properties": {},
        }
        w.add_source(src, rows, v[20 * j : 20 * (j + 1)])
    w.commit()


@pytest.fixture(scope="module")
def sharded(home: Path, ray_cluster: Any) -> Any:
    svc = ShardedSearchService(Store(home), ray_cluster.address, shards=2, cpus_per_shard=0)
    yield svc
    svc.close()


def _strip(doc: dict[str, Any]) -> dict[str, Any]:
    doc = dict(doc)
    doc.pop("plan", None)
    return doc


def test_assignment_is_balanced_and_stable(home: Path) -> None:
    segs = Store(home).collection("flat").snapshot().segments
    parts = assign_segments(segs, 2)
    assert sorted(s for p in parts for s in p) == sorted(s.segment_id for s in segs)
    sizes = {s.segment_id: s.n_tiles for s in segs}
    loads = [sum(sizes[s] for s in p) for p in parts]
    assert abs(loads[0] - loads[1]) <= max(sizes.values())
    # a new segment never moves an older one
    assert [
        p[: len(q)]
        for p, q in zip(assign_segments(segs, 2), assign_segments(segs[:-1], 2), strict=True)
    ] == assign_segments(segs[:-1], 2)


def test_200_random_queries_equal_single_process(home: Path, sharded: Any) -> None:
    single = SearchService(Store(home))
    rng = np.random.default_rng(5)
    view = single.view("flat")
    ids = view.all_tile_ids()
    filters_pool = [
        [],
        ["bucket<300"],
        ["cluster_group=3,4,5"],
        ["bucket>=900"],
        ["patient_id!=P2"],
        ["bucket<50", "cluster_group!=1"],
        ["patient_id~=p1,P2"],
    ]
    group_pool = [None, None, "slide", "patient", "cluster_group"]
    compared_groups = 0
    for i in range(200):
        k = int(rng.choice([1, 5, 10, 37]))
        filters = filters_pool[int(rng.integers(len(filters_pool)))]
        group_by = group_pool[int(rng.integers(len(group_pool)))]
        params = {"strategy": "exact"} if i % 7 == 0 else None
        if i % 2:
            tile = int(rng.choice(ids))
            excl = "patient_id" if i % 3 == 0 else None
            kw = {"filters": filters, "group_by": group_by, "exclude_same": excl, "params": params}
            a = single.search_tile("flat", tile, k, **kw)
            b = sharded.search_tile("flat", tile, k, **kw)
        else:
            q = rng.normal(size=DIM)
            a = single.search("flat", q, k, filters=filters, group_by=group_by, params=params)
            b = sharded.search("flat", q, k, filters=filters, group_by=group_by, params=params)
        assert _strip(b.to_dict()) == _strip(a.to_dict()), (i, filters, group_by)
        assert b.snapshot == a.snapshot
        if b.groups is None:
            assert len(b.hits) == min(k, a.plan["matched"])
        else:  # one hit per group: each group's best tile
            assert [h.tile_id for h in b.hits] == [g.hits[0].tile_id for g in b.groups]
            assert len(b.groups) <= k
        compared_groups += b.groups is not None
    assert compared_groups > 50
    # any metadata column is a group key: the same groups, scores and group sizes
    a = single.search("flat", np.ones(DIM), 5, group_by="cluster_group", filters=["bucket<700"])
    b = sharded.search("flat", np.ones(DIM), 5, group_by="cluster_group", filters=["bucket<700"])
    assert _strip(b.to_dict()) == _strip(a.to_dict()) and a.groups
    # an unknown column is refused by both, naming the columns
    with pytest.raises(Exception) as e1:
        single.search("flat", np.ones(DIM), 5, group_by="ward")
    with pytest.raises(type(e1.value)):
        sharded.search("flat", np.ones(DIM), 5, group_by="ward")


def test_slide_ranking_and_batch_equal_single_process(home: Path, sharded: Any) -> None:
    single = SearchService(Store(home))
    view = single.view("flat")
    rng = np.random.default_rng(8)
    ids = view.all_tile_ids()
    sources = sorted({r["source_id"] for r in view.rows_at(np.arange(0, view.n_tiles, 100))})
    # some copied slides have tiles on both shards
    cv = sharded.view("flat")
    shard_of = {seg: i for i, part in enumerate(cv.assignment) for seg in part}
    spans = [
        len(
            {
                shard_of[r.segment_id]
                for r in view.readers
                if f"{sl:064x}" in r.codes("source_id")[1]
            }
        )
        for sl in COPIED
    ]
    assert max(spans) == 2, spans
    spanning = f"{COPIED[spans.index(2)]:064x}"
    cases: list[dict[str, Any]] = [
        {"source_id": spanning, "k": 10},
        {"source_id": spanning, "k": 5, "top_m": 30, "filters": ["bucket<800"]},
        {"vectors": rng.normal(size=DIM), "k": 30, "top_m": 40},
        {"vectors": rng.normal(size=DIM), "k": 5},
        {"vectors": rng.normal(size=(3, DIM)), "k": 8, "filters": ["bucket<500"], "top_m": 3},
        {"tile_id": int(ids[17]), "k": 6, "exclude_same": "patient_id"},
        {"source_id": sources[4], "k": 7, "filters": ["cluster_group!=2"]},
        {"source_id": sources[9], "k": 40, "top_m": 50, "per_group": 5},
    ]
    for case in cases:
        a = single.rank_slides("flat", **case)
        b = sharded.rank_slides("flat", **case)
        assert _strip(b.to_dict()) == _strip(a.to_dict()), case
    q = rng.normal(size=(20, DIM))
    a_batch = single.search_batch("flat", q, 12, filters=["bucket<700"])
    b_batch = sharded.search_batch("flat", q, 12, filters=["bucket<700"])
    assert [_strip(r.to_dict()) for r in b_batch] == [_strip(r.to_dict()) for r in a_batch]


def _recall(svc: Any, queries: np.ndarray, truth: list[set[int]], k: int) -> float:
    got = svc.search_batch("ivf", queries, k)
    return float(
        np.mean([len({h.tile_id for h in r.hits} & t) / k for r, t in zip(got, truth, strict=True)])
    )


def test_ivf_recall_no_worse_than_single(home: Path, sharded: Any) -> None:
    single = SearchService(Store(home))
    rng = np.random.default_rng(9)
    q = rng.normal(size=(100, DIM)).astype(np.float32)
    exact = single.search_batch("ivf", q, 10, params={"strategy": "exact"})
    truth = [{h.tile_id for h in r.hits} for r in exact]
    one = _recall(single, q, truth, 10)
    many = _recall(sharded, q, truth, 10)
    assert single.search("ivf", q[0], 10).plan["strategy"] == "ann"
    assert "ann" in sharded.search("ivf", q[0], 10).plan["strategy"]
    assert many >= one - 1e-9, (many, one)
    assert one < 1.0 or many == 1.0


def test_commit_after_start_is_visible(tmp_path: Path, ray_cluster: Any) -> None:
    rng = np.random.default_rng(3)
    v, c = clustered(rng, 600, DIM, 6)
    write_collection(tmp_path, "live", v[:400], c[:400], segments=2, rng=rng)
    Store(tmp_path).collection("live").set_index(
        "IVF8", {"nprobe": 2}
    )  # not built: the server builds it
    svc = ShardedSearchService(Store(tmp_path), ray_cluster.address, shards=2, cpus_per_shard=0)
    try:
        before = svc.search("live", v[500], 3)
        col = Store(tmp_path).collection("live")
        w = col.writer("test")
        rows = [
            {
                "x": i,
                "y": 0,
                "level": 0,
                "size_px": 224,
                "tile_px": 224,
                "mpp": 0.5,
                "kind": "slide",
                "bucket": 1,
                "cluster_group": 0,
                "patient_id": "PX",
            }
            for i in range(200)
        ]
        src = {
            "source_id": "f" * 64,
            "source": "new.svs",
            "kind": "slide",
            "width": 1,
            "height": 1,
            "mpp": 0.5,
            "properties": {},
        }
        w.add_source(src, rows, v[400:])
        w.commit()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            after = svc.search("live", v[500], 3)
            if after.snapshot != before.snapshot:
                break
            time.sleep(0.2)
        assert after.snapshot == col.snapshot().id != before.snapshot
        assert after.hits[0].source_id == "f" * 64 and after.hits[0].score > 0.999
        assert (
            after.to_dict()["hits"]
            == SearchService(Store(tmp_path)).search("live", v[500], 3).to_dict()["hits"]
        )
        # the sharded server builds the IVF index of every segment, as a single server does
        ann = {"strategy": "ann"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            plan = svc.search("live", v[500], 3, params=ann).plan
            if plan["segments_indexed"] == 3 and plan["segments_exact"] == 0:
                break
            time.sleep(0.3)
        assert plan["segments_indexed"] == 3 and plan["strategy"] == "ann", plan
        single = SearchService(Store(tmp_path))
        for q in v[::40]:  # unfiltered IVF: the shards' candidates are the single process's
            a, b = single.search("live", q, 5, params=ann), svc.search("live", q, 5, params=ann)
            assert b.to_dict()["hits"] == a.to_dict()["hits"]
    finally:
        svc.close()


def _kill_mid_query(svc: Any, shard: int, run: Any) -> Any:
    """Start ``run()`` in a thread, SIGKILL the shard's process once it is busy; its outcome."""
    import ray

    actor = svc.shards[shard].actors[0]
    pid = ray.get(actor.ping.remote())
    out: dict[str, Any] = {}

    def go() -> None:
        try:
            out["result"] = run()
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            out["error"] = exc

    t = threading.Thread(target=go)
    t.start()
    time.sleep(0.4)
    os.kill(pid, signal.SIGKILL)
    t.join(60)
    return out


def test_shard_killed_mid_query(home: Path, ray_cluster: Any) -> None:
    svc = ShardedSearchService(Store(home), ray_cluster.address, shards=2, cpus_per_shard=0)
    try:
        q = np.random.default_rng(1).normal(size=(1000, DIM))
        svc.search_batch("flat", q[:2], 5)  # views prepared
        out = _kill_mid_query(svc, 1, lambda: svc.search_batch("flat", q, 200))
        assert isinstance(out.get("error"), ShardUnavailableError), out
        assert out["error"].missing == [1] and "shard" in str(out["error"])
        view = svc.view("flat")
        out = _kill_mid_query(svc, 0, lambda: svc.search_batch("flat", q, 200, partial=True))
        res = out["result"]
        assert res[0].missing_shards == [0] and res[0].to_dict()["partial"] is True
        dead = set(view.assignment[0])
        assert all(len(r.hits) == 200 for r in res)
        single = SearchService(Store(home)).view("flat")
        segs = {int(t): s for s in single.readers for t in s.tile_ids if s.segment_id in dead}
        assert not any(h.tile_id in segs for h in res[0].hits)
        # the killed actor is restarted; later queries are whole again
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                full = svc.search("flat", q[0], 10)
                break
            except ShardUnavailableError:
                time.sleep(0.5)
        assert not full.missing_shards and len(full.hits) == 10
    finally:
        svc.close()


def test_replica_serves_a_killed_peer(home: Path, ray_cluster: Any) -> None:
    svc = ShardedSearchService(
        Store(home), ray_cluster.address, shards=2, replicas=2, cpus_per_shard=0
    )
    try:
        q = np.random.default_rng(2).normal(size=(1000, DIM))
        want = [r.to_dict()["hits"] for r in SearchService(Store(home)).search_batch("flat", q, 50)]
        svc.search_batch("flat", q[:2], 5)
        svc.search_batch("flat", q[:2], 5)  # both replicas of each shard hold the view
        out = _kill_mid_query(svc, 0, lambda: svc.search_batch("flat", q, 50))
        assert "error" not in out, out
        assert [r.to_dict()["hits"] for r in out["result"]] == want
        assert not out["result"][0].missing_shards
    finally:
        svc.close()


def test_http_api_through_shards(home: Path, ray_cluster: Any) -> None:
    from lamina.api.app import create_app

    base = {"HOME": str(home), "AUDIT": "off", "API_TOKEN": None}
    app = create_app({**base, "CLUSTER": ray_cluster.address, "SHARDS": 2, "SHARD_CPUS": 0})
    plain = create_app(base)
    try:
        c, p = app.test_client(), plain.test_client()
        tile = int(SearchService(Store(home)).view("flat").all_tile_ids()[42])
        for body in (
            {"tile_id": tile, "k": 7, "filters": ["bucket<600"], "group_by": "patient"},
            {"vector": [1.0] * DIM, "k": 9, "partial": True},
            {"tile_id": tile, "k": 4, "level": "slide", "exclude_same": "patient_id"},
        ):
            a = p.post("/api/v1/collections/flat/search", json=body)
            b = c.post("/api/v1/collections/flat/search", json=body)
            assert a.status_code == b.status_code == 200, b.get_json()
            assert _strip(b.get_json()) == _strip(a.get_json())
        bad = c.post("/api/v1/collections/flat/search", json={"tile_id": tile, "partial": "maybe"})
        assert bad.status_code == 422 and bad.get_json()["code"] == "INVALID_QUERY"
        svc = app.extensions["lamina"].searcher
        import ray

        for s in svc.shards:
            ray.kill(s.actors[0], no_restart=True)
        down = c.post("/api/v1/collections/flat/search", json={"tile_id": tile, "k": 3})
        assert down.status_code == 503 and down.get_json()["code"] == "SHARD_UNAVAILABLE"
        vec = c.post(
            "/api/v1/collections/flat/search", json={"vector": [1.0] * DIM, "partial": True}
        )
        assert vec.status_code == 200 and vec.get_json()["missing_shards"] == [0, 1]
        assert vec.get_json()["hits"] == []
    finally:
        app.extensions["lamina"].searcher.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_serve_and_status_cluster(home: Path, ray_cluster: Any) -> None:
    """A real `lamina serve --cluster` process; `lamina search --url --partial` and
    `lamina status --cluster` against it."""
    import json
    import subprocess
    import sys
    import urllib.request

    lamina = [sys.executable, "-m", "lamina.api"]
    port = _free_port()
    env = ray_cluster.env(LAMINA_HOME=str(home), LAMINA_AUDIT="off")
    env.pop("LAMINA_API_TOKEN", None)
    cmd = [*lamina, "serve", "--port", str(port), "--cluster", ray_cluster.address]
    server = subprocess.Popen(
        [*cmd, "--shards", "2", "--shard-cpus", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            try:
                urllib.request.urlopen(f"{url}/api/v1/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        tile = int(SearchService(Store(home)).view("flat").all_tile_ids()[7])
        args = ["search", "--collection", "flat", "--tile-id", str(tile), "-k", "6", "--json"]
        group = ["--group-by", "slide", "--filter", "bucket<500"]
        remote = subprocess.run(
            [*lamina, "--url", url, *args, *group, "--partial"],
            env=env,
            capture_output=True,
            timeout=120,
        )
        assert remote.returncode == 0, remote.stderr.decode()
        local = SearchService(Store(home)).search_tile(
            "flat", tile, 6, group_by="slide", filters=["bucket<500"]
        )
        assert _strip(json.loads(remote.stdout)) == _strip(local.to_dict())
        status = subprocess.run(
            [*lamina, "status", "--cluster", ray_cluster.address, "--json"],
            env=env,
            capture_output=True,
            timeout=120,
        )
        assert status.returncode == 0, status.stderr.decode()
        doc = json.loads(status.stdout)
        mine = [r for r in doc["replicas"] if r["server"] == f"serve{port}-{server.pid}"]
        assert sorted((r["shard"], r["replica"]) for r in mine) == [(0, 0), (1, 0)]
        snap = Store(home).collection("flat").snapshot().id
        for r in mine:
            assert r["alive"] and r["rss_bytes"] > 0
            assert r["collections"]["flat"]["snapshot"] == snap
            assert r["collections"]["flat"]["heap_bytes"] > 0
        assert sum(r["collections"]["flat"]["tiles"] for r in mine) == N_FLAT
        from click.testing import CliRunner

        from lamina.api.cli import cli

        text = CliRunner().invoke(cli, ["status", "--cluster", ray_cluster.address])
        assert text.exit_code == 0, text.output
        assert f"server serve{port}-{server.pid} shard 1 replica 0: pid" in text.output
    finally:
        server.terminate()
        server.wait(timeout=30)
