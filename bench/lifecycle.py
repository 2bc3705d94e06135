"""Correcting and erasing data at scale: Lamina against LanceDB on the same 1M-tile collection.

    python -m bench.lifecycle [--n 1000000] [--dim 384] [--queries 100] [--home DIR]
                              [--skip-lancedb] [--out bench/results/lifecycle.json]

Data: the clustered tile collection of ``bench.search_scale`` (bench/scale_data.py; reused from
``--home`` when that run left it there), ~2,000 slides. Lamina works on a hard-linked clone of it
(segments are immutable, so the original is never touched) with its ``IVF<nlist>,Flat`` index;
LanceDB on a table of the same vectors and columns (id, vector, label, site, patient_id,
scan_year, slide, review), without a vector index (its mutations are what is measured).

Operations, each timed once (seconds, perf_counter), in this order on both systems:

- ``annotate_1pct``: set a new text column (``review``) on the tiles of 1 % of the slides;
- ``annotate_all``: rename every hospital (``site``), i.e. change one column of every row;
- ``delete_1pct``: delete the tiles of another 1 % of the slides;
- ``erase``: make the deletion physical -- Lamina ``compact(erase=True)`` (rewrites the segments
  holding tombstones, carrying their IVF lists over for the kept rows, and removes retired files
  at once; what ``--retrain-index`` adds, a full rebuild of the IVF index on the remaining
  vectors, is timed on its own as ``retrain_index``), LanceDB
  ``optimize(cleanup_older_than=0, delete_unverified=True)`` (compaction + removal of old
  versions).

Checks (counts, not timings): hits of deleted tiles after ``delete_1pct`` and after ``erase``
(must be 0); files under each system's directory that still contain the bytes of a deleted
vector after ``erase`` (sampled: 5 deleted vectors, must be 0); rows whose ``site`` shows the
new name after ``annotate_all`` (must be all; Lamina counts sources, whose tiles share
their metadata, LanceDB rows). Lamina's single-query search latency (p50/p99 ms,
unfiltered and filtered on the new ``site`` value, through ``SearchService``) is reported before
any change, after the annotations, after the delete (tombstones in every mask) and after the
erase, so the cost of each state on the read path is visible.
"""

from __future__ import annotations

import argparse
import json
import mmap
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench.scale_data import ScaleData, load_or_generate, site_name
from bench.scale_lamina import clone_collection, ensure_collection
from bench.scale_measure import K, ivf_nlist, log
from bench.scale_peers import lance_table
from bench.search_scale import Stages, machine_info, write_result

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "lifecycle.json"
SAMPLED_VECTORS = 5


def _slides(data: ScaleData, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slide code of every tile, 1 % of slides to annotate, another 1 % to delete)."""
    slide_of = np.asarray(data.slide)
    rng = np.random.default_rng(seed + 7)
    slides = rng.permutation(np.unique(slide_of))
    step = max(1, len(slides) // 100)
    return slide_of, slides[:step], slides[step : 2 * step]


def _latency(fn: Any, queries: np.ndarray) -> dict[str, float]:
    for q in queries[:5]:
        fn(q)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p99_ms": round(float(np.percentile(times, 99)), 3),
    }


def _files_holding(root: Path, needles: list[bytes]) -> list[str]:
    """Files under ``root`` containing any of ``needles`` (memory-mapped scan)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.stat().st_size == 0:
            continue
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if any(mm.find(n) >= 0 for n in needles):
                found.append(str(path.relative_to(root)))
    return found


