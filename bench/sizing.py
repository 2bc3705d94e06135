"""Sizing: resident memory and disk per vector of a served collection, measured.

    python -m bench.sizing [--sizes 200000,1000000] [--dim 384] [--queries 40] [--home DIR]

For each size, the synthetic tile collection of the search-at-scale benchmark
(``bench/scale_data.py``: clustered 384-d unit vectors, slides of 100-2,000 tiles, four metadata
columns) is written twice through the store (float32 and float16 vectors, compacted as
``lamina index`` leaves it); then each layout is set as the collection's index factory, its index
built, and served by a fresh process (``--child``) that opens the collection and answers
``--queries`` held-out queries (k = 10, no filter: the planner uses the index when there is one).

Layouts: Flat float32, Flat float16 (exact scans of the memory-mapped vectors), IVF-Flat
(``IVF1024``: one int32 list id per vector, lists scanned from the vectors), IVF-PQ
(``IVF1024,PQ48``: 48 bytes of codes plus an id per vector in memory, candidates re-ranked
exactly from the vectors), and IVF-PQ over float16 vectors.

Measured, in the serving process, from ``/proc/self/smaps_rollup`` before opening the collection
(after importing the search stack) and after the queries: the resident set split into anonymous
memory (heap: metadata columns, id maps, ANN codes and lists) and file-backed pages (the
memory-mapped vectors and index files the queries touched). Per vector = growth / n. Disk per
vector = the snapshot's segment files plus the active index version / n. ``vectors_per_gib``
divides 2**30 bytes by those. Flat needs its vectors resident to scan at memory speed, so its
RAM figure is the whole file-backed part; IVF-PQ needs its codes resident and touches only the
re-ranked candidates' vectors (their resident share grows with the query mix, up to the vector
file). Results go to ``bench/results/sizing.json`` with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "sizing.json"
GIB = 2**30
K = 10
LAYOUTS = (  # (key, vector dtype, index factory)
    ("flat_f32", "float32", "Flat"),
    ("flat_f16", "float16", "Flat"),
    ("ivf_flat_f32", "float32", "IVF1024"),
    ("ivf_pq48_f32", "float32", "IVF1024,PQ48"),
    ("ivf_pq48_f16", "float16", "IVF1024,PQ48"),
)


def log(msg: str) -> None:
    print(f"[sizing {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def smaps() -> dict[str, int]:
    """Rss and Anonymous of this process in bytes (``/proc/self/smaps_rollup``)."""
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in ("Rss:", "Anonymous:"):
            out[parts[0].rstrip(":").lower()] = int(parts[1]) * 1024
    return out


def child(home: Path, name: str, queries_path: Path) -> dict[str, Any]:
    """Serve ``name`` in this fresh process: open it, answer the queries, measure growth."""
    import faiss  # noqa: F401 - the search stack, imported before the baseline
    import pyarrow  # noqa: F401

    from lamina.search.service import SearchService
    from lamina.search.store import Store

    queries = np.load(queries_path)
    before = smaps()
    svc = SearchService(Store(home))
    t0 = time.perf_counter()
    plans = set()
    for q in queries:
        res = svc.search(name, q, k=K)
        plans.add(str(res.plan.get("method") or res.plan.get("strategy") or res.plan))
    seconds = time.perf_counter() - t0
    after = smaps()
    view = svc.view(name)
    return {
        "baseline_rss_bytes": before["rss"],
        "rss_growth_bytes": after["rss"] - before["rss"],
        "anon_growth_bytes": after["anonymous"] - before["anonymous"],
        "file_growth_bytes": (after["rss"] - after["anonymous"])
        - (before["rss"] - before["anonymous"]),
        "view_memory_bytes": int(view.memory_bytes()),
        "plans": sorted(plans),
        "query_ms_mean": round(seconds / len(queries) * 1000, 2),
    }


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def disk_of(home: Path, name: str) -> dict[str, int]:
    """Bytes of the snapshot's segments (vectors, and the rest) and of the active index."""
    from lamina.search.ann import AnnIndex
    from lamina.search.store import Store

    col = Store(home).collection(name)
    segs = col.snapshot().segments
    seg_bytes = sum(_tree_bytes(s.path) for s in segs)
    vec_bytes = sum(int(s.vector_bytes) for s in segs)
    ann = AnnIndex.load(col)
    idx = _tree_bytes(ann.dir) if ann is not None else 0
    return {"segment_bytes": seg_bytes, "vector_bytes": vec_bytes, "index_bytes": idx}


