"""One search shard: the single-machine planner over the segments a coordinator assigns it.

A :class:`ShardWorker` holds, per collection, :class:`CollectionView` objects restricted to the
segments named by the coordinator (``search.sharded``); every call names the segment list and
the collection-wide schema it was planned with, so a shard never answers on another snapshot
than its peers. Views are keyed by (segment ids, ANN index key) and the last two are kept (the
previous snapshot answers while the next one is prepared). The class is plain Python; the
coordinator runs it as a Ray actor (one process per shard replica).

Everything returned is plain data (numpy arrays, dicts, lists): scores are the planner's exact
float32 scores, so a merge at the coordinator is bit-identical to one process ranking them all
-- given the same FAISS/BLAS thread count (``threads``; FAISS's multi-threaded scan rounds
differently from its one-thread scan), which the coordinator passes from its own process.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lamina.search import planner
from lamina.search.ann import AnnIndex
from lamina.search.filters import Condition
from lamina.search.segments import RESERVED_COLUMNS
from lamina.search.slide_ranking import slide_groups, top_values
from lamina.search.store import Snapshot, Store
from lamina.search.views import CollectionView

KEEP_VIEWS = 2


def rss_bytes() -> int:
    """Resident set size of this process (bytes; 0 where /proc is not available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class ShardWorker:
    """Search over a subset of each collection's segments (see the module doc)."""

    def __init__(self, home: str, shard: int, replica: int, threads: int | None = None) -> None:
        if threads is not None:  # FAISS's kernels round differently with another thread count
            import faiss

            faiss.omp_set_num_threads(threads)
        self.store = Store(home)
        self.shard = shard
        self.replica = replica
        self._views: dict[str, OrderedDict[tuple[Any, ...], CollectionView]] = {}
        self._lock = threading.Lock()
        self.started = time.time()

    # -- views --------------------------------------------------------------------------------
    def _view(
        self,
        name: str,
        snapshot_id: str,
        segment_ids: Sequence[str],
        ann_key: Any,
        schema: Mapping[str, str] | None,
    ) -> CollectionView:
        key = (snapshot_id, tuple(segment_ids), ann_key)
        with self._lock:
            views = self._views.setdefault(name, OrderedDict())
            view = views.get(key)
            if view is not None:
                views.move_to_end(key)
        if view is None:
            col = self.store.collection(name)
            wanted = set(segment_ids)
            snap = col.snapshot()
            segs = tuple(s for s in snap.segments if s.segment_id in wanted)
            if len(segs) != len(wanted):
                gone = sorted(wanted - {s.segment_id for s in segs})
                raise FileNotFoundError(f"segments no longer listed: {', '.join(gone)}")
            prev = next(reversed(views.values()), None) if views else None
            ann = AnnIndex.load(col)
            old = prev.ann if prev is not None else None
            if ann is not None and old is not None and old.version == ann.version:
                ann = old  # keeps the per-segment parts already loaded
            view = CollectionView(col, Snapshot(snapshot_id, segs), ann=ann)
            with self._lock:
                views[key] = view
                while len(views) > KEEP_VIEWS:
                    views.popitem(last=False)
        if schema is not None and view.schema != dict(schema):
            # filters and hit metadata follow the whole collection's schema, as in one process
            view.schema = dict(schema)
            view.metadata_columns = [c for c in schema if c not in RESERVED_COLUMNS]
        return view

    def prepare(
        self,
        name: str,
        snapshot_id: str,
        segment_ids: Sequence[str],
        ann_key: Any,
        schema: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Open the view of these segments; each healthy segment's columns (name, type)."""
        view = self._view(name, snapshot_id, segment_ids, ann_key, None)
        return {
            "schemas": {r.segment_id: list(r.schema.items()) for r in view.readers},
            "n_tiles": view.n_tiles,
            "missing_segments": view.missing_segments,
            "has_ann": view.ann is not None,
        }

    # -- tile search --------------------------------------------------------------------------
    def search(
        self,
        name: str,
        snapshot_id: str,
        segment_ids: Sequence[str],
        ann_key: Any,
        schema: Mapping[str, str],
        queries: np.ndarray,
        k: int,
        conds: Sequence[Condition],
        params: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """Per query row: this shard's top-k (scores, tile ids, rows); plan and match count."""
        view = self._view(name, snapshot_id, segment_ids, ann_key, schema)
        if view.n_tiles == 0:
            empty: tuple[np.ndarray, np.ndarray, list[Any]] = (
                np.zeros(0, np.float32),
                np.zeros(0, np.int64),
                [],
            )
            return {"found": [empty] * len(queries), "plan": {}, "matched": 0}
        t0 = time.perf_counter()
        ranked, plan = planner.search(view, queries, k, conds, params)
        found = [
            (r.scores, view.tile_ids_at(r.positions), view.rows_at(r.positions)) for r in ranked
        ]
        out = plan.to_dict()
        out["ms"]["shard"] = round((time.perf_counter() - t0) * 1000, 3)  # this call, in here
        return {"found": found, "plan": out, "matched": plan.matched}

    # -- lookups ------------------------------------------------------------------------------
    def tiles(
        self,
        name: str,
        snapshot_id: str,
        segment_ids: Sequence[str],
        ann_key: Any,
        schema: Mapping[str, str],
        tile_ids: Sequence[int],
        vectors: bool,
    ) -> dict[int, tuple[dict[str, Any], np.ndarray | None]]:
        """Rows (and vectors) of the given tile ids that live on this shard."""
        view = self._view(name, snapshot_id, segment_ids, ann_key, schema)
        rows = view.tile_rows(tile_ids)
        out: dict[int, tuple[dict[str, Any], np.ndarray | None]] = {}
        if not rows:
            return out
        ids = list(rows)
        vecs = view.tile_vectors(ids) if vectors else None
        for i, t in enumerate(ids):
            out[t] = (rows[t], None if vecs is None else vecs[i])
        return out

    def sources(
        self,
        name: str,
        snapshot_id: str,
        segment_ids: Sequence[str],
        ann_key: Any,
        schema: Mapping[str, str],
        query: str,
        params: Sequence[Any],
    ) -> list[dict[str, Any]]:
        """A read-only SQL lookup on this shard's ``tiles`` / ``sources`` (rows, not aggregates)."""
        view = self._view(name, snapshot_id, segment_ids, ann_key, schema)
        return view.sql(query, params) if view.readers else []

    def source_tiles(
        self,
        name: str,
        snapshot_id: str,
        segment_ids: Sequence[str],
        ann_key: Any,
        schema: Mapping[str, str],
        source_id: str,
    ) -> tuple[bool, np.ndarray]:
        """(whether the source is on this shard, its tile ids)."""
        view = self._view(name, snapshot_id, segment_ids, ann_key, schema)
        codes, names = view.codes("source_id")
        known = any(
            r.sources.num_rows and source_id in r.sources.column("source_id").to_pylist()
            for r in view.readers
        )
        if source_id not in names:
            return known, np.zeros(0, np.int64)
        pos = np.flatnonzero(codes == names.index(source_id))
        return True, view.tile_ids_at(pos)

    # -- slide-level ranking ------------------------------------------------------------------
    def slides(
        self,
        name: str,
        snapshot_id: str,
        segment_ids: Sequence[str],
        ann_key: Any,
        schema: Mapping[str, str],
        queries: np.ndarray,
        conds: Sequence[Condition],
        top_m: int,
        per_group: int,
        only: Sequence[str] | None,
    ) -> dict[str, Any]:
        """Per source on this shard (all, or those in ``only``): its matching tiles' count,
        the ``top_m`` best scores per query (descending, -inf padded) and its ``per_group``
        best tiles (max over queries) as (score, tile id, segment id, row)."""
        from lamina.search.cohorts import score_positions

        view = self._view(name, snapshot_id, segment_ids, ann_key, schema)
        g = slide_groups(view, conds)
        codes = np.flatnonzero(g.counts > 0)
        if only is not None:
            wanted = set(only)
            codes = np.asarray([c for c in codes if g.names[c] in wanted], np.int64)
        nq = len(queries)
        top = np.full((nq, len(codes), top_m), -np.inf, np.float32)
        best = np.full((len(codes), per_group), -np.inf, np.float32)
        best_ids = np.full((len(codes), per_group), -1, np.int64)
        best_seg = np.full((len(codes), per_group), -1, np.int64)
        best_row = np.full((len(codes), per_group), -1, np.int64)
        seg_names = [r.segment_id for r in view.readers]
        if len(codes):
            spans = [g.positions[g.starts[c] : g.starts[c] + g.counts[c]] for c in codes]
            pos = np.concatenate(spans)
            order = np.argsort(pos, kind="stable")
            sims = np.empty((nq, len(pos)), np.float32)
            sims[:, order] = score_positions(view, queries, pos[order])
            at = 0
            for i, span in enumerate(spans):
                s = sims[:, at : at + len(span)]
                top[:, i, :] = top_values(s, top_m)
                b = s.max(axis=0)
                pick = np.argsort(-b, kind="stable")[:per_group]
                n = len(pick)
                best[i, :n] = b[pick]
                chosen = span[pick]
                best_ids[i, :n] = view.tile_ids_at(chosen)
                seg, row = view.locate(chosen)
                best_seg[i, :n] = seg
                best_row[i, :n] = row
                at += len(span)
        return {
            "names": [g.names[c] for c in codes],
            "counts": g.counts[codes].astype(np.int64),
            "top": top,
            "best": best,
            "best_ids": best_ids,
            "best_seg": [[seg_names[s] if s >= 0 else "" for s in row] for row in best_seg],
            "best_row": best_row,
        }

    def count(
        self,
        name: str,
        snapshot_id: str,
        segment_ids: Sequence[str],
        ann_key: Any,
        schema: Mapping[str, str],
        conds: Sequence[Condition],
        source_id: str | None,
    ) -> tuple[int, int]:
        """(tiles matching ``conds``, of which belong to ``source_id``) on this shard."""
        view = self._view(name, snapshot_id, segment_ids, ann_key, schema)
        g = slide_groups(view, conds)
        own = int(g.counts[g.names.index(source_id)]) if source_id in g.names else 0
        return len(g.positions), own

    # -- status -------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What this shard holds: per collection its current view, and its memory."""
        with self._lock:
            current = {n: next(reversed(v.values())) for n, v in self._views.items() if v}
        return {
            "shard": self.shard,
            "replica": self.replica,
            "pid": os.getpid(),
            "node": os.uname().nodename,
            "rss_bytes": rss_bytes(),
            "collections": {
                n: {
                    "snapshot": v.snapshot.id,
                    "segments": len(v.readers),
                    "tiles": v.n_tiles,
                    "heap_bytes": v.memory_bytes(),
                    "vector_bytes": sum(r.info.vector_bytes for r in v.readers),
                }
                for n, v in current.items()
            },
        }

    def ping(self) -> int:
        return os.getpid()

    def call(self, method: str, args: tuple[Any, ...]) -> Any:
        """``method(*args)``: the coordinator's one entry point (one argument to serialise
        per call instead of one per parameter)."""
        if method not in _METHODS:
            raise ValueError(f"no shard method {method!r}")
        return getattr(self, method)(*args)


_METHODS = frozenset({"prepare", "search", "tiles", "sources", "source_tiles", "slides", "count"})