def run_lamina(
    home: Path, src: str, data: ScaleData, ids: np.ndarray, st: Stages, args: argparse.Namespace
) -> None:
    import pyarrow.parquet as pq

    from lamina.search import SearchService, Store
    from lamina.search.compaction import compact
    from lamina.search.rewrite import annotate, delete

    name = src + "_lifecycle"
    nlist = ivf_nlist(data.n)
    with st.stage("lamina_clone") as rec:
        rec["tiles"] = clone_collection(
            home / "collections" / src, home / "collections" / name, data.n, f"IVF{nlist},Flat"
        )
    store = Store(home)
    col = store.collection(name)
    service = SearchService(store)
    params = {"nprobe": args.nprobe}
    queries = np.asarray(data.queries[: args.queries], np.float32)
    state: dict[str, Any] = {}

    def latency(tag: str, deleted: set[int] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        bad = 0

        def unfiltered(q: np.ndarray) -> None:
            nonlocal bad
            res = service.search(name, q, K, params=params)
            if deleted:
                bad += sum(int(h.tile_id) in deleted for h in res.hits)

        out["unfiltered"] = _latency(unfiltered, queries)
        site = state.get("site_filter")
        if site:
            out["filtered_site"] = _latency(
                lambda q: service.search(name, q, K, filters=[f"site={site}"], params=params),
                queries,
            )
        if deleted is not None:
            out["deleted_hits"] = bad
        log(f"  lamina {tag}: {out}")
        return out

    slide_of, annotate_slides, delete_slides = _slides(data, args.seed)
    keys = _source_keys(col, pq)
    with st.stage("lamina_search_before") as rec:
        rec.update(latency("before"))
    with st.stage("lamina_annotate_1pct") as rec:
        wanted = {source_key(int(s), args.seed) for s in annotate_slides}
        updates = {k: {"review": "second-read"} for k in keys if k[0] in wanted}
        t0 = time.perf_counter()
        out = annotate(col, updates)
        rec.update(seconds=round(time.perf_counter() - t0, 3), sources=len(out["changed"]))
    with st.stage("lamina_annotate_all") as rec:
        sites = _site_of_source(col, pq)
        updates = {k: {"site": "R-" + sites[k[0]]} for k in keys}
        t0 = time.perf_counter()
        out = annotate(col, updates)
        rec.update(seconds=round(time.perf_counter() - t0, 3), sources=len(out["changed"]))
        state["site_filter"] = "R-" + site_name(0)
        renamed = _site_of_source(col, pq)
        rec["sources_renamed"] = int(sum(v.startswith("R-") for v in renamed.values()))
        rec["sources_total"] = len(renamed)
    with st.stage("lamina_search_after_annotate") as rec:
        rec.update(latency("after annotate"))
    deleted_mask = np.isin(slide_of, delete_slides)
    deleted_ids = {int(t) for t in ids[deleted_mask]}
    with st.stage("lamina_delete_1pct") as rec:
        wanted = {source_key(int(s), args.seed) for s in delete_slides}
        gone = [k for k in keys if k[0] in wanted]
        t0 = time.perf_counter()
        out = delete(col, gone)
        rec.update(
            seconds=round(time.perf_counter() - t0, 3),
            sources=len(out["deleted"]),
            tiles=int(sum(d["tiles"] for d in out["deleted"])),
        )
    with st.stage("lamina_search_after_delete") as rec:
        rec.update(latency("after delete", deleted_ids))
    with st.stage("lamina_erase") as rec:
        t0 = time.perf_counter()
        out = compact(col, erase=True)
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        rec["summary"] = {k: v for k, v in out.items() if isinstance(v, int | float | str)}
        rec["rewrite_seconds"] = round(sum(m["seconds"] for m in out.get("merged") or []), 3)
        rec["index_seconds"] = out.get("index_seconds")
    with st.stage("lamina_retrain_index") as rec:  # what `compact --erase --retrain-index` adds
        from lamina.search.ann import update_index

        t0 = time.perf_counter()
        update_index(col, rebuild=True)
        rec["seconds"] = round(time.perf_counter() - t0, 3)
    with st.stage("lamina_search_after_erase") as rec:
        service = SearchService(Store(home))
        rec.update(latency("after erase", deleted_ids))
    with st.stage("lamina_erasure_check") as rec:
        rows = np.flatnonzero(deleted_mask)[:SAMPLED_VECTORS]
        needles = [np.asarray(data.vectors[r], np.float32).tobytes() for r in rows]
        needles += [np.asarray(data.vectors[r], np.float16).tobytes() for r in rows]
        rec["files_holding_deleted_vectors"] = _files_holding(home / "collections" / name, needles)


def source_key(slide: int, seed: int = 0) -> str:
    """The bench collection's source id of a slide code (bench/scale_data.py)."""
    from bench.scale_data import source_id_of

    return source_id_of(seed, slide)


def _source_keys(col: Any, pq: Any) -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    for seg in col.segments():
        t = pq.read_table(seg.sources_path, columns=["source_id", "source"])
        keys += list(zip(t["source_id"].to_pylist(), t["source"].to_pylist(), strict=True))
    return keys


def _site_of_source(col: Any, pq: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for seg in col.segments():
        t = pq.read_table(seg.path / "tiles.parquet", columns=["source_id", "site"])
        out.update(zip(t["source_id"].to_pylist(), t["site"].to_pylist(), strict=True))
    return out


def run_lancedb(home: Path, data: ScaleData, st: Stages, args: argparse.Namespace) -> None:
    import lancedb
    import pyarrow as pa

    n = len(data.vectors)
    slide_of, annotate_slides, delete_slides = _slides(data, args.seed)
    root = home / "lancedb_lifecycle"
    shutil.rmtree(root, ignore_errors=True)
    with st.stage("lancedb_write") as rec:
        t0 = time.perf_counter()
        table = lance_table(
            data, slide=pa.array(slide_of.astype(np.int32)), review=pa.nulls(n, pa.string())
        )
        tbl = lancedb.connect(str(root)).create_table("tiles", data=table, mode="overwrite")
        del table
        rec["seconds"] = round(time.perf_counter() - t0, 3)

    def in_list(values: np.ndarray) -> str:
        return "slide IN (" + ", ".join(str(int(v)) for v in values) + ")"

    with st.stage("lancedb_annotate_1pct") as rec:
        t0 = time.perf_counter()
        tbl.update(where=in_list(annotate_slides), values={"review": "second-read"})
        rec["seconds"] = round(time.perf_counter() - t0, 3)
    with st.stage("lancedb_annotate_all") as rec:
        t0 = time.perf_counter()
        for code in range(int(data.tile_site().max()) + 1):
            old = site_name(code)
            tbl.update(where=f"site = '{old}'", values={"site": "R-" + old})
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        rec["rows_renamed"] = int(tbl.count_rows("site LIKE 'R-%'"))
        rec["rows_total"] = int(tbl.count_rows())
    with st.stage("lancedb_delete_1pct") as rec:
        t0 = time.perf_counter()
        tbl.delete(in_list(delete_slides))
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        rec["rows_left"] = int(tbl.count_rows())
    deleted = np.flatnonzero(np.isin(slide_of, delete_slides))
    with st.stage("lancedb_search_after_delete") as rec:
        bad = 0
        for q in np.asarray(data.queries[:10], np.float32):  # brute force: a few queries
            hits = tbl.search(q).metric("dot").limit(K).to_arrow()["id"].to_numpy()
            bad += int(np.isin(hits, deleted).sum())
        rec["deleted_hits"] = bad
    with st.stage("lancedb_erase") as rec:
        t0 = time.perf_counter()
        tbl.optimize(cleanup_older_than=timedelta(0), delete_unverified=True)
        rec["seconds"] = round(time.perf_counter() - t0, 3)
    with st.stage("lancedb_erasure_check") as rec:
        rows = deleted[:SAMPLED_VECTORS]
        needles = [np.asarray(data.vectors[r], np.float32).tobytes() for r in rows]
        rec["files_holding_deleted_vectors"] = _files_holding(root, needles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--home", default=None, help="reuse bench.search_scale's --home")
    parser.add_argument("--skip-lancedb", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="lamina-life-"))
    cache = home / "bench_cache"
    cache.mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out)
    out: dict[str, Any] = {}
    st = Stages(lambda: write_result(out_path, out))
    out |= {
        "what": "annotate, delete and erase at scale: Lamina vs LanceDB",
        "units": "seconds per operation (perf_counter); latency ms; checks are counts",
        "machine": machine_info(),
        "config": vars(args) | {"k": K},
        "stages": st.records,
    }
    data = load_or_generate(cache, args.n, args.dim, 200, args.seed)
    src = f"scale_n{args.n}_s{args.seed}"
    with st.stage("lamina_collection") as rec:
        ids, info = ensure_collection(home, cache, src, data, args.seed, None)
        rec.update(info)
    run_lamina(home, src, data, ids, st, args)
    if not args.skip_lancedb:
        run_lancedb(home, data, st, args)
    out["summary"] = summary(st.records)
    write_result(out_path, out)
    print(json.dumps(out["summary"], indent=2))


def summary(rec: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Seconds per operation side by side, and LanceDB / Lamina ratios."""
    rows: dict[str, Any] = {}
    for op in ("annotate_1pct", "annotate_all", "delete_1pct", "erase", "retrain_index"):
        a = rec.get(f"lamina_{op}", {}).get("seconds")
        b = rec.get(f"lancedb_{op}", {}).get("seconds")
        rows[op] = {
            "lamina_s": a,
            "lancedb_s": b,
            "lancedb_over_lamina": round(b / a, 2) if a and b else None,
        }
    return rows


if __name__ == "__main__":
    main()
