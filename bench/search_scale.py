"""Search at pathology scale: Lamina against raw FAISS and LanceDB on the same data and queries.

    python -m bench.search_scale [--n 1000000] [--dim 384] [--queries 200] [--home DIR]
                                 [--skip-lancedb] [--quick] [--out bench/results/search_scale.json]

Data (bench/scale_data.py): seeded, clustered unit vectors shaped like tile embeddings
(~100 tissue types, slides of 100-2,000 tiles, 1-3 slides per patient, 20 skewed hospitals, a
label per tile correlated with the tissue type, a scan year per slide), written as a Lamina
collection through the store's public API (a segment every 50,000 tiles). Queries are held-out
tiles generated the same way. Filters: unfiltered, ~1 % (label AND scan_year >= Y), ~10 %
(a set of hospitals), ~50 % (a set of labels) and all but one patient; the measured match
fraction is reported. Ground truth: exact filtered top-10 by inner product (brute force numpy).

Systems, in one process, one after the other (2 CPU cores shared, nothing else running):

- ``faiss_flat``: IndexFlatIP; filters through IDSelectorBitmap (exact);
- ``faiss_ivf``: IndexIVFFlat (nlist 4096 at 1M, else ~4 sqrt(n)), trained on a seeded sample of
  at most ``--train-per-list`` (64) x nlist vectors; nprobe the smallest of 1..128 reaching
  unfiltered recall@10 >= 0.95; filters through IDSelectorBitmap at that nprobe;
- ``lancedb``: embedded LanceDB, IVF_PQ (sqrt(n) partitions, dim/8 sub-vectors, dot), scalar
  indexes on the filter columns, ``where(..., prefilter=True)``; nprobes tuned like FAISS's on
  unfiltered queries at refine_factor 10, the refine_factor raised (20, 50, 100) only where
  recall plateaus below 0.95 (PQ-limited);
- ``lamina_flat`` / ``lamina_ivf``: ``SearchService.search`` on the collection with its Flat
  index, then with ``IVF<nlist>,Flat`` (per-request ``params={"nprobe": ...}`` and the answer's
  ``plan`` used where the service has them).

Metrics per system x filter: recall@10 against the exact answer, exactly-k fraction (queries
answered with 10 hits), filter violations (hits that do not match), p50/p99 latency of single
queries in milliseconds (time.perf_counter around one call, queries one at a time after 5
warm-up queries) and batch QPS (all queries in one call, where the system has one).

Lamina stages, each timed and isolated (a failure is recorded and the rest runs): index build
(seconds), cold start (new process to first answer, seconds; page cache warm) and resident memory
(VmRSS / VmHWM of that process, MB, against the vector bytes), commit-to-visible latency of a
100-tile commit made by another process (seconds, at ~250k and at n, on hard-linked clones of
the collection), slide-level search (ms per query), a labelled export of every row (seconds),
a 100k-member cohort (seconds). Results: one JSON (machine, versions, data, filters, a row per
system x filter, stages) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from bench.scale_data import (
    LABELS,
    FilterSpec,
    ScaleData,
    exact_topk,
    extra_tiles,
    load_or_generate,
    make_filters,
    patient_name,
    site_name,
    write_collection,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "search_scale.json"
QUICK_RESULTS = REPO / "bench" / "results" / "tmp" / "search_scale_quick.json"
K = 10
NPROBES = [1, 2, 4, 8, 16, 32, 64, 128]
TARGET_RECALL = 0.95
WARMUP = 5

Rows = list[dict[str, Any]]


# -- small helpers --------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Stages:
    """Runs named stages, timing each and recording its error without stopping the run."""

    def __init__(self, on_stage_end: Callable[[], None] | None = None) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.on_stage_end = on_stage_end

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        rec: dict[str, Any] = {}
        self.records[name] = rec
        log(f"stage {name} ...")
        t0 = time.perf_counter()
        try:
            yield rec
            rec["ok"] = True
        except Exception as exc:  # noqa: BLE001 - one failing stage must not stop the others
            rec["ok"] = False
            rec["error"] = f"{type(exc).__name__}: {exc}"
            rec["traceback"] = traceback.format_exc(limit=6)[-2000:]
            log(f"stage {name} FAILED: {rec['error']}")
        rec["stage_seconds"] = round(time.perf_counter() - t0, 3)
        log(f"stage {name} done in {rec['stage_seconds']:.1f}s")
        if self.on_stage_end is not None:  # partial results survive an interrupted run
            with contextlib.suppress(Exception):
                self.on_stage_end()


def percentiles_ms(lat_s: list[float]) -> dict[str, float | None]:
    if not lat_s:
        return {"p50_ms": None, "p99_ms": None}
    arr = np.asarray(lat_s) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
    }


def quality(results: list[np.ndarray], gt: np.ndarray, mask: np.ndarray | None) -> dict[str, Any]:
    """recall@K, exactly-K fraction and filter violations of per-query result rows."""
    recalls, exact, hits, bad = [], 0, 0, 0
    for res, truth in zip(results, gt, strict=True):
        got = np.asarray(res, np.int64)
        got = got[got >= 0][:K]
        want = truth[truth >= 0]
        recalls.append(len(set(got.tolist()) & set(want.tolist())) / max(len(want), 1))
        exact += int(len(got) == min(K, len(want)))
        hits += len(got)
        if mask is not None and len(got):
            bad += int((~mask[got]).sum())
    return {
        "recall_at_10": round(float(np.mean(recalls)), 4),
        "exactly_k": round(exact / len(results), 4),
        "filter_violations": round(bad / max(hits, 1), 4),
    }


def measure(
    one: Callable[[int], np.ndarray],
    batch: Callable[[], list[np.ndarray]] | None,
    gt: np.ndarray,
    mask: np.ndarray | None,
    n_queries: int,
) -> dict[str, Any]:
    """Single-query latency and quality, then batch QPS (and its recall) if ``batch`` exists."""
    for i in range(min(WARMUP, n_queries)):
        one(i)
    results, lat = [], []
    for i in range(n_queries):
        t0 = time.perf_counter()
        r = one(i)
        lat.append(time.perf_counter() - t0)
        results.append(r)
    out: dict[str, Any] = {**quality(results, gt, mask), **percentiles_ms(lat)}
    out["batch_qps"] = None
    if batch is not None:
        try:
            t0 = time.perf_counter()
            res_b = batch()
            wall = time.perf_counter() - t0
            out["batch_qps"] = round(n_queries / wall, 1)
            out["batch_recall_at_10"] = quality(res_b, gt, mask)["recall_at_10"]
        except Exception as exc:  # noqa: BLE001 - the batch form is optional per system
            out["batch_error"] = f"{type(exc).__name__}: {exc}"
    return out


def vm_status() -> dict[str, float]:
    """VmRSS and VmHWM of this process in MB (from /proc/self/status)."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                out[key.lower() + "_mb"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return out


