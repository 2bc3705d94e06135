"""A read-only view of one collection at one snapshot, made of per-segment readers.

Building a view costs the readers of segments not seen before (see ``segment_reader``): the
vectors stay memory-mapped per segment and are never concatenated; metadata is per segment in
Arrow. Global *positions* number the snapshot's tiles segment by segment (``offsets``); they are
valid for one view only. Tile ids are stable across snapshots (and compaction).

Bulk SQL (cohort summaries, exports) runs in an in-memory DuckDB connection over the segments'
Arrow tables (zero-copy, created on first use); the hot paths (filters, hit rows, vectors) never
go through SQL.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lamina.search.ann import AnnIndex
from lamina.search.errors import SourceNotFoundError, TileNotFoundError
from lamina.search.filters import Condition, conditions_key
from lamina.search.index_spec import codes_only
from lamina.search.integrity import DamagedSegmentError, Problem, duplicate_tile_ids
from lamina.search.segment_reader import (
    SegmentReader,
    lazy_vectors,
    reader_for,
    sql_type_name,
    unify_types,
)
from lamina.search.segments import RESERVED_COLUMNS, TILE_CORE_COLUMNS
from lamina.search.store import Collection, Snapshot

_GLOBAL_MASKS = 16
_ARROW_OF_SQL = {
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "VARCHAR": pa.string(),
}


class GlobalVectors:
    """Position-indexed access to a view's vectors (gathers float32 copies from the segments)."""

    def __init__(self, view: CollectionView) -> None:
        self._view = view
        self.shape = (view.n_tiles, view.dim)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, positions: Any) -> np.ndarray:
        if isinstance(positions, int | np.integer):
            return self[np.array([positions])][0]
        pos = np.arange(self.shape[0])[positions] if isinstance(positions, slice) else positions
        pos = np.asarray(pos, dtype=np.int64).reshape(-1)
        out = np.empty((len(pos), self.shape[1]), np.float32)
        seg, rows = self._view.locate(pos)
        for s in np.unique(seg):
            sel = np.flatnonzero(seg == s)
            order = np.argsort(rows[sel], kind="stable")  # sorted rows read sequentially
            out[sel[order]] = self._view.readers[int(s)].gather(rows[sel][order])
        return out


