"""The search service: works without any web layer (the CLI and the Flask app are thin shells).

It keeps one :class:`CollectionView` per collection. When another process commits segments (or
an index version lands) the next call notices it with one directory listing; in ``background``
mode (the server) the new view -- the readers of the new segments only -- is prepared in a
thread while requests keep answering on the previous one, and in ``sync`` mode (the CLI) it is
built before answering. Each collection has its own lock; no lock spans collections. Every
result names the snapshot it was computed on and the plan that answered it. In background mode
the service also keeps the collection's ANN index up to date (``search.ann.update_index``) in
a thread, so new segments get indexed and a changed factory gets built while searches go on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lamina.search import planner
from lamina.search.ann import AnnIndex, update_index
from lamina.search.columns import column_by_name, group_column
from lamina.search.compaction import cluster
from lamina.search.errors import FilterError, InvalidQueryError
from lamina.search.filters import Condition, parse_filters, value_warnings
from lamina.search.index_spec import index_slug
from lamina.search.results import (
    MAX_K,
    Group,
    Hit,
    Ranking,
    SearchResult,
    check_offset,
    hit_from_row,
    unit_queries,
)
from lamina.search.segment_reader import forget_readers
from lamina.search.store import Collection, Store
from lamina.search.views import CollectionView

MAX_BATCH = 1_000
log = logging.getLogger(__name__)


class _State:
    """Per-collection service state: the current view and whether a refresh/build runs."""

    def __init__(self) -> None:
        self.view: CollectionView | None = None
        self.key: tuple[Any, ...] | None = None
        self.lock = threading.Lock()
        self.refreshing = False
        self.building = False
        self.build_error: str | None = None
        self.stamp: tuple[int, ...] | None = None  # file times the view was checked against


class SearchService:
    """Vector + metadata search over the collections of one home."""

    def __init__(self, store: Store, save_index: bool = True, background: bool = False) -> None:
        self.store = store
        self.save_index = save_index  # kept for callers; indexes are always persisted
        self.background = background
        self._states: dict[str, _State] = {}
        self._states_lock = threading.Lock()

    def collection(self, name: str) -> Collection:
        return self.store.collection(name)

    def forget(self, name: str) -> None:
        """Drop the cached view of ``name`` (its collection was dropped)."""
        with self._states_lock:
            self._states.pop(name, None)

    def _state(self, name: str) -> _State:
        with self._states_lock:
            return self._states.setdefault(name, _State())

    @staticmethod
    def _key(col: Collection) -> tuple[Any, ...]:
        snap = col.snapshot()
        pointer = col.index_dir / f"{index_slug(col.index_factory)}.json"
        try:
            mtime = pointer.stat().st_mtime_ns
        except OSError:
            mtime = 0
        return (snap.id, col.index_factory, mtime, snap)

    def view(self, name: str, wait: bool | None = None) -> CollectionView:
        """The current view of ``name``. A changed snapshot is prepared off the request path in
        background mode (the previous view answers meanwhile); ``wait=True`` forces a fresh one."""
        state = self._state(name)
        current = state.view
        stamp = _stamp(current) if current is not None and not wait else None
        if stamp is not None and stamp == state.stamp:
            return current  # type: ignore[return-value]
        col = self.store.collection(name)
        key = self._key(col)
        if current is not None and state.key is not None and state.key[:3] == key[:3]:
            current.collection.info = col.info  # settings (column roles...) as now on disk
            state.stamp = stamp
            return current
        if current is None or wait or (wait is None and not self.background):
            return self._refresh(name, col, state, key)
        with state.lock:
            start = not state.refreshing
            state.refreshing = True
        if start:
            threading.Thread(
                target=self._refresh_bg, args=(name, col, state, key), daemon=True
            ).start()
        return current

    def _refresh_bg(self, name: str, col: Collection, state: _State, key: tuple[Any, ...]) -> None:
        try:
            self._refresh(name, col, state, key)
        except Exception:  # noqa: BLE001 - the next request retries; never kill the server
            log.exception("preparing a new snapshot of %s failed", name)
        finally:
            state.refreshing = False

    def _refresh(
        self, name: str, col: Collection, state: _State, key: tuple[Any, ...]
    ) -> CollectionView:
        with state.lock:
            if state.view is not None and state.key is not None and state.key[:3] == key[:3]:
                return state.view
            prev = state.view
            ann = AnnIndex.load(col)
            if (
                ann is not None
                and prev is not None
                and prev.ann is not None
                and prev.ann.version == ann.version
            ):
                ann = prev.ann  # keeps the per-segment parts already loaded
            for attempt in range(3):
                try:
                    view = CollectionView(col, key[3], ann=ann)
                    break
                except FileNotFoundError:
                    # a compaction retired a listed segment: list again (its merge is there)
                    if attempt == 2:
                        raise
                    key = self._key(col)
            state.view, state.key, state.stamp = view, key, None
            forget_readers(str(col.segments_dir), view.snapshot.segments)
        if self.background:
            self._maybe_build(name, col, view, state)
        return view

    def _maybe_build(self, name: str, col: Collection, view: CollectionView, state: _State) -> None:
        if col.index_factory == "Flat" or state.building or view.n_tiles == 0:
            return
        ann = view.ann
        if ann is not None and all(ann.sidecar(r.segment_id).exists() for r in view.readers):
            return
        state.building = True

        def run() -> None:
            try:
                update_index(col)
                cluster(col)  # lists as contiguous runs of rows (skipped while an ingest runs)
                state.build_error = None
            except Exception as exc:  # noqa: BLE001 - reported by status, searches go on exactly
                state.build_error = str(exc)
                log.warning("building the %s index of %s failed: %s", col.index_factory, name, exc)
            finally:
                state.building = False
            if state.build_error is None:
                try:
                    self.view(name, wait=True)
                except Exception:  # noqa: BLE001
                    log.exception("refreshing %s after an index build failed", name)

        threading.Thread(target=run, daemon=True).start()

    def build_error(self, name: str) -> str | None:
        return self._state(name).build_error

    def held_view(self, name: str) -> CollectionView | None:
        """The view of ``name`` this service already answers on, or None when it has not
        opened one (never opens one: describing a collection need not map its vectors)."""
        with self._states_lock:
            state = self._states.get(name)
        return None if state is None else state.view

    # -- search -----------------------------------------------------------------------------
    def search(
        self,
        collection: str,
        vector: np.ndarray | Sequence[float],
        k: int = 10,
        *,
        filters: Sequence[str] | None = None,
        filter_json: Mapping[str, Any] | None = None,
        conditions: Sequence[Condition] | None = None,
        group_by: str | None = None,
        exclude_same: str | None = None,
        query_tile_id: int | None = None,
        fingerprint: str | None = None,
        per_group: int = 3,
        params: Mapping[str, Any] | None = None,
        view: CollectionView | None = None,
        partial: bool = False,
        offset: int = 0,
    ) -> SearchResult:
        """k nearest tiles to ``vector`` among those matching the filters (filtered first).
        ``partial`` lets a sharded service answer without unreachable shards (and say so).
        ``offset`` skips that many of the best hits (groups, when grouped): ranks
        ``offset .. offset + k - 1`` of the same ranking, so pages concatenate to the top
        ``offset + k``."""
        view = view or self.view(collection)
        return self._search_many(
            view,
            np.asarray(vector, dtype=np.float32).reshape(1, -1),
            k,
            filters=filters,
            filter_json=filter_json,
            conditions=conditions,
            group_by=group_by,
            exclude_same=exclude_same,
            query_tile_id=query_tile_id,
            fingerprint=fingerprint,
            per_group=per_group,
            params=params,
            partial=partial,
            offset=offset,
        )[0]

    def search_batch(
        self,
        collection: str,
        vectors: np.ndarray | Sequence[Sequence[float]],
        k: int = 10,
        *,
        filters: Sequence[str] | None = None,
        filter_json: Mapping[str, Any] | None = None,
        fingerprint: str | None = None,
        params: Mapping[str, Any] | None = None,
        partial: bool = False,
        offset: int = 0,
    ) -> list[SearchResult]:
        """Many query vectors against one snapshot, ranked together (one scan per segment);
        ``offset`` as in :meth:`search`, for every query."""
        q = np.asarray(vectors, dtype=np.float32)
        if q.ndim != 2 or not 1 <= len(q) <= MAX_BATCH:
            raise InvalidQueryError(
                f"a batch is a list of 1 to {MAX_BATCH} vectors, got shape {tuple(q.shape)}"
            )
        return self._search_many(
            self.view(collection),
            q,
            k,
            filters=filters,
            filter_json=filter_json,
            fingerprint=fingerprint,
            params=params,
            partial=partial,
            offset=offset,
        )

    def search_tile(
        self, collection: str, tile_id: int, k: int = 10, **kwargs: Any
    ) -> SearchResult:
        view = self.view(collection)
        vec = view.tile_vectors([int(tile_id)])[0]
        return self.search(collection, vec, k, query_tile_id=int(tile_id), view=view, **kwargs)

    def _search_many(
        self,
        view: CollectionView,
        q: np.ndarray,
        k: int,
        *,
        filters: Sequence[str] | None = None,
        filter_json: Mapping[str, Any] | None = None,
        conditions: Sequence[Condition] | None = None,
        group_by: str | None = None,
        exclude_same: str | None = None,
        query_tile_id: int | None = None,
        fingerprint: str | None = None,
        per_group: int = 3,
        params: Mapping[str, Any] | None = None,
        partial: bool = False,
        offset: int = 0,
    ) -> list[SearchResult]:
        col = view.collection
        if fingerprint is not None:
            col.check_fingerprint(fingerprint)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise InvalidQueryError(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
        check_offset(offset, k)
        query = {"offset": offset} if offset else {}
        q = unit_queries(q, col.dim, col.name)
        conds = list(conditions or []) + parse_filters(filters, filter_json)
        for c in conds:
            if c.column not in view.schema:
                known = ", ".join(sorted(view.schema))
                raise FilterError(f"unknown filter column {c.column!r}; columns: {known}")
        warnings = value_warnings(conds, view.schema, view.distinct_values)
        if exclude_same:
            conds += self._exclude_same(view, exclude_same, query_tile_id)
        group_col = self._group_column(view, group_by)
        out = []
        if group_col is None:
            ranking = self._rank(view, q, offset + k, conds, params, partial)
            for hits in ranking.hits:
                out.append(
                    SearchResult(
                        collection=col.name,
                        snapshot=view.snapshot.id,
                        encoder=col.fingerprint,
                        hits=hits[offset:],
                        query=dict(query),
                        plan=ranking.plan,
                        missing_segments=view.missing_segments,
                        missing_shards=ranking.missing_shards,
                        warnings=warnings,
                    )
                )
            return out
        for row in q:
            hits, groups, ranking = self._grouped(
                view, row[None], offset + k, conds, group_col, per_group, params, partial
            )
            out.append(
                SearchResult(
                    collection=col.name,
                    snapshot=view.snapshot.id,
                    encoder=col.fingerprint,
                    hits=hits[offset:],
                    groups=groups[offset:],
                    query=dict(query),
                    plan=ranking.plan,
                    missing_segments=view.missing_segments,
                    missing_shards=ranking.missing_shards,
                    warnings=warnings,
                )
            )
        return out

    def _rank(
        self,
        view: Any,
        q: np.ndarray,
        k: int,
        conds: list[Condition],
        params: Mapping[str, Any] | None,
        partial: bool = False,
    ) -> Ranking:
        """The planner's top-k per query row as hits (the sharded service fans this out; one
        process has no shards to miss, so ``partial`` changes nothing here)."""
        ranked, plan = planner.search(view, q, k, conds, params)
        hits = [self._hits(view, r.scores, r.positions) for r in ranked]
        return Ranking(hits, plan.to_dict(), plan.matched)

    def rank_slides(self, collection: str, *, offset: int = 0, **kwargs: Any) -> SearchResult:
        """Slide-level ranking (:func:`search.slide_ranking.rank_slides`); ``offset`` skips
        that many of the best slides (ranks ``offset .. offset + k - 1``)."""
        k = kwargs.get("k", 10)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise InvalidQueryError(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
        check_offset(offset, k)
        res = self._rank_slides(collection, **{**kwargs, "k": offset + k})
        if offset:
            res.groups = (res.groups or [])[offset:]
            res.hits = res.hits[offset:]
            res.query = {**res.query, "offset": offset}
        return res

    def _rank_slides(self, collection: str, **kwargs: Any) -> SearchResult:
        from lamina.search.slide_ranking import rank_slides

        kwargs.pop("partial", None)  # one process has no shards to miss
        return rank_slides(self, collection, **kwargs)

    # -- internals --------------------------------------------------------------------------
    def _exclude_same(
        self, view: CollectionView, column: str, query_tile_id: int | None
    ) -> list[Condition]:
        column = column_by_name(view, column, "exclude_same")
        if query_tile_id is None:
            raise InvalidQueryError("exclude_same needs a stored query (tile_id or region)")
        value = view.tile(query_tile_id).get(column)
        if value is None:
            return []
        return [Condition(column, "ne", (value,))]

    def _group_column(self, view: CollectionView, group_by: str | None) -> str | None:
        if group_by in (None, ""):
            return None
        return group_column(view, str(group_by))

    def _hits(self, view: CollectionView, scores: np.ndarray, pos: np.ndarray) -> list[Hit]:
        rows = view.rows_at(pos)
        return [hit_from_row(view, row, float(s)) for row, s in zip(rows, scores, strict=True)]

    def _grouped(
        self,
        view: Any,
        q: np.ndarray,
        k: int,
        conds: list[Condition],
        column: str,
        per_group: int,
        params: Mapping[str, Any] | None,
        partial: bool = False,
    ) -> tuple[list[Hit], list[Group], Ranking]:
        """The k best groups: fetch ever more ranked tiles (x4) until they hold k groups or
        every matching tile. Tiles without a value in ``column`` belong to no group. A group
        is ranked by its best tile (the first of its tiles in the ranking), so the first k
        distinct groups of the ranking are the k best; the answer's hits are their best
        tiles, one per group, in that order."""
        conds = [*conds, Condition(column, "ne", (None,))]
        fetch = max(100, k * per_group * 10)  # the planner clamps it to the matching tiles
        while True:
            ranking = self._rank(view, q, fetch, conds, params, partial)
            hits = ranking.hits[0]
            n_avail = ranking.matched
            groups: dict[Any, list[Hit]] = {}
            for h in hits:
                value = h.source_id if column == "source_id" else h.metadata.get(column)
                groups.setdefault(_hashable(value), []).append(h)
            if len(groups) >= k or fetch >= n_avail:
                break
            fetch = min(n_avail, fetch * 4)
        ranked_groups = list(groups.values())[:k]  # first appearance = best tile, in rank order
        key = "slide" if column == "source_id" else column
        best = [g[0] for g in ranked_groups]
        values = [h.source_id if column == "source_id" else h.metadata.get(column) for h in best]
        counts = view.group_counts(column, conds, [h.tile_id for h in best], values)
        out = [
            Group(
                key=key,
                value=v,
                score=g[0].score,
                n_hits=n,
                hits=g[:per_group],
                name=g[0].source if column == "source_id" else None,
            )
            for v, g, n in zip(values, ranked_groups, counts, strict=True)
        ]
        return best, out, ranking


def _hashable(value: Any) -> Any:
    """A dict key for a group value (lists, from list-typed columns, become tuples)."""
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


_SETTLED_NS = 100_000_000  # file times older than this cannot hide a later change


def _stamp(view: CollectionView) -> tuple[int, ...] | None:
    """Modification times of what makes a view current: the segments directory (a commit or
    compaction renames an entry in it), collection.json (factory, params) and the index
    pointer. Equal stamps mean nothing changed -- trusted only once every time is older than
    the file system's time granularity could blur (two renames in one tick share a time), so
    a fresh change is always confirmed by a listing. None: not trusted, list."""
    col = view.collection
    try:
        segs = os.stat(col.segments_dir).st_mtime_ns
        info = os.stat(col.path / "collection.json")
    except OSError:
        return None
    try:
        ptr = os.stat(col.index_dir / f"{index_slug(col.index_factory)}.json").st_mtime_ns
    except OSError:
        ptr = 0
    if time.time_ns() - max(segs, info.st_mtime_ns, ptr) < _SETTLED_NS:
        return None
    return (segs, info.st_mtime_ns, info.st_ino, ptr)