def ivf_nlist(n: int) -> int:
    return 4096 if n >= 1_000_000 else max(16, int(round(4 * np.sqrt(n))))


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    ram_gib = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gib = round(int(line.split()[1]) / 1024**2, 1)
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("numpy", "faiss-cpu", "lancedb", "pylance", "pyarrow", "duckdb"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram_gib,
        "versions": versions,
        "git_commit": commit or None,
    }


# -- peers ----------------------------------------------------------------------------------------
def run_faiss_flat(
    vectors: np.ndarray, queries: np.ndarray, filters: list[FilterSpec], gts: list[np.ndarray]
) -> tuple[Rows, dict[str, Any]]:
    import faiss

    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, np.float32))
    info = {"build_seconds": round(time.perf_counter() - t0, 3)}
    rows: Rows = []
    for f, gt in zip(filters, gts, strict=True):
        keep: list[Any] = []
        params = None
        if f.mask is not None:
            bitmap = np.packbits(f.mask, bitorder="little")
            sel = faiss.IDSelectorBitmap(bitmap)
            params = faiss.SearchParameters(sel=sel)
            keep += [bitmap, sel]

        def one(i: int, p: Any = params) -> np.ndarray:
            return index.search(queries[i : i + 1], K, params=p)[1][0]

        def batch(p: Any = params) -> list[np.ndarray]:
            return list(index.search(queries, K, params=p)[1])

        m = measure(one, batch, gt, f.mask, len(queries))
        rows.append({"system": "faiss_flat", "filter": f.name, **m, "params": {}})
        del keep
    return rows, info