def measure_layout(
    home: Path, name: str, factory: str, queries_path: Path, n: int
) -> dict[str, Any]:
    from lamina.search.ann import update_index
    from lamina.search.store import Store

    col = Store(home).collection(name)
    col.set_index_factory(factory)
    t0 = time.perf_counter()
    build = update_index(col) if factory != "Flat" else {}
    build_s = time.perf_counter() - t0
    proc = subprocess.run(
        [sys.executable, "-m", "bench.sizing", "--child", str(home), name, str(queries_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"serving {name} ({factory}) failed: {proc.stderr[-1500:]}")
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    disk = disk_of(home, name)
    disk_total = disk["segment_bytes"] + disk["index_bytes"]
    ram = served["rss_growth_bytes"]
    return {
        "n": n,
        "factory": factory,
        "index_build_seconds": round(build_s, 1) if build else None,
        **served,
        **disk,
        "ram_bytes_per_vector": round(ram / n, 1),
        "anon_bytes_per_vector": round(served["anon_growth_bytes"] / n, 1),
        "file_bytes_per_vector": round(served["file_growth_bytes"] / n, 1),
        "disk_bytes_per_vector": round(disk_total / n, 1),
        "vectors_per_gib_ram": int(GIB / max(ram / n, 1e-9)),
        "vectors_per_gib_disk": int(GIB / (disk_total / n)),
    }


def machine() -> dict[str, Any]:
    import faiss

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem / GIB, 1),
        "os": platform.platform(),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "faiss-cpu": getattr(faiss, "__version__", "?"),
        },
    }


def run(
    sizes: list[int], dim: int, n_queries: int, home: Path, layouts: list[str]
) -> dict[str, Any]:
    from bench.scale_data import load_or_generate
    from bench.scale_lamina import ensure_collection

    cache = home / "bench_cache"
    cache.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {
        "command": "python -m bench.sizing " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "dim": dim,
        "queries": n_queries,
        "k": K,
        "results": {},
    }
    for n in sizes:
        log(f"n = {n:,}: data")
        data = load_or_generate(cache, n, dim, n_queries, seed=0)
        qpath = cache / f"queries_n{n}.npy"
        np.save(qpath, np.asarray(data.queries, np.float32))
        for dtype in sorted({d for key, d, _ in LAYOUTS if key in layouts}):
            log(f"n = {n:,}: writing the {dtype} collection")
            ensure_collection(home, cache, f"s{n}_{dtype}", data, 0, dtype)
        rows = {}
        for key, dtype, factory in (lay for lay in LAYOUTS if lay[0] in layouts):
            log(f"n = {n:,}: {key} ({factory}, {dtype})")
            rec = measure_layout(home, f"s{n}_{dtype}", factory, qpath, n)
            rec["vector_dtype"] = dtype
            rows[key] = rec
            log(
                f"  ram {rec['ram_bytes_per_vector']} B/vector (anon "
                f"{rec['anon_bytes_per_vector']}, file {rec['file_bytes_per_vector']}), disk "
                f"{rec['disk_bytes_per_vector']} B/vector; plans {rec['plans']}"
            )
        out["results"][str(n)] = rows
        del data
    return out


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` over ``old`` (results by size and layout), with the marginal cost per vector of
    every layout measured at two or more sizes: growth between the smallest and the largest
    size / their difference in vectors (fixed costs of serving cancel out)."""
    out = dict(new)
    results: dict[str, dict[str, Any]] = {}
    for src in (old.get("results", {}), new["results"]):
        for n, rows in src.items():
            results.setdefault(n, {}).update(rows)
    out["results"] = dict(sorted(results.items(), key=lambda kv: int(kv[0])))
    out["runs"] = old.get("runs", []) + [new["command"]]
    marginal = {}
    for key, _, _ in LAYOUTS:
        have = sorted((int(n), rows[key]) for n, rows in results.items() if key in rows)
        if len(have) < 2:
            continue
        (n0, a), (n1, b) = have[0], have[-1]
        per = {
            f: round((b[f] - a[f]) / (n1 - n0), 1)
            for f in ("rss_growth_bytes", "anon_growth_bytes", "file_growth_bytes")
        }
        disk = b["segment_bytes"] + b["index_bytes"] - a["segment_bytes"] - a["index_bytes"]
        per["disk_bytes"] = round(disk / (n1 - n0), 1)
        per["vectors_per_gib_ram"] = int(GIB / max(per["rss_growth_bytes"], 1e-9))
        per["vectors_per_gib_disk"] = int(GIB / per["disk_bytes"])
        marginal[key] = {"sizes": [n0, n1], **per}
    out["marginal_per_vector"] = marginal
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="200000,1000000")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=40)
    p.add_argument("--home", default=None, help="home to write and reuse (default: a temp dir)")
    p.add_argument("--out", default=str(RESULTS), help="merged into an existing file")
    p.add_argument("--layouts", default=",".join(k for k, _, _ in LAYOUTS))
    p.add_argument("--child", nargs=3, metavar=("HOME", "NAME", "QUERIES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.child[1], Path(args.child[2]))))
        return
    own = args.home is None
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="lamina-sizing-"))
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        layouts = args.layouts.split(",")
        unknown = set(layouts) - {k for k, _, _ in LAYOUTS}
        if unknown:
            p.error(f"unknown layouts {sorted(unknown)}; known: {[k for k, _, _ in LAYOUTS]}")
        result = run(sizes, args.dim, args.queries, home, layouts)
    finally:
        if own:
            shutil.rmtree(home, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.is_file() else {}
    out.write_text(json.dumps(merged(old, result), indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
