"""Lamina's side of the search-at-scale benchmark: its search stages and child-process stages.

On one collection written through the store's public API (:func:`ensure_collection`; tile ids
map back to rows of the generated data), :class:`LaminaStages` measures, one stage at a time:

- ``flat`` / ``ivf`` / ``ivf_collection_params``: ``SearchService.search`` per filter (recall
  fractions, p50/p99 ms, batch queries/s, see bench/scale_measure.py), with the Flat index, then
  ``IVF<nlist>,Flat`` with nprobe per request, then with nprobe stored with the collection;
  index build and clustering in seconds, the first search (opens the view) in seconds, VmRSS /
  VmHWM in MB after it;
- ``cold_start``: a new process (``python -m bench.search_scale --child cold``) from start to its
  first answer in seconds (page cache warm), then a query per filter in ms, and its resident
  memory in MB against the vector bytes;
- ``slide_search``: slide-level ranking, ms per query (first call, which warms caches, dropped);
- ``export``: a labelled set of every row and of 200 tiles with 10 neighbours each, seconds;
- ``cohort``: a cohort of up to 100k nearest tiles, seconds.

:func:`commit_to_visible`: seconds from a 100-tile commit made by another process
(``--child commit``) to the first answer of this process that contains it, on a hard-linked clone
of the collection (segments are immutable; the original is never touched).

Every child prints its result as JSON on the last line of stdout.
"""

from __future__ import annotations

import gc
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.scale_data import (
    FilterSpec,
    ScaleData,
    extra_tiles,
    slide_source,
    tile_row,
    write_collection,
)
from bench.scale_measure import K, Rows, jsonable, log, measure, percentiles_ms, vm_status

