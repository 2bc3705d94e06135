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

Modules: this one (command line, stage runner, result JSON and table), bench/scale_data.py
(data, filters, ground truth), bench/scale_measure.py (quality and latency measures),
bench/scale_peers.py (FAISS, LanceDB), bench/scale_lamina.py (Lamina's stages and the child
processes this module runs as ``python -m bench.search_scale --child cold|commit``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from bench.scale_data import FilterSpec, ScaleData, exact_topk, load_or_generate, make_filters
from bench.scale_lamina import (
    LaminaStages,
    child_cold,
    child_commit,
    commit_to_visible,
    ensure_collection,
)
from bench.scale_measure import TARGET_RECALL, K, Rows, ivf_nlist, log
from bench.scale_peers import run_faiss_flat, run_faiss_ivf, run_lancedb

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "search_scale.json"
QUICK_RESULTS = REPO / "bench" / "results" / "tmp" / "search_scale_quick.json"


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
    ids = np.zeros(0, np.int64)
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

    if len(ids) == 0:
        return out
    lam = LaminaStages(
        home, name, queries, q_path, filters, gts, ids, vector_bytes=int(data.n * dim * 4)
    )
    with st.stage("lamina_flat") as rec:
        rows += lam.flat(rec)
    with st.stage("lamina_flat_cold_start") as rec:
        lam.cold_start(rec)
    with st.stage("lamina_slide_search") as rec:
        lam.slide_search(rec)
    with st.stage("lamina_export") as rec:
        lam.export(rec)
    with st.stage("lamina_cohort") as rec:
        lam.cohort(rec)
    lam.release()

    factory = f"IVF{ivf_nlist(n)},Flat"
    with st.stage("lamina_ivf") as rec:
        rows += lam.ivf(rec, factory, ivf_nprobe)
    with st.stage("lamina_ivf_collection_params") as rec:
        rows += lam.ivf_collection_params(rec, ivf_nprobe)
    lam.release()
    with st.stage("lamina_ivf_cold_start") as rec:
        lam.cold_start(rec)

    sizes = sorted({min(250_000, n), n})
    for size in sizes:
        factories = ["Flat", factory] if size == n else ["Flat"]
        for fac in factories:
            tag = "flat" if fac == "Flat" else "ivf"
            with st.stage(f"commit_to_visible_{size}_{tag}") as rec:
                rec.update(commit_to_visible(home, name, size, fac, dim, seed, cache))
    with contextlib.suppress(Exception):
        lam.col.set_index_factory("Flat")

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
