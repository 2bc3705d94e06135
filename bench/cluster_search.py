"""Sharded search benchmark: one process vs 2 and 4 shards on Ray, same snapshot, same queries.

    python -m bench.cluster_search [--n 1000000] [--dim 128] [--queries 200] [--address ADDR]

Data: ``bench.scale_data`` synthetic tiles (clustered like tile embeddings; slides, patients,
labels), written as one collection of ``n / 50,000`` segments through the store's public API
(cached under ``--home`` and reused). Queries are held-out tiles. For the Flat index (exact) and
then ``IVF<sqrt(n)>,Flat`` (nprobe 16), unfiltered and ~10 %-filtered:

- one process: ``SearchService.search`` per query (single queries, perf_counter, ms);
- ``S`` shards (2, 4; one replica each, as Ray actors on this machine): the coordinator's
  ``ShardedSearchService.search`` per query;
- recall@10 of each against brute-force ground truth, and whether every sharded answer
  equals the one-process answer (hits, scores, order);
- fan-out overhead per query = (coordinator wall time - the slowest shard's own time for the
  call, measured inside the shard: planner + hit rows) - the one process's median time outside
  its planner (listing, checks, hit rows: work the coordinator does too). What remains is
  serialisation, RPC, scheduling and the merge. p50 / p99 of latencies and of the overhead;
  the target is overhead p50 <= 3 ms;
- Ray's own floor: an empty call to every shard at once (``ray_ping_fanout_ms``).

Without ``--address`` a local Ray instance is started in this process (all shards on this
machine, competing for its cores with the coordinator). Results go to
bench/results/cluster.json under ``"search"`` (the file is read, updated and written back).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.scale_data import exact_topk, load_or_generate, make_filters, write_collection

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "cluster.json"
K = 10


def _log(msg: str) -> None:
    print(f"[cluster_search {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {
        "p50": round(float(np.percentile(a, 50)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
    }


def _collection(home: Path, cache: Path, data: Any, seed: int) -> tuple[np.ndarray, float]:
    """(tile ids in row order, write seconds or 0 when reused); never compacted, so the
    collection keeps n / 50,000 segments to spread over shards."""
    from lamina.search.errors import CollectionNotFoundError
    from lamina.search.store import Store

    name = "cluster_bench"
    ids_path = cache / f"{name}_n{data.n}_d{data.vectors.shape[1]}.tile_ids.npy"
    try:
        col = Store(home).collection(name)
        if ids_path.is_file() and col.snapshot().n_tiles == data.n:
            return np.load(ids_path), 0.0
    except CollectionNotFoundError:
        pass
    import shutil

    shutil.rmtree(home / "collections" / name, ignore_errors=True)
    t0 = time.perf_counter()
    ids = write_collection(home, name, data, seed=seed, progress=lambda d: _log(f"written {d:,}"))
    np.save(ids_path, ids)
    return ids, time.perf_counter() - t0


def _measure(
    svc: Any, queries: np.ndarray, filters: dict[str, Any] | None, params: dict[str, Any] | None
) -> tuple[list[list[int]], list[list[float]], list[float], list[float]]:
    """(tile ids per query, scores per query, wall ms per query, fan-out overhead ms)."""
    ids, scores, wall, over = [], [], [], []
    svc.search("cluster_bench", queries[0], K, filter_json=filters, params=params)  # warm
    for q in queries:
        t0 = time.perf_counter()
        res = svc.search("cluster_bench", q, K, filter_json=filters, params=params)
        ms = (time.perf_counter() - t0) * 1000
        ids.append([h.tile_id for h in res.hits])
        scores.append([h.score for h in res.hits])
        wall.append(ms)
        stages = res.plan.get("ms") or {}
        if "shard" in stages:  # sharded: the coordinator's time outside the slowest shard
            over.append(ms - float(stages["shard"]))
        else:  # one process: its time outside the planner (listing, checks, hit rows)
            over.append(ms - sum(float(stages.get(k, 0)) for k in ("filter", "search", "merge")))
    return ids, scores, wall, over


def _recall(got: list[list[int]], truth: np.ndarray, ids: np.ndarray) -> float:
    out = []
    for g, t in zip(got, truth, strict=True):
        want = {int(ids[r]) for r in t if r >= 0}
        out.append(len(want & set(g)) / max(len(want), 1))
    return round(float(np.mean(out)), 4)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure (see the module doc); returns the ``"search"`` record and writes it."""
    import ray

    from lamina.search import SearchService, Store
    from lamina.search.ann import update_index
    from lamina.search.sharded import ShardedSearchService

    n = int(getattr(args, "n", 1_000_000))
    dim = int(getattr(args, "dim", 128))
    nq = int(getattr(args, "queries", 200))
    seed = int(getattr(args, "seed", 0))
    shard_counts = [int(s) for s in str(getattr(args, "shards", "2,4")).split(",")]
    home = Path(getattr(args, "home", None) or "/tmp/lamina-cluster-bench")
    cache = home / "bench_cache"
    cache.mkdir(parents=True, exist_ok=True)
    _log(f"data: {n:,} x {dim}")
    data = load_or_generate(cache, n, dim, nq, seed)
    ids, write_s = _collection(home, cache, data, seed)
    spec = next(f for f in make_filters(data) if f.name == "sel_10pct")
    filters = {"unfiltered": (None, None), spec.name: (spec.lamina, spec.mask)}
    truth = dict(
        zip(
            filters,
            exact_topk(data.vectors, data.queries, [m for _, m in filters.values()], K),
            strict=True,
        )
    )
    address = getattr(args, "address", None) or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, namespace="lamina", log_to_driver=False)
        else:
            ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    store = Store(home)
    col = store.collection("cluster_bench")
    record: dict[str, Any] = {
        "what": "single top-10 queries: one process vs S shards (Ray actors), same snapshot",
        "units": "ms per query (perf_counter at the caller); recall@10 vs brute force",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "ray": ray.__version__,
            "git_commit": _git(),
            "note": "shards, coordinator and other jobs share these cores",
        },
        "config": {
            "n": n,
            "dim": dim,
            "queries": nq,
            "segments": len(col.segments()),
            "address": address or "local (ray.init in this process)",
            "collection_reused": write_s == 0.0,
            "write_seconds": round(write_s, 1) if write_s else None,
        },
        "indexes": {},
    }
    sharded = {
        s: ShardedSearchService(store, address, shards=s, cpus_per_shard=0) for s in shard_counts
    }
    try:
        for index in ("Flat", f"IVF{int(np.sqrt(n))},Flat"):
            if index != "Flat":
                col.set_index(index, {"nprobe": 16})
                t0 = time.perf_counter()
                update_index(col)
                record["config"]["ivf_build_seconds"] = round(time.perf_counter() - t0, 1)
            single = SearchService(Store(home))
            per_index: dict[str, Any] = {}
            for fname, (exprs, _) in filters.items():
                _log(f"{index} / {fname}: one process")
                base_ids, base_scores, base_wall, outside = _measure(
                    single, data.queries, exprs, None
                )
                base_outside = float(np.median(outside))
                entry: dict[str, Any] = {
                    "one_process": {
                        **_pct(base_wall),
                        "recall_at_10": _recall(base_ids, truth[fname], ids),
                        "outside_planner_ms": _pct(outside),
                    }
                }
                for s, svc in sharded.items():
                    _log(f"{index} / {fname}: {s} shards")
                    got_ids, got_scores, wall, over = _measure(svc, data.queries, exprs, None)
                    entry[f"shards_{s}"] = {
                        "ray_ping_fanout_ms": _ping(svc),
                        **_pct(wall),
                        "recall_at_10": _recall(got_ids, truth[fname], ids),
                        "identical_to_one_process": got_ids == base_ids
                        and got_scores == base_scores,
                        "coordinator_outside_shards_ms": _pct(over),
                        "fanout_overhead_ms": _pct([o - base_outside for o in over]),
                        "resident_mb_per_shard": _rss(svc),
                    }
                per_index[fname] = entry
            record["indexes"][index] = per_index
    finally:
        for svc in sharded.values():
            svc.close()
        col.set_index("Flat")
    overheads = [
        e[f"shards_{s}"]["fanout_overhead_ms"]["p50"]
        for per in record["indexes"].values()
        for e in per.values()
        for s in shard_counts
    ]
    record["fanout_overhead_p50_max_ms"] = max(overheads)
    record["fanout_overhead_target_met"] = max(overheads) <= 3.0
    _write(record)
    return record