def run_faiss_ivf(
    vectors: np.ndarray,
    queries: np.ndarray,
    filters: list[FilterSpec],
    gts: list[np.ndarray],
    train_per_list: int,
    seed: int,
) -> tuple[Rows, dict[str, Any]]:
    import faiss

    n, dim = vectors.shape
    nlist = ivf_nlist(n)
    n_train = min(n, train_per_list * nlist)
    rng = np.random.default_rng([seed, 10])
    sample = np.sort(rng.choice(n, size=n_train, replace=False))
    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(vectors[sample], np.float32))
    t_train = time.perf_counter() - t0
    index.add(np.ascontiguousarray(vectors, np.float32))
    info: dict[str, Any] = {
        "nlist": nlist,
        "train_vectors": n_train,
        "train_rule": f"seeded sample of min(n, {train_per_list} x nlist)",
        "kmeans_iterations": int(index.cp.niter),
        "train_seconds": round(t_train, 3),
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    curve = {}
    best = NPROBES[-1]
    for p in NPROBES:
        index.nprobe = p
        r = quality(list(index.search(queries, K)[1]), gts[0], None)["recall_at_10"]
        curve[str(p)] = r
        if r >= TARGET_RECALL:
            best = p
            break
    index.nprobe = best
    info.update(nprobe=best, recall_by_nprobe=curve)
    rows: Rows = []
    for f, gt in zip(filters, gts, strict=True):
        keep: list[Any] = []
        params = faiss.SearchParametersIVF(nprobe=best)
        if f.mask is not None:
            bitmap = np.packbits(f.mask, bitorder="little")
            sel = faiss.IDSelectorBitmap(bitmap)
            params = faiss.SearchParametersIVF(sel=sel, nprobe=best)
            keep += [bitmap, sel]

        def one(i: int, p: Any = params) -> np.ndarray:
            return index.search(queries[i : i + 1], K, params=p)[1][0]

        def batch(p: Any = params) -> list[np.ndarray]:
            return list(index.search(queries, K, params=p)[1])

        m = measure(one, batch, gt, f.mask, len(queries))
        rows.append(
            {
                "system": "faiss_ivf",
                "filter": f.name,
                **m,
                "params": {"nlist": nlist, "nprobe": best},
            }
        )
        del keep
    return rows, info


def run_lancedb(
    home: Path,
    data: ScaleData,
    filters: list[FilterSpec],
    gts: list[np.ndarray],
    refine_factor: int,
) -> tuple[Rows, dict[str, Any]]:
    import lancedb
    import pyarrow as pa

    n, dim = data.vectors.shape
    queries = data.queries
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    flat = pa.array(np.asarray(data.vectors, np.float32).reshape(-1), pa.float32())
    table = pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64)),
            "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
            "label": pa.array(np.asarray(LABELS)[data.label]),
            "site": pa.array([site_name(int(s)) for s in data.tile_site()]),
            "patient_id": pa.array(
                np.asarray(
                    [patient_name(int(p)) for p in range(int(data.slide_patient.max()) + 1)]
                )[data.tile_patient()]
            ),
            "scan_year": pa.array(data.tile_year().astype(np.int32)),
        }
    )
    db = lancedb.connect(str(home / "lancedb"))
    tbl = db.create_table(f"scale_n{n}", data=table, mode="overwrite")
    del table, flat
    info["write_seconds"] = round(time.perf_counter() - t0, 3)
    partitions = max(1, int(round(np.sqrt(n))))
    sub_vectors = dim // 8
    t0 = time.perf_counter()
    try:  # the current API (lancedb >= 0.25); the older keyword form is deprecated
        from lancedb.index import IvfPq

        tbl.create_index(
            "vector",
            config=IvfPq(
                distance_type="dot", num_partitions=partitions, num_sub_vectors=sub_vectors
            ),
        )
    except (ImportError, TypeError):
        tbl.create_index(
            metric="dot",
            num_partitions=partitions,
            num_sub_vectors=sub_vectors,
            index_type="IVF_PQ",
        )
    info["index_build_seconds"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    for col, kind in (
        ("label", "BITMAP"),
        ("site", "BITMAP"),
        ("patient_id", "BTREE"),
        ("scan_year", "BTREE"),
    ):
        try:  # the current API; create_scalar_index is deprecated since lancedb 0.25
            from lancedb.index import Bitmap, BTree

            tbl.create_index(col, config=Bitmap() if kind == "BITMAP" else BTree())
        except (ImportError, TypeError):
            tbl.create_scalar_index(col, index_type=kind)
    info["scalar_index_seconds"] = round(time.perf_counter() - t0, 3)
    info.update(
        index="IVF_PQ",
        num_partitions=partitions,
        num_sub_vectors=sub_vectors,
        metric="dot",
        scalar_indexes={
            "label": "BITMAP",
            "site": "BITMAP",
            "patient_id": "BTREE",
            "scan_year": "BTREE",
        },
    )

    def query(q: np.ndarray, f: FilterSpec, nprobes: int, refine: int) -> Any:
        qb = (
            tbl.search(q, vector_column_name="vector")
            .distance_type("dot")
            .minimum_nprobes(nprobes)
            .maximum_nprobes(0)  # more partitions only when a filter leaves fewer than k
            .refine_factor(refine)
            .limit(K)
            .select(["id", "_distance"])
        )
        if f.sql is not None:
            qb = qb.where(f.sql, prefilter=True)
        return qb

    def ids_of(q: np.ndarray, f: FilterSpec, nprobes: int, refine: int) -> np.ndarray:
        return query(q, f, nprobes, refine).to_arrow()["id"].to_numpy()

    # nprobes first (at --refine-factor); where recall plateaus below the target (PQ-limited),
    # a larger refine_factor. The first setting reaching the target wins, else the best seen.
    n_tune = min(len(queries), 50)
    curve: dict[str, float] = {}
    best, best_rf, best_r = NPROBES[-1], refine_factor, -1.0
    done = False
    for rf in sorted({refine_factor, 20, 50, 100}):
        prev = -1.0
        for p in NPROBES:
            res = [ids_of(queries[i], filters[0], p, rf) for i in range(n_tune)]
            r = quality(res, gts[0][:n_tune], None)["recall_at_10"]
            curve[f"refine{rf}_nprobes{p}"] = r
            if r > best_r:
                best, best_rf, best_r = p, rf, r
            if r >= TARGET_RECALL:
                done = True
                break
            if r <= prev + 0.002 and p >= 4:  # plateau: more partitions do not help
                break
            prev = r
        if done:
            break
    info.update(
        nprobes=best,
        nprobes_mode="minimum_nprobes=nprobes, maximum_nprobes=0 (unbounded, on demand)",
        refine_factor=best_rf,
        recall_by_setting=curve,
        tuned_on_queries=n_tune,
    )
    rows: Rows = []
    for f, gt in zip(filters, gts, strict=True):

        def one(i: int, f: FilterSpec = f) -> np.ndarray:
            return ids_of(queries[i], f, best, best_rf)

        def batch(f: FilterSpec = f) -> list[np.ndarray]:
            t = query(queries, f, best, best_rf).to_arrow()
            qi = t["query_index"].to_numpy()
            ids = t["id"].to_numpy()
            return [ids[qi == i] for i in range(len(queries))]

        m = measure(one, batch, gt, f.mask, len(queries))
        rows.append(
            {
                "system": "lancedb",
                "filter": f.name,
                **m,
                "params": {"nprobes": best, "refine_factor": best_rf, "prefilter": True},
            }
        )
    return rows, info


# -- Lamina ---------------------------------------------------------------------------------------
def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _jsonable(obj: Any) -> Any:
    try:
        return json.loads(json.dumps(obj, default=str))
    except (TypeError, ValueError):
        return repr(obj)


def run_lamina(
    svc: Any,
    name: str,
    system: str,
    queries: np.ndarray,
    filters: list[FilterSpec],
    gts: list[np.ndarray],
    inv: np.ndarray,
    request_params: dict[str, Any] | None,
) -> tuple[Rows, dict[str, Any]]:
    """Lamina's search, one row per filter; per-request params and plans where supported."""
    extra: dict[str, Any] = {}
    api: dict[str, Any] = {
        "params_supported": _accepts(svc.search, "params"),
        "search_batch": hasattr(svc, "search_batch"),
    }
    if request_params and api["params_supported"]:
        extra["params"] = request_params

    def rows_of(res: Any) -> np.ndarray:
        return inv[np.asarray([h.tile_id for h in res.hits], np.int64)]

    rows: Rows = []
    for f, gt in zip(filters, gts, strict=True):
        fj = f.lamina
        last: dict[str, Any] = {}

        def one(i: int, fj: Any = fj, last: dict[str, Any] = last) -> np.ndarray:
            res = svc.search(name, queries[i], k=K, filter_json=fj, **extra)
            last["res"] = res
            return rows_of(res)

        batch = None
        if api["search_batch"]:

            def batch(fj: Any = fj) -> list[np.ndarray]:
                out = svc.search_batch(name, queries, k=K, filter_json=fj, **extra)
                results = out if isinstance(out, list | tuple) else getattr(out, "results", out)
                return [rows_of(r) for r in results]

        m = measure(one, batch, gt, f.mask, len(queries))
        res = last.get("res")
        plan = getattr(res, "plan", None) if res is not None else None
        rows.append(
            {
                "system": system,
                "filter": f.name,
                **m,
                "params": extra.get("params", {}),
                "plan": "not available" if plan is None else _jsonable(plan),
                "snapshot": getattr(res, "snapshot", None),
            }
        )
    if not api["search_batch"]:
        api["search_batch"] = "not available"
    return rows, api


def ensure_collection(
    home: Path, cache: Path, name: str, data: ScaleData, seed: int, vector_dtype: str | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """The collection's tile ids in row order, writing the collection unless already complete."""
    from search.errors import CollectionNotFoundError
    from search.store import Store

    ids_path = cache / f"{name}.tile_ids.npy"
    try:
        col = Store(home).collection(name)
        if ids_path.is_file() and col.snapshot().n_tiles == data.n:
            return np.load(ids_path), {"reused": True, "segments": len(col.segments())}
    except CollectionNotFoundError:
        pass
    shutil.rmtree(home / "collections" / name, ignore_errors=True)
    t0 = time.perf_counter()
    ids = write_collection(
        home,
        name,
        data,
        seed=seed,
        vector_dtype=vector_dtype,
        progress=lambda done: log(f"  written {done:,} tiles"),
    )
    seconds = time.perf_counter() - t0
    np.save(ids_path, ids)
    col = Store(home).collection(name)
    return ids, {
        "reused": False,
        "write_seconds": round(seconds, 3),
        "tiles_per_second": round(data.n / seconds, 1),
        "segments": len(col.segments()),
    }


def _child(args: list[str], timeout: float) -> tuple[dict[str, Any], float]:
    """Run ``python -m bench.search_scale --child ...``; its last stdout line is JSON."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.search_scale", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[:2]} exit {proc.returncode}: {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def child_cold(home: Path, name: str, queries_path: Path, filters_json: str) -> dict[str, Any]:
    """In a fresh process: time to the first answer, then a few more, then resident memory."""
    t0 = time.perf_counter()
    from search.service import SearchService
    from search.store import Store

    t_import = time.perf_counter() - t0
    queries = np.load(queries_path)
    svc = SearchService(Store(home))
    res = svc.search(name, queries[0], k=K)
    t_first = time.perf_counter() - t0
    lat = []
    for fj in json.loads(filters_json):
        t1 = time.perf_counter()
        svc.search(name, queries[1], k=K, filter_json=fj)
        lat.append(round((time.perf_counter() - t1) * 1000, 2))
    return {
        "import_seconds": round(t_import, 3),
        "first_answer_seconds": round(t_first, 3),
        "next_queries_ms": lat,
        "snapshot": res.snapshot,
        **vm_status(),
    }


def child_commit(home: Path, name: str, vectors_path: Path) -> dict[str, Any]:
    """In a separate process: commit one 100-tile source; returns the commit's wall-clock time."""
    from search.store import Store

    vecs = np.load(vectors_path)
    col = Store(home).collection(name)
    t0 = time.perf_counter()
    w = col.writer("bench-visible")
    tiles = [
        {
            "x": 224 * i,
            "y": 0,
            "level": 0,
            "size_px": 224,
            "tile_px": 224,
            "mpp": 0.5,
            "tissue_fraction": 1.0,
            "kind": "slide",
            "patient_id": "P-visible",
            "site": "H01",
            "scan_year": 2024,
            "label": "tumour",
        }
        for i in range(len(vecs))
    ]
    src = {
        "source_id": f"{time.time_ns():064x}"[-64:],
        "source": f"visible_{time.time_ns()}.svs",
        "kind": "slide",
        "width": 224 * len(vecs),
        "height": 224,
        "mpp": 0.5,
        "properties": {},
    }
    ids = w.add_source(src, tiles, vecs)
    w.commit()
    return {
        "t_commit": time.time(),
        "commit_seconds": round(time.perf_counter() - t0, 3),
        "tile_ids": ids,
    }


def clone_collection(src: Path, dst: Path, max_tiles: int, factory: str) -> int:
    """Hard-link the oldest segments of ``src`` covering ~``max_tiles`` tiles into ``dst``.

    Segments are immutable, so links cost nothing and the original is never touched. The saved
    index of ``factory`` is linked too when every segment is taken (so a clone of an IVF
    collection does not retrain). Returns the clone's tile count.
    """
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "segments").mkdir(parents=True)
    segs = sorted(
        p for p in (src / "segments").iterdir() if not p.name.startswith(".") and p.is_dir()
    )
    total, taken = 0, 0
    for seg in segs:
        if total >= max_tiles:
            break
        meta = json.loads((seg / "segment.json").read_text())
        shutil.copytree(seg, dst / "segments" / seg.name, copy_function=os.link)
        total += int(meta["n_tiles"])
        taken += 1
    info = json.loads((src / "collection.json").read_text())
    info.update(name=dst.name, index_factory=factory)
    (dst / "collection.json").write_text(json.dumps(info, indent=2))
    shutil.copy(src / "next_tile_id", dst / "next_tile_id")
    if taken == len(segs) and (src / "index").is_dir():
        shutil.copytree(src / "index", dst / "index", copy_function=os.link)
    return total


def commit_to_visible(
    home: Path, name: str, size: int, factory: str, dim: int, seed: int, cache: Path
) -> dict[str, Any]:
    """Seconds from another process's 100-tile commit to the first answer that contains it."""
    from search.service import SearchService
    from search.store import Store

    clone = f"{name}_visible"
    dst = home / "collections" / clone
    try:
        n_tiles = clone_collection(home / "collections" / name, dst, size, factory)
        vecs = extra_tiles(dim, 100, seed)
        vec_path = cache / "visible_tiles.npy"
        np.save(vec_path, vecs)
        svc = SearchService(Store(home))
        t0 = time.perf_counter()
        before = svc.search(clone, vecs[0], k=K)
        first_view = time.perf_counter() - t0
        info, _ = _child(
            ["--child", "commit", "--home", str(home), "--name", clone, "--vectors", str(vec_path)],
            timeout=600,
        )
        target = int(info["tile_ids"][0])
        polls: list[float] = []
        seen = None
        while time.time() - info["t_commit"] < 300:
            t1 = time.perf_counter()
            res = svc.search(clone, vecs[0], k=K)
            polls.append(time.perf_counter() - t1)
            if any(h.tile_id == target for h in res.hits):
                seen = time.time() - info["t_commit"]
                break
        return {
            "tiles": n_tiles,
            "factory": factory,
            "first_view_seconds": round(first_view, 3),
            "child_commit_seconds": info["commit_seconds"],
            "commit_to_visible_seconds": None if seen is None else round(seen, 3),
            "polls": len(polls),
            "first_poll_ms": round(polls[0] * 1000, 1) if polls else None,
            "snapshot_before": before.snapshot,
            "snapshot_after": res.snapshot,
        }
    finally:
        shutil.rmtree(dst, ignore_errors=True)


# -- orchestration --------------------------------------------------------------------------------
def markdown(rows: Rows, fractions: dict[str, float]) -> str:
    head = "| system | filter | match | recall@10 | exactly-k | p50 ms | p99 ms | batch QPS |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]

    def fmt(v: Any) -> str:
        return "-" if v is None else str(v)

    for r in rows:
        lines.append(
            f"| {r['system']} | {r['filter']} | {fractions.get(r['filter'], 1.0) * 100:.1f} % | "
            f"{fmt(r.get('recall_at_10'))} | {fmt(r.get('exactly_k'))} | {fmt(r.get('p50_ms'))} | "
            f"{fmt(r.get('p99_ms'))} | {fmt(r.get('batch_qps'))} |"
        )
    return "\n".join(lines)


def write_result(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run(args: argparse.Namespace, out_path: Path) -> dict[str, Any]:
    n, dim, nq, seed = args.n, args.dim, args.queries, args.seed
    own_home = args.home is None
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="lamina-scale-"))
    home.mkdir(parents=True, exist_ok=True)
    cache = home / "bench_cache"
    cache.mkdir(exist_ok=True)
    name = f"scale_n{n}_s{seed}" + (f"_{args.vector_dtype}" if args.vector_dtype else "")
    rows: Rows = []
    out: dict[str, Any] = {}
    st = Stages(lambda: write_result(out_path, out))
    out |= {
        "what": "filtered and unfiltered top-10 search at scale: Lamina vs raw FAISS vs LanceDB",
        "units": "latency ms (single query, perf_counter); QPS queries/s; build/stage seconds; "
        "memory MB",
        "machine": machine_info(),
        "config": {
            "n": n,
            "dim": dim,
            "queries": nq,
            "k": K,
            "seed": seed,
            "quick": args.quick,
            "home": str(home),
            "collection": name,
            "vector_dtype": args.vector_dtype,
            "target_recall_for_nprobe": TARGET_RECALL,
        },
        "stages": st.records,
        "results": rows,
    }
    data: ScaleData | None = None
    filters: list[FilterSpec] = []
    gts: list[np.ndarray] = []
    inv = np.zeros(0, np.int64)
    ivf_nprobe: int | None = None

    with st.stage("data") as rec:
        data = load_or_generate(cache, n, dim, nq, seed)
        rec.update(
            n_tiles=data.n,
            n_slides=data.n_slides,
            n_patients=int(data.slide_patient.max()) + 1,
            tiles_per_slide_median=float(np.median(np.bincount(data.slide))),
            vector_bytes=int(data.n * dim * 4),
        )
    if data is None:
        return out
    queries = np.ascontiguousarray(data.queries, np.float32)
    q_path = cache / "queries.npy"
    np.save(q_path, queries)

    with st.stage("ground_truth") as rec:
        filters = make_filters(data)
        gts = exact_topk(data.vectors, queries, [f.mask for f in filters], K)
        rec["filters"] = [
            {
                "name": f.name,
                "target": f.target,
                "match_fraction": round(f.fraction, 4),
                "lamina_filter": f.lamina,
                "lancedb_where": f.sql,
            }
            for f in filters
        ]
    if not gts:
        return out
    fractions = {f.name: f.fraction for f in filters}
    out["filters"] = st.records["ground_truth"].get("filters")

    with st.stage("lamina_write") as rec:
        ids, info = ensure_collection(home, cache, name, data, seed, args.vector_dtype)
        rec.update(info)
        inv = np.full(int(ids.max()) + 1, -1, np.int64)
        inv[ids] = np.arange(len(ids))

    vectors = np.ascontiguousarray(data.vectors, np.float32)
    with st.stage("faiss_flat") as rec:
        r, info = run_faiss_flat(vectors, queries, filters, gts)
        rows += r
        rec.update(info)
    gc.collect()
    with st.stage("faiss_ivf") as rec:
        r, info = run_faiss_ivf(vectors, queries, filters, gts, args.train_per_list, seed)
        rows += r
        rec.update(info)
        ivf_nprobe = int(info["nprobe"])
    gc.collect()
    if not args.skip_lancedb:
        with st.stage("lancedb") as rec:
            r, info = run_lancedb(home, data, filters, gts, args.refine_factor)
            rows += r
            rec.update(info)
        shutil.rmtree(home / "lancedb", ignore_errors=True)
        gc.collect()
    del vectors
    gc.collect()

    if len(inv) == 0:
        return out
    from search.service import SearchService
    from search.store import Store

    col = Store(home).collection(name)
    filters_json = json.dumps([f.lamina for f in filters if f.lamina is not None])
    svc: Any = None
    with st.stage("lamina_flat") as rec:
        col.set_index_factory("Flat")
        rec["saved_index_present"] = any(col.index_dir.glob("Flat.*"))
        svc = SearchService(Store(home))
        t0 = time.perf_counter()
        svc.search(name, queries[0], k=K)
        rec["first_search_seconds"] = round(time.perf_counter() - t0, 3)
        rec["rss_after_view"] = vm_status()
        r, api = run_lamina(svc, name, "lamina_flat", queries, filters, gts, inv, None)
        rows += r
        rec["api"] = api
    with st.stage("lamina_flat_cold_start") as rec:
        info, wall = _child(
            [
                "--child",
                "cold",
                "--home",
                str(home),
                "--name",
                name,
                "--queries-npy",
                str(q_path),
                "--filters-json",
                filters_json,
            ],
            timeout=1800,
        )
        rec.update(info, process_wall_seconds=round(wall, 3))
        rec["rss_over_vector_bytes"] = round(
            info.get("vmrss_mb", 0) * 2**20 / (data.n * dim * 4), 3
        )
    with st.stage("lamina_slide_search") as rec:
        from search.slide_ranking import rank_slides

        for f in filters[:1] + [x for x in filters if x.name == "sel_10pct"]:
            lat = []
            for i in range(min(20, nq) + 1):
                t0 = time.perf_counter()
                rank_slides(svc, name, vectors=queries[i], k=K, filter_json=f.lamina)
                if i:  # the first call warms per-view caches
                    lat.append(time.perf_counter() - t0)
            rec[f.name] = {**percentiles_ms(lat), "queries": len(lat)}
    with st.stage("lamina_export") as rec:
        from search.exports import build_labeled_set

        view = svc.view(name)
        t0 = time.perf_counter()
        ls = build_labeled_set(view, "label", split_by="patient_id")
        rec.update(rows=int(ls.n), seconds=round(time.perf_counter() - t0, 3))
        del ls
        t0 = time.perf_counter()
        ls = build_labeled_set(view, "label", tile_ids=ids[:200].tolist(), neighbors=10)
        rec["with_neighbors_10"] = {
            "rows": int(ls.n),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        del ls, view
    with st.stage("lamina_cohort") as rec:
        from search.catalog import Catalog
        from search.cohorts import create_cohort

        members = min(100_000, data.n)
        with Catalog(home) as catalog:
            t0 = time.perf_counter()
            record = create_cohort(
                catalog, svc, "bench-scale", name, near_vectors=[queries[0]], k=members
            )
            rec.update(
                members=int(record["n_tiles"]),
                version=int(record["version"]),
                seconds=round(time.perf_counter() - t0, 3),
            )
    svc = None
    gc.collect()

    factory = f"IVF{ivf_nlist(n)},Flat"
    with st.stage("lamina_ivf") as rec:
        col.set_index_factory(factory)
        rec["factory"] = factory
        rec["saved_index_present"] = (col.index_dir / f"{factory.replace(',', '_')}.json").is_file()
        try:  # the store's explicit index build, where it has one (else the first search builds)
            from search.ann import update_index
        except ImportError:
            update_index = None
        if update_index is not None:
            t0 = time.perf_counter()
            rec["index_build"] = _jsonable(update_index(col))
            rec["index_build_seconds"] = round(time.perf_counter() - t0, 3)
            from search.compaction import cluster

            t0 = time.perf_counter()
            rec["clustered"] = len(cluster(col)["clustered"])
            rec["cluster_seconds"] = round(time.perf_counter() - t0, 3)
        else:
            rec["index_build"] = "not available: built by the first search"
        svc = SearchService(Store(home))
        t0 = time.perf_counter()
        first = svc.search(name, queries[0], k=K)
        rec["first_search_seconds"] = round(time.perf_counter() - t0, 3)
        rec["first_plan"] = _jsonable(getattr(first, "plan", "not available"))
        rec["rss_after_view"] = vm_status()
        params = {"nprobe": ivf_nprobe} if ivf_nprobe else None
        r, api = run_lamina(svc, name, "lamina_ivf", queries, filters, gts, inv, params)
        rows += r
        rec["api"] = api
        if not api["params_supported"]:
            rec["note"] = "per-request params not available: the collection's default nprobe"
    with st.stage("lamina_ivf_collection_params") as rec:
        # the same nprobe stored with the collection instead of sent per request
        if not hasattr(col, "set_index") or not ivf_nprobe:
            rec["skipped"] = "collection-level index params not available"
        else:
            col.set_index(params={"nprobe": ivf_nprobe})
            svc = SearchService(Store(home))
            r, api = run_lamina(svc, name, "lamina_ivf_colparams", queries, filters, gts, inv, None)
            rows += r
            rec.update(api=api, index_params={"nprobe": ivf_nprobe})
    svc = None
    gc.collect()
    with st.stage("lamina_ivf_cold_start") as rec:
        info, wall = _child(
            [
                "--child",
                "cold",
                "--home",
                str(home),
                "--name",
                name,
                "--queries-npy",
                str(q_path),
                "--filters-json",
                filters_json,
            ],
            timeout=1800,
        )
        rec.update(info, process_wall_seconds=round(wall, 3))
        rec["rss_over_vector_bytes"] = round(
            info.get("vmrss_mb", 0) * 2**20 / (data.n * dim * 4), 3
        )

    sizes = sorted({min(250_000, n), n})
    for size in sizes:
        factories = ["Flat", factory] if size == n else ["Flat"]
        for fac in factories:
            tag = "flat" if fac == "Flat" else "ivf"
            with st.stage(f"commit_to_visible_{size}_{tag}") as rec:
                rec.update(commit_to_visible(home, name, size, fac, dim, seed, cache))
    with contextlib.suppress(Exception):
        col.set_index_factory("Flat")

    if own_home:
        shutil.rmtree(home, ignore_errors=True)
    print(markdown(rows, fractions))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--home", default=None, help="Lamina home to use and reuse (default: a temp dir)"
    )
    ap.add_argument("--skip-lancedb", action="store_true")
    ap.add_argument("--quick", action="store_true", help="every stage at n=20000, 50 queries")
    ap.add_argument("--train-per-list", type=int, default=64, help="FAISS IVF training sample")
    ap.add_argument("--refine-factor", type=int, default=10, help="LanceDB refine_factor")
    ap.add_argument("--vector-dtype", default=None, help="passed to the store when it has one")
    ap.add_argument("--child", choices=["cold", "commit"], help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    ap.add_argument("--queries-npy", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--filters-json", help=argparse.SUPPRESS)
    ap.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child == "cold":
        print(
            json.dumps(child_cold(Path(args.home), args.name, args.queries_npy, args.filters_json))
        )
        return
    if args.child == "commit":
        print(json.dumps(child_commit(Path(args.home), args.name, args.vectors)))
        return
    if args.quick:
        args.n, args.queries = 20_000, min(args.queries, 50)
    out_path = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    t0 = time.perf_counter()
    result = run(args, out_path)
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    write_result(out_path, result)
    failed = [k for k, v in result["stages"].items() if not v.get("ok")]
    log(f"wrote {out_path} in {result['total_seconds']}s; failed stages: {failed or 'none'}")


if __name__ == "__main__":
    main()