class CollectionView:
    """Answers metadata and vector questions about one snapshot of a collection."""

    def __init__(
        self, collection: Collection, snapshot: Snapshot, ann: AnnIndex | None = None
    ) -> None:
        self.collection = collection
        self.snapshot = snapshot
        self.dim = collection.dim
        self.ann = ann
        self.quarantined: list[Problem] = [
            Problem(d, f"segments/{d}", reason) for d, reason in snapshot.damaged
        ]
        self.readers: list[SegmentReader] = self._open(snapshot)
        sizes = [r.n for r in self.readers]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        types: dict[str, list[str]] = {}
        for r in self.readers:
            for name, typ in r.schema.items():
                types.setdefault(name, []).append(typ)
        self.schema: dict[str, str] = {n: unify_types(t) for n, t in types.items()}
        if not self.readers:
            self.schema = {n: sql_type_name(t) for n, t in TILE_CORE_COLUMNS.items()}
        self.metadata_columns = [c for c in self.schema if c not in RESERVED_COLUMNS]
        self.has_deletions = any(r.live is not None for r in self.readers)
        """Some segment holds tombstones: every search then runs with per-segment masks."""
        self.vectors = GlobalVectors(self)
        self._masks: OrderedDict[str, np.ndarray] = OrderedDict()
        self._con: Any = None
        self._lock = threading.Lock()
        self._sql_lock = threading.Lock()
        self._source_codes: tuple[np.ndarray, list[str]] | None = None

    def _open(self, snapshot: Snapshot) -> list[SegmentReader]:
        """Readers of the snapshot's healthy segments; damaged segments and segments repeating
        another's tile ids (the later one) are quarantined into ``self.quarantined``."""
        readers = []
        populate = not (lazy_vectors() and codes_only(self.collection.index_factory))
        for s in snapshot.segments:
            try:
                readers.append(reader_for(s, populate))
            except DamagedSegmentError as exc:
                self.quarantined.extend(exc.problems)
        spans = [(r.info.path.name, r.min_id, r.max_id, r.tile_ids) for r in readers if r.n]
        dropped: set[str] = set()
        for later, earlier, tile_id in duplicate_tile_ids(spans):
            if earlier in dropped or later in dropped:
                continue
            dropped.add(later)
            self.quarantined.append(
                Problem(
                    later,
                    f"segments/{later}/tiles.parquet",
                    f"tile id {tile_id} is also in segment {earlier} (duplicate tile ids)",
                    "duplicate",
                )
            )
        return [r for r in readers if r.info.path.name not in dropped]

    @property
    def missing_segments(self) -> list[str]:
        """Segments of the snapshot that are not answering (quarantined), sorted."""
        return sorted({p.segment_id for p in self.quarantined})

    def cache(self, name: str, limit: int = 32) -> dict[Any, Any]:
        """A small per-view cache (cleared when full) for derived per-filter structures."""
        caches: dict[str, dict[Any, Any]] = self.__dict__.setdefault("_caches", {})
        with self._lock:
            c = caches.setdefault(name, {})
            if len(c) >= limit:
                c.clear()
            return c

    # -- positions ---------------------------------------------------------------------------
    @property
    def n_tiles(self) -> int:
        """Positions of the view, deleted rows (tombstones not yet erased) included."""
        return int(self.offsets[-1])

    @property
    def n_live(self) -> int:
        """Tiles that answer: :attr:`n_tiles` less the deleted ones."""
        return sum(r.n_live for r in self.readers)

    def live_positions(self) -> np.ndarray:
        """Every position that is not deleted, ascending."""
        if not self.has_deletions:
            return np.arange(self.n_tiles, dtype=np.int64)
        parts = [
            np.arange(r.n, dtype=np.int64) + self.offsets[i]
            if r.live is None
            else np.flatnonzero(r.live) + self.offsets[i]
            for i, r in enumerate(self.readers)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment index, row) of each global position."""
        pos = np.asarray(positions, dtype=np.int64)
        seg = np.searchsorted(self.offsets, pos, side="right") - 1
        return seg, pos - self.offsets[seg]

    def positions_of(self, tile_ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Global positions of tile ids (all must exist)."""
        ids = np.asarray(tile_ids, dtype=np.int64).reshape(-1)
        out = np.full(len(ids), -1, np.int64)
        for i, r in enumerate(self.readers):
            inside = (ids >= r.min_id) & (ids <= r.max_id) & (out < 0)
            if inside.any():
                rows = r.rows_of(ids[inside])
                found = rows >= 0
                out[np.flatnonzero(inside)[found]] = rows[found] + self.offsets[i]
        if np.any(out < 0):
            missing = self.missing_segments
            first = int(ids[out < 0][0])
            if self.has_deletions and any(
                r.live is not None and r.rows_of(np.array([first]), deleted=True)[0] >= 0
                for r in self.readers
            ):
                raise TileNotFoundError(
                    f"tile {first} was deleted from collection {self.collection.name!r} "
                    f"(snapshot {self.snapshot.id})"
                )
            raise TileNotFoundError(
                f"tile {int(ids[out < 0][0])} is not in collection {self.collection.name!r} "
                f"(snapshot {self.snapshot.id}"
                + (f"; damaged segments not answering: {', '.join(missing)})" if missing else ")")
            )
        return out

    def tile_ids_at(self, positions: np.ndarray) -> np.ndarray:
        seg, rows = self.locate(positions)
        out = np.empty(len(rows), np.int64)
        for s in np.unique(seg):
            sel = seg == s
            out[sel] = self.readers[int(s)].tile_ids[rows[sel]]
        return out

    def all_tile_ids(self) -> np.ndarray:
        if not self.readers:
            return np.zeros(0, np.int64)
        return np.concatenate([r.tile_ids for r in self.readers])

    # -- rows --------------------------------------------------------------------------------
    def rows_at(self, positions: np.ndarray | Sequence[int]) -> list[dict[str, Any]]:
        """Tile rows (dicts) at global positions, in the order given (Arrow take by row)."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        out: list[dict[str, Any]] = [{} for _ in range(len(pos))]
        seg, rows = self.locate(pos)
        for s in np.unique(seg):
            sel = np.flatnonzero(seg == s)
            for i, row in zip(sel, self.readers[int(s)].take_rows(rows[sel]), strict=True):
                out[int(i)] = row
        return out

    def tile_vectors(self, tile_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.vectors[self.positions_of(tile_ids)]

    def tile_rows(self, tile_ids: Sequence[int] | np.ndarray) -> dict[int, dict[str, Any]]:
        ids = np.asarray([int(t) for t in tile_ids], np.int64)
        if len(ids) == 0:
            return {}
        known = []
        for t in ids:
            try:
                known.append(int(self.positions_of([t])[0]))
            except TileNotFoundError:
                continue
        return {int(r["tile_id"]): r for r in self.rows_at(np.asarray(known, np.int64))}

    def tile(self, tile_id: int) -> dict[str, Any]:
        return self.rows_at(self.positions_of([int(tile_id)]))[0]

    def source(self, source_id: str, path: str | None = None) -> dict[str, Any]:
        """The source row of ``source_id`` (the one at ``path`` when the same bytes were
        indexed from several files)."""
        for r in self.readers:
            t = r.sources
            cond = pc.equal(t.column("source_id"), source_id)
            if path is not None:
                cond = pc.and_(cond, pc.equal(t.column("source"), path))
            hit = t.filter(cond)
            if hit.num_rows:
                return hit.slice(0, 1).to_pylist()[0]
        raise SourceNotFoundError(
            f"source {source_id!r} is not in collection {self.collection.name!r}"
        )

    def metadata_of(self, row: dict[str, Any]) -> dict[str, Any]:
        return {c: _jsonable(row.get(c)) for c in self.metadata_columns}

    # -- filters -----------------------------------------------------------------------------
    def segment_masks(self, conds: Sequence[Condition]) -> list[np.ndarray] | None:
        """Per-segment bool masks of the filter (None: no filter and nothing deleted), cached
        per segment; deleted rows are False in every mask."""
        if not conds and not self.has_deletions:
            return None
        return [r.mask(conds, self.schema) for r in self.readers]

    def mask(self, conds: Sequence[Condition]) -> np.ndarray | None:
        """Global bool mask over positions (None: no filter and nothing deleted)."""
        if not conds and not self.has_deletions:
            return None
        key = conditions_key(conds)
        with self._lock:
            hit = self._masks.get(key)
        if hit is not None:
            return hit
        parts = self.segment_masks(conds) or []
        out = np.concatenate(parts) if parts else np.zeros(0, bool)
        with self._lock:
            self._masks[key] = out
            while len(self._masks) > _GLOBAL_MASKS:
                self._masks.popitem(last=False)
        return out

    def mask_key(self, conds: Sequence[Condition]) -> str | None:
        """The cache key of :meth:`segment_masks` (None when it gives None)."""
        return conditions_key(conds) if conds or self.has_deletions else None

    def matching_positions(self, conds: Sequence[Condition]) -> np.ndarray:
        mask = self.mask(conds)
        return np.arange(self.n_tiles) if mask is None else np.flatnonzero(mask)

    def codes(self, column: str) -> tuple[np.ndarray, list[Any]]:
        """(global code per position, distinct values) of a column; -1 for null."""
        values: dict[Any, int] = {}
        parts = []
        for r in self.readers:
            local, names = r.codes(column)
            remap = np.array([values.setdefault(v, len(values)) for v in names] + [-1], np.int64)
            parts.append(remap[local])  # -1 indexes the trailing -1
        codes = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return codes, list(values)

    def distinct_values(self, column: str) -> frozenset[Any]:
        """The distinct non-null values of ``column`` in this snapshot (cached per view)."""
        cache = self.cache("distinct")
        hit = cache.get(column)
        if hit is None:
            codes, values = self.codes(column)
            live = self.mask(())
            if live is not None:  # values of deleted tiles only do not count
                kept = np.unique(codes[live])
                values = [values[c] for c in kept.tolist() if c >= 0]
            hit = cache[column] = frozenset(values)
        return hit

    def group_counts(
        self,
        column: str,
        conds: Sequence[Condition],
        tile_ids: Sequence[int],
        values: Sequence[Any],
    ) -> list[int]:
        """For each tile id: how many tiles matching ``conds`` share its value of ``column``
        (the sizes of groups named by one member each; ``values`` serve sharded views)."""
        codes, _ = self.codes(column)
        mask = self.mask(conds)
        kept = codes if mask is None else codes[mask]
        counts = np.bincount(kept[kept >= 0], minlength=int(codes.max(initial=-1)) + 1)
        mine = codes[self.positions_of(tile_ids)] if len(tile_ids) else np.zeros(0, np.int64)
        return [int(counts[c]) if c >= 0 else 0 for c in mine.tolist()]

    # -- bulk SQL ----------------------------------------------------------------------------
    def _tables(self) -> tuple[pa.Table, pa.Table]:
        cols = list(self.schema)
        chunks = []
        for r in self.readers:
            arrays = []
            for c in cols:
                want = self.schema[c]
                if c in r.table.column_names:
                    arr = r.table.column(c)
                    if r.schema[c] != want:
                        arr = arr.cast(_ARROW_OF_SQL.get(want, pa.string()))
                    elif pa.types.is_dictionary(arr.type):
                        arr = arr.cast(arr.type.value_type)
                else:
                    arr = pa.nulls(r.n, _ARROW_OF_SQL.get(want, pa.string()))
                arrays.append(arr)
            chunk = pa.Table.from_arrays(arrays, names=cols)
            chunks.append(chunk if r.live is None else chunk.filter(pa.array(r.live)))
        tiles = pa.concat_tables(chunks) if chunks else None
        sources = [r.sources for r in self.readers]
        src = pa.concat_tables(sources, promote_options="permissive") if sources else None
        return tiles, src  # type: ignore[return-value]

    def _duck(self) -> Any:
        with self._lock:
            if self._con is None:
                import duckdb

                con = duckdb.connect(":memory:")
                tiles, sources = self._tables()
                if tiles is None:
                    con.execute(_EMPTY_TILES)
                    con.execute(_EMPTY_SOURCES)
                else:
                    con.register("tiles", tiles)
                    con.register("sources", sources)
                self._con = con
            return self._con

    def sql(self, query: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """Run a read-only query on this view's ``tiles`` and ``sources``; rows as dicts."""
        con = self._duck()
        with self._sql_lock:  # registered Arrow tables live on this one connection
            res = con.execute(query, list(params or []))
            cols = [d[0] for d in res.description]
            return [dict(zip(cols, row, strict=True)) for row in res.fetchall()]

    def arrow(self, query: str, params: Sequence[Any] | None = None) -> pa.Table:
        """Run a read-only query; the result as an Arrow table (bulk paths)."""
        con = self._duck()
        with self._sql_lock:
            return con.sql(query, params=list(params or [])).to_arrow_table()

    def memory_bytes(self) -> int:
        """Heap bytes of this view's metadata, id maps, masks and ANN structures."""
        readers = sum(r.memory_bytes for r in self.readers)
        return readers + (self.ann.memory_bytes() if self.ann is not None else 0)


_EMPTY_TILES = """CREATE TABLE tiles (tile_id BIGINT, source_id VARCHAR, source VARCHAR,
    kind VARCHAR, x BIGINT, y BIGINT, level INTEGER, size_px INTEGER, tile_px INTEGER,
    mpp DOUBLE, tissue_fraction FLOAT, segment_id VARCHAR, "row" BIGINT)"""
_EMPTY_SOURCES = """CREATE TABLE sources (source_id VARCHAR, source VARCHAR, kind VARCHAR,
    width BIGINT, height BIGINT, mpp DOUBLE, n_tiles BIGINT, properties VARCHAR,
    segment_id VARCHAR, "row" BIGINT)"""


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and value != value:  # NaN
        return None
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