def _ping(svc: Any) -> dict[str, float]:
    """Round trip of an empty call to every shard at once: Ray's own floor for a fan-out."""
    import ray

    actors = [s.actors[0] for s in svc.shards]
    ray.get([a.ping.remote() for a in actors])
    times = []
    for _ in range(100):
        t0 = time.perf_counter()
        ray.get([a.ping.remote() for a in actors])
        times.append((time.perf_counter() - t0) * 1000)
    return _pct(times)


def _rss(svc: Any) -> list[float]:
    return [round(r.get("rss_bytes", 0) / 2**20, 1) for r in svc.cluster_status()["replicas"]]


def _git() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, timeout=10
        )
        return out.stdout.decode().strip()
    except OSError:
        return ""


def _write(record: dict[str, Any]) -> None:
    doc: dict[str, Any] = {}
    if RESULTS.is_file():
        try:
            doc = json.loads(RESULTS.read_text())
        except ValueError:
            doc = {}
    doc["search"] = record
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", default="2,4", help="shard counts, comma-separated")
    ap.add_argument("--home", default=None, help="home to write and reuse the collection in")
    ap.add_argument("--address", default=None, help="Ray address (default: a local instance)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    print(json.dumps(run(ap.parse_args()), indent=2))


if __name__ == "__main__":
    main()
