"""A read-only view of one collection at one snapshot: vectors, tile rows in DuckDB, FAISS index.

Views are immutable once built; the service swaps in a new view when segments are committed,
reusing the previous view's vectors and index for the segments they already cover.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np
import pyarrow.parquet as pq

from search.errors import SourceNotFoundError, TileNotFoundError
from search.segments import RESERVED_COLUMNS, SegmentInfo
from search.store import Collection, Snapshot
from search.vector_index import VectorIndex

_EMPTY_TILES = """CREATE TABLE tiles (tile_id BIGINT, source_id VARCHAR, source VARCHAR,
    kind VARCHAR, x BIGINT, y BIGINT, level INTEGER, size_px INTEGER, tile_px INTEGER,
    mpp DOUBLE, tissue_fraction FLOAT, segment_id VARCHAR, "row" BIGINT)"""
_EMPTY_SOURCES = """CREATE TABLE sources (source_id VARCHAR, source VARCHAR, kind VARCHAR,
    width BIGINT, height BIGINT, mpp DOUBLE, n_tiles BIGINT, properties VARCHAR,
    segment_id VARCHAR, "row" BIGINT)"""


def _segment_tile_ids(seg: SegmentInfo) -> np.ndarray:
    t = pq.read_table(seg.tiles_path, columns=["tile_id", "row"])
    ids = t.column("tile_id").to_numpy()
    rows = t.column("row").to_numpy()
    out = np.empty(seg.n_tiles, np.int64)
    out[rows] = ids
    return out


class CollectionView:
    """Answers metadata and vector questions about one snapshot of a collection."""

    def __init__(
        self,
        collection: Collection,
        snapshot: Snapshot,
        factory: str = "Flat",
        previous: CollectionView | None = None,
        save_index: bool = True,
    ) -> None:
        self.collection = collection
        self.snapshot = snapshot
        self.factory = factory
        self.dim = collection.dim
        self.vectors: np.ndarray
        self.index: VectorIndex
        segs = list(snapshot.segments)
        prev_ids = previous.index.segment_ids if previous is not None else []
        if (
            previous is not None
            and prev_ids == [s.segment_id for s in segs[: len(prev_ids)]]
            and previous.factory == factory
        ):
            new = segs[len(prev_ids) :]
            vectors = [previous.vectors] + [np.asarray(s.vectors()) for s in new]
            self.vectors = np.concatenate(vectors) if new else previous.vectors
            self.index = self._extended(previous.index, new)
        else:
            self.vectors = (
                np.concatenate([np.asarray(s.vectors()) for s in segs])
                if segs
                else np.zeros((0, self.dim), np.float32)
            )
            self.index = self._load_or_build(segs, save_index)
        # A Flat index already holds every vector: serve exact searches from its storage and
        # drop the concatenated copy, so a collection costs its vectors once in memory.
        flat = self.index.flat_vectors()
        if flat is not None:
            self.vectors = flat
        order = np.argsort(self.index.tile_ids, kind="stable")
        self._sorted_ids = self.index.tile_ids[order]
        self._sorted_pos = order
        self._con = duckdb.connect(":memory:")
        self._lock = threading.Lock()
        self._load_tables(segs)
        self.schema: dict[str, str] = {
            r[0]: r[1] for r in self._con.execute("DESCRIBE tiles").fetchall()
        }
        self.metadata_columns = [c for c in self.schema if c not in RESERVED_COLUMNS]
        if segs:
            src_vecs = [np.asarray(s.source_vectors()) for s in segs]
            self.source_vectors = np.concatenate(src_vecs)
        else:
            self.source_vectors = np.zeros((0, self.dim), np.float32)

    # -- construction ------------------------------------------------------------------------
    def _extended(self, prev: VectorIndex, new: Sequence[SegmentInfo]) -> VectorIndex:
        import faiss

        if not new:
            return prev
        index = faiss.clone_index(prev.index)
        clone = VectorIndex(prev.factory, prev.dim, index, list(prev.segment_ids), prev.tile_ids)
        n_old = prev.ntotal
        clone.extend(new, self.vectors[n_old:], np.concatenate([_segment_tile_ids(s) for s in new]))
        return clone

    def _load_or_build(self, segs: list[SegmentInfo], save: bool) -> VectorIndex:
        ids = [s.segment_id for s in segs]
        saved = VectorIndex.load(self.collection.index_dir, self.factory, self.dim)
        if saved is not None and saved.segment_ids == ids[: len(saved.segment_ids)]:
            # positions of the saved index follow its manifest order, which is ours
            new = segs[len(saved.segment_ids) :]
            if new:
                offset = saved.ntotal
                saved.extend(
                    new, self.vectors[offset:], np.concatenate([_segment_tile_ids(s) for s in new])
                )
                if save:
                    saved.save(self.collection.index_dir)
            return saved
        tile_ids = (
            np.concatenate([_segment_tile_ids(s) for s in segs]) if segs else np.zeros(0, np.int64)
        )
        built = VectorIndex.build(self.factory, self.dim, segs, self.vectors, tile_ids)
        if save and segs:
            built.save(self.collection.index_dir)
        return built

    def _load_tables(self, segs: list[SegmentInfo]) -> None:
        if not segs:
            self._con.execute(_EMPTY_TILES)
            self._con.execute(_EMPTY_SOURCES)
            return
        tiles = [str(s.tiles_path) for s in segs]
        sources = [str(s.sources_path) for s in segs]
        self._con.execute(
            "CREATE TABLE tiles AS SELECT * FROM read_parquet(?, union_by_name=true)", [tiles]
        )
        self._con.execute(
            "CREATE TABLE sources AS SELECT * FROM read_parquet(?, union_by_name=true)", [sources]
        )

    # -- queries ---------------------------------------------------------------------------
    def sql(self, query: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """Run a read-only query on this view's tables; rows as dicts."""
        cur = self._con.cursor()
        try:
            res = cur.execute(query, list(params or []))
            cols = [d[0] for d in res.description]
            return [dict(zip(cols, row, strict=True)) for row in res.fetchall()]
        finally:
            cur.close()

    def column(self, query: str, params: Sequence[Any] | None = None) -> np.ndarray:
        cur = self._con.cursor()
        try:
            rows = cur.execute(query, list(params or [])).fetchnumpy()
            return next(iter(rows.values())) if rows else np.zeros(0)
        finally:
            cur.close()

    @property
    def n_tiles(self) -> int:
        return self.index.ntotal

    def positions_of(self, tile_ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Index positions of tile ids (all must exist)."""
        ids = np.asarray(tile_ids, dtype=np.int64)
        idx = np.searchsorted(self._sorted_ids, ids)
        idx = np.clip(idx, 0, max(len(self._sorted_ids) - 1, 0))
        if len(self._sorted_ids) == 0 or not np.all(self._sorted_ids[idx] == ids):
            missing = ids if len(self._sorted_ids) == 0 else ids[self._sorted_ids[idx] != ids]
            raise TileNotFoundError(
                f"tile {int(missing[0])} is not in collection {self.collection.name!r} "
                f"(snapshot {self.snapshot.id})"
            )
        return self._sorted_pos[idx]

    def tile_vectors(self, tile_ids: Sequence[int]) -> np.ndarray:
        return self.vectors[self.positions_of(tile_ids)]

    def tile_rows(self, tile_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        ids = [int(t) for t in tile_ids]
        if not ids:
            return {}
        rows = self.sql("SELECT * FROM tiles WHERE tile_id IN (SELECT unnest(?))", [ids])
        return {int(r["tile_id"]): r for r in rows}

    def tile(self, tile_id: int) -> dict[str, Any]:
        rows = self.tile_rows([tile_id])
        if tile_id not in rows:
            raise TileNotFoundError(
                f"tile {tile_id} is not in collection {self.collection.name!r} "
                f"(snapshot {self.snapshot.id})"
            )
        return rows[tile_id]

    def source(self, source_id: str) -> dict[str, Any]:
        rows = self.sql("SELECT * FROM sources WHERE source_id = ? LIMIT 1", [source_id])
        if not rows:
            raise SourceNotFoundError(
                f"source {source_id!r} is not in collection {self.collection.name!r}"
            )
        return rows[0]

    def matching_positions(self, where: str, params: Sequence[Any]) -> np.ndarray:
        ids = self.column(f"SELECT tile_id FROM tiles WHERE {where}", params)  # noqa: S608
        return self.positions_of(ids.astype(np.int64)) if len(ids) else np.zeros(0, np.int64)

    def metadata_of(self, row: dict[str, Any]) -> dict[str, Any]:
        return {c: _jsonable(row.get(c)) for c in self.metadata_columns}


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and value != value:  # NaN
        return None
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