REPO = Path(__file__).resolve().parents[1]
COLD_START_TIMEOUT_S = 1800
COMMIT_TIMEOUT_S = 600
VISIBLE_WITHIN_S = 300


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@dataclass
class LaminaStages:
    """Lamina's measured stages on collection ``name``; each fills its stage record ``rec``.

    ``svc`` is the service the search stages share (a fresh one per index configuration);
    :meth:`release` drops it so that the next stage starts without its views.
    """

    home: Path
    name: str
    queries: np.ndarray  # (n_queries, dim) float32 unit rows
    queries_path: Path  # the same queries as .npy, for child processes
    filters: list[FilterSpec]
    gts: list[np.ndarray]  # exact top-K rows per filter
    ids: np.ndarray  # the collection's tile ids in row order
    vector_bytes: int  # float32 bytes of every vector (n x dim x 4)
    svc: Any = None
    col: Any = field(init=False)
    inv: np.ndarray = field(init=False)  # tile id -> row
    filters_json: str = field(init=False)

    def __post_init__(self) -> None:
        from lamina.search.store import Store

        self.inv = np.full(int(self.ids.max()) + 1, -1, np.int64)
        self.inv[self.ids] = np.arange(len(self.ids))
        self.col = Store(self.home).collection(self.name)
        self.filters_json = json.dumps([f.lamina for f in self.filters if f.lamina is not None])

    def release(self) -> None:
        self.svc = None
        gc.collect()

    def _open(self, rec: dict[str, Any]) -> Any:
        """A fresh service; its first answer (which opens the view) timed in seconds."""
        from lamina.search.service import SearchService
        from lamina.search.store import Store

        self.svc = SearchService(Store(self.home))
        t0 = time.perf_counter()
        first = self.svc.search(self.name, self.queries[0], k=K)
        rec["first_search_seconds"] = round(time.perf_counter() - t0, 3)
        return first

    def search_rows(
        self, system: str, request_params: dict[str, Any] | None
    ) -> tuple[Rows, dict[str, Any]]:
        """Lamina's search, one row per filter; per-request params and plans where supported."""
        svc, name, queries, inv = self.svc, self.name, self.queries, self.inv
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
        for f, gt in zip(self.filters, self.gts, strict=True):
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
                    "plan": "not available" if plan is None else jsonable(plan),
                    "snapshot": getattr(res, "snapshot", None),
                }
            )
        if not api["search_batch"]:
            api["search_batch"] = "not available"
        return rows, api

    def flat(self, rec: dict[str, Any]) -> Rows:
        """The collection with its Flat index (exact)."""
        self.col.set_index_factory("Flat")
        rec["saved_index_present"] = any(self.col.index_dir.glob("Flat.*"))
        self._open(rec)
        rec["rss_after_view"] = vm_status()
        rows, rec["api"] = self.search_rows("lamina_flat", None)
        return rows

    def cold_start(self, rec: dict[str, Any]) -> None:
        """A new process to its first answer; its resident memory against the vector bytes."""
        args = ["--child", "cold", "--home", str(self.home), "--name", self.name]
        args += ["--queries-npy", str(self.queries_path), "--filters-json", self.filters_json]
        info, wall = _child(args, timeout=COLD_START_TIMEOUT_S)
        rec.update(info, process_wall_seconds=round(wall, 3))
        rec["rss_over_vector_bytes"] = round(info.get("vmrss_mb", 0) * 2**20 / self.vector_bytes, 3)

    def slide_search(self, rec: dict[str, Any]) -> None:
        """Slide-level ranking unfiltered and at ~10 %, ms per query over up to 20 queries."""
        from lamina.search.slide_ranking import rank_slides

        for f in self.filters[:1] + [x for x in self.filters if x.name == "sel_10pct"]:
            lat = []
            for i in range(min(20, len(self.queries)) + 1):
                t0 = time.perf_counter()
                rank_slides(self.svc, self.name, vectors=self.queries[i], k=K, filter_json=f.lamina)
                if i:  # the first call warms per-view caches
                    lat.append(time.perf_counter() - t0)
            rec[f.name] = {**percentiles_ms(lat), "queries": len(lat)}

    def export(self, rec: dict[str, Any]) -> None:
        """A labelled set of every row (patient split), then of 200 tiles with 10 neighbours."""
        from lamina.search.exports import build_labeled_set

        view = self.svc.view(self.name)
        t0 = time.perf_counter()
        ls = build_labeled_set(view, "label", split_by="patient_id")
        rec.update(rows=int(ls.n), seconds=round(time.perf_counter() - t0, 3))
        del ls
        t0 = time.perf_counter()
        ls = build_labeled_set(view, "label", tile_ids=self.ids[:200].tolist(), neighbors=10)
        rec["with_neighbors_10"] = {
            "rows": int(ls.n),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        del ls, view

    def cohort(self, rec: dict[str, Any]) -> None:
        """A cohort of the min(100k, n) tiles nearest to the first query."""
        from lamina.search.catalog import Catalog
        from lamina.search.cohorts import create_cohort

        members = min(100_000, len(self.ids))
        with Catalog(self.home) as catalog:
            t0 = time.perf_counter()
            record = create_cohort(
                catalog,
                self.svc,
                "bench-scale",
                self.name,
                near_vectors=[self.queries[0]],
                k=members,
            )
            rec.update(
                members=int(record["n_tiles"]),
                version=int(record["version"]),
                seconds=round(time.perf_counter() - t0, 3),
            )

    def ivf(self, rec: dict[str, Any], factory: str, nprobe: int | None) -> Rows:
        """The IVF index: build and clustering timed, then searched at ``nprobe`` per request."""
        col = self.col
        col.set_index_factory(factory)
        rec["factory"] = factory
        rec["saved_index_present"] = (col.index_dir / f"{factory.replace(',', '_')}.json").is_file()
        try:  # the store's explicit index build, where it has one (else the first search builds)
            from lamina.search.ann import update_index
        except ImportError:
            update_index = None  # type: ignore[assignment]
        if update_index is not None:
            t0 = time.perf_counter()
            rec["index_build"] = jsonable(update_index(col))
            rec["index_build_seconds"] = round(time.perf_counter() - t0, 3)
            from lamina.search.compaction import cluster

            t0 = time.perf_counter()
            rec["clustered"] = len(cluster(col)["clustered"])
            rec["cluster_seconds"] = round(time.perf_counter() - t0, 3)
        else:
            rec["index_build"] = "not available: built by the first search"
        first = self._open(rec)
        rec["first_plan"] = jsonable(getattr(first, "plan", "not available"))
        rec["rss_after_view"] = vm_status()
        params = {"nprobe": nprobe} if nprobe else None
        rows, rec["api"] = self.search_rows("lamina_ivf", params)
        if not rec["api"]["params_supported"]:
            rec["note"] = "per-request params not available: the collection's default nprobe"
        return rows

    def ivf_collection_params(self, rec: dict[str, Any], nprobe: int | None) -> Rows:
        """The same nprobe stored with the collection instead of sent per request."""
        from lamina.search.service import SearchService
        from lamina.search.store import Store

        if not hasattr(self.col, "set_index") or not nprobe:
            rec["skipped"] = "collection-level index params not available"
            return []
        self.col.set_index(params={"nprobe": nprobe})
        self.svc = SearchService(Store(self.home))
        rows, api = self.search_rows("lamina_ivf_colparams", None)
        rec.update(api=api, index_params={"nprobe": nprobe})
        return rows


def ensure_collection(
    home: Path, cache: Path, name: str, data: ScaleData, seed: int, vector_dtype: str | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """The collection's tile ids in row order, writing the collection unless already complete."""
    from lamina.search.errors import CollectionNotFoundError
    from lamina.search.store import Store

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
    written = len(col.segments())
    # what the end of a `lamina index` run does: merge small segments past the threshold
    from lamina.search.compaction import maybe_compact

    t0 = time.perf_counter()
    compacted = maybe_compact(col) is not None
    return ids, {
        "reused": False,
        "write_seconds": round(seconds, 3),
        "tiles_per_second": round(data.n / seconds, 1),
        "segments_written": written,
        "compacted": compacted,
        "compact_seconds": round(time.perf_counter() - t0, 3),
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
    from lamina.search.service import SearchService
    from lamina.search.store import Store

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
    from lamina.search.store import Store

    vecs = np.load(vectors_path)
    col = Store(home).collection(name)
    t0 = time.perf_counter()
    w = col.writer("bench-visible")
    visible = {"patient_id": "P-visible", "site": "H01", "scan_year": 2024, "label": "tumour"}
    tiles = [tile_row(224 * i, 0, **visible) for i in range(len(vecs))]
    src = slide_source(
        f"{time.time_ns():064x}"[-64:], f"visible_{time.time_ns()}.svs", 224 * len(vecs), 224
    )
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
    from lamina.search.service import SearchService
    from lamina.search.store import Store

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
            timeout=COMMIT_TIMEOUT_S,
        )
        target = int(info["tile_ids"][0])
        polls: list[float] = []
        seen = None
        while time.time() - info["t_commit"] < VISIBLE_WITHIN_S:
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
