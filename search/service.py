"""The search service: works without any web layer (the CLI and the Flask app are thin shells).

It keeps one :class:`CollectionView` per collection and swaps in a new one whenever another
process commits segments, so a long-running server sees new data without a restart. Every
result names the snapshot it was computed on.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from search.errors import InvalidQueryError
from search.filters import Condition, compile_conditions, parse_filters, quote_ident
from search.store import Collection, Store
from search.views import CollectionView

EXACT_SUBSET_LIMIT = 200_000
MAX_K = 10_000


@dataclass
class Hit:
    tile_id: int
    score: float
    source_id: str
    source: str
    x: int
    y: int
    size_px: int
    mpp: float | None
    metadata: dict[str, Any]
    level: int = 0
    tile_px: int | None = None
    kind: str = "photo"
    tissue_fraction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Group:
    key: str
    value: Any
    score: float
    n_hits: int
    hits: list[Hit]

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "value": self.value,
            "score": self.score,
            "n_hits": self.n_hits,
            "hits": [h.to_dict() for h in self.hits],
        }


@dataclass
class SearchResult:
    collection: str
    snapshot: str
    encoder: str
    hits: list[Hit]
    groups: list[Group] | None = None
    query: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": True,
            "collection": self.collection,
            "snapshot": self.snapshot,
            "encoder": self.encoder,
            "hits": [h.to_dict() for h in self.hits],
        }
        if self.groups is not None:
            out["groups"] = [g.to_dict() for g in self.groups]
        if self.query:
            out["query"] = self.query
        return out


class SearchService:
    """Vector + metadata search over the collections of one home."""

    def __init__(self, store: Store, save_index: bool = True) -> None:
        self.store = store
        self.save_index = save_index
        self._views: dict[str, CollectionView] = {}
        self._lock = threading.Lock()

    def collection(self, name: str) -> Collection:
        return self.store.collection(name)

    def view(self, name: str) -> CollectionView:
        """The current view of ``name``, rebuilt if segments were committed since the last call."""
        col = self.store.collection(name)
        snap = col.snapshot()
        current = self._views.get(name)
        if current is not None and current.snapshot.id == snap.id:
            return current
        with self._lock:
            current = self._views.get(name)
            if current is not None and current.snapshot.id == snap.id:
                return current
            factory = str(col.info.get("index_factory", "Flat"))
            view = CollectionView(
                col, snap, factory=factory, previous=current, save_index=self.save_index
            )
            self._views[name] = view
            return view

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
        view: CollectionView | None = None,
    ) -> SearchResult:
        """k nearest tiles to ``vector`` among those matching the filters (filtered first)."""
        view = view or self.view(collection)
        col = view.collection
        if fingerprint is not None:
            col.check_fingerprint(fingerprint)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise InvalidQueryError(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
        q = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != col.dim:
            raise InvalidQueryError(
                f"query vector has {q.shape[1]} dimensions; collection {col.name!r} has {col.dim}"
            )
        if not np.all(np.isfinite(q)):
            raise InvalidQueryError("query vector contains NaN or infinity")
        norm = float(np.linalg.norm(q))
        if norm == 0:
            raise InvalidQueryError("query vector is all zeros")
        q = q / norm
        conds = list(conditions or []) + parse_filters(filters, filter_json)
        where, params = compile_conditions(conds, view.schema)
        if exclude_same:
            where, params = self._exclude_same(view, exclude_same, query_tile_id, where, params)
        allowed = None if where == "TRUE" else view.matching_positions(where, params)
        group_col = self._group_column(view, group_by)
        if group_col is None:
            scores, pos = self._rank(view, q, k, allowed)
            hits = self._hits(view, scores, pos)
            groups = None
        else:
            hits, groups = self._grouped(view, q, k, allowed, group_col, per_group)
        return SearchResult(
            collection=col.name,
            snapshot=view.snapshot.id,
            encoder=col.fingerprint,
            hits=hits,
            groups=groups,
        )

    def search_tile(
        self, collection: str, tile_id: int, k: int = 10, **kwargs: Any
    ) -> SearchResult:
        view = self.view(collection)
        vec = view.tile_vectors([int(tile_id)])[0]
        return self.search(collection, vec, k, query_tile_id=int(tile_id), view=view, **kwargs)

    # -- internals --------------------------------------------------------------------------
    def _exclude_same(
        self,
        view: CollectionView,
        column: str,
        query_tile_id: int | None,
        where: str,
        params: list[Any],
    ) -> tuple[str, list[Any]]:
        if column not in view.schema:
            raise InvalidQueryError(f"exclude_same: unknown column {column!r}")
        if query_tile_id is None:
            raise InvalidQueryError("exclude_same needs a stored query (tile_id or region)")
        value = view.tile(query_tile_id).get(column)
        if value is None:
            return where, params
        return f"({where}) AND {quote_ident(column)} IS DISTINCT FROM ?", [*params, value]

    def _group_column(self, view: CollectionView, group_by: str | None) -> str | None:
        if group_by in (None, ""):
            return None
        if group_by == "slide" or group_by == "source":
            return "source_id"
        if group_by == "patient":
            col = str(view.collection.info.get("patient_column") or "patient_id")
            if col not in view.schema:
                raise InvalidQueryError(
                    f"group_by=patient needs a {col!r} metadata column in {view.collection.name!r}"
                )
            return col
        raise InvalidQueryError(f"group_by must be 'slide' or 'patient', not {group_by!r}")

    def _rank(
        self, view: CollectionView, q: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if allowed is None:
            scores, pos = view.index.search(q, k)
            scores, pos = scores[0], pos[0]
            keep = pos >= 0
            return scores[keep], pos[keep]
        if len(allowed) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        k = min(k, len(allowed))
        if len(allowed) <= EXACT_SUBSET_LIMIT:
            return _exact_topk(view.vectors, q[0], k, allowed)
        scores, pos = view.index.search(q, k, positions=allowed)
        scores, pos = scores[0], pos[0]
        keep = pos >= 0
        if keep.sum() < k:  # approximate index missed some: fall back to exact
            return _exact_topk(view.vectors, q[0], k, allowed)
        return scores[keep], pos[keep]

    def _hits(self, view: CollectionView, scores: np.ndarray, pos: np.ndarray) -> list[Hit]:
        tile_ids = view.index.tile_ids[pos]
        rows = view.tile_rows(tile_ids.tolist())
        return [_hit(view, rows[int(t)], float(s)) for t, s in zip(tile_ids, scores, strict=True)]

    def _grouped(
        self,
        view: CollectionView,
        q: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
        column: str,
        per_group: int,
    ) -> tuple[list[Hit], list[Group]]:
        n_avail = view.n_tiles if allowed is None else len(allowed)
        fetch = min(n_avail, max(100, k * per_group * 10))
        while True:
            scores, pos = self._rank(view, q, fetch, allowed)
            hits = self._hits(view, scores, pos)
            groups: dict[Any, list[Hit]] = {}
            for h in hits:
                value = h.source_id if column == "source_id" else h.metadata.get(column)
                groups.setdefault(value, []).append(h)
            if len(groups) >= k or fetch >= n_avail:
                break
            fetch = min(n_avail, fetch * 4)
        ranked = sorted(groups.items(), key=lambda kv: -kv[1][0].score)[:k]
        key = "slide" if column == "source_id" else column
        out = [
            Group(key=key, value=v, score=g[0].score, n_hits=len(g), hits=g[:per_group])
            for v, g in ranked
        ]
        return hits[:k], out


def _exact_topk(
    vectors: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    scores = vectors[allowed] @ q
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    top = top[np.lexsort((allowed[top], -scores[top]))]
    return scores[top].astype(np.float32), allowed[top]


def _hit(view: CollectionView, row: dict[str, Any], score: float) -> Hit:
    mpp = row.get("mpp")
    tf = row.get("tissue_fraction")
    return Hit(
        tile_id=int(row["tile_id"]),
        score=round(score, 6),
        source_id=str(row["source_id"]),
        source=str(row["source"]),
        x=int(row["x"]),
        y=int(row["y"]),
        size_px=int(row["size_px"]),
        mpp=None if mpp is None or mpp != mpp else float(mpp),
        metadata=view.metadata_of(row),
        level=int(row.get("level") or 0),
        tile_px=None if row.get("tile_px") is None else int(row["tile_px"]),
        kind=str(row.get("kind") or "photo"),
        tissue_fraction=None if tf is None or tf != tf else round(float(tf), 4),
    )
