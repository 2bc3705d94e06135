"""Per-segment readers: one committed segment's vectors, tile ids and metadata, read once.

A :class:`SegmentReader` memory-maps the segment's vectors (never copied or concatenated),
reads ``tiles.parquet`` once into an Arrow table (string columns dictionary-encoded, so a 1M-row
segment's metadata costs tens of MB) and caches filter masks per condition set. Segments are
immutable, so a reader is valid for the life of the process and is shared by every snapshot
that contains the segment: a new snapshot costs only the readers of its new segments.

Row ``r`` of the table, of the vectors and of ``tile_ids`` is the same tile (the writer and
compaction keep ``row`` equal to the physical row). A segment rewritten by a deletion keeps its
rows (the vectors file is shared, not rewritten) and lists the deleted ones; ``live`` marks the
others, and every mask and id lookup leaves deleted rows out.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lamina.search.filters import Condition, condition_mask, conditions_key
from lamina.search.integrity import DamagedSegmentError, Problem, check_segment
from lamina.search.segments import VECTOR_DTYPES, SegmentInfo

MASK_CACHE_SIZE = 64


def _return_freed_memory() -> None:
    """Keep a long-running process's memory equal to its live data: Arrow's default pool
    (mimalloc) keeps the Parquet decoder's scratch for the life of the process, and glibc's
    dynamic mmap threshold keeps freed scan blocks (tens of MB) in the heap. Use the system
    allocator for Arrow and a fixed 1 MiB mmap threshold, so large temporaries go back to the
    OS when freed."""
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


_return_freed_memory()

_SQL_NAMES = {
    "int8": "TINYINT",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "uint8": "UTINYINT",
    "uint16": "USMALLINT",
    "uint32": "UINTEGER",
    "uint64": "UBIGINT",
    "float": "FLOAT",
    "halffloat": "FLOAT",
    "double": "DOUBLE",
    "bool": "BOOLEAN",
    "string": "VARCHAR",
    "large_string": "VARCHAR",
    "date32[day]": "DATE",
}
_INTS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT")


def sql_type_name(t: pa.DataType) -> str:
    """DuckDB-style type name of an Arrow type (the names the API reports for columns)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    if pa.types.is_null(t):
        return "VARCHAR"
    return _SQL_NAMES.get(str(t), "VARCHAR")


def unify_types(names: Sequence[str]) -> str:
    """The common type of a column typed differently in different segments."""
    uniq = set(names)
    if len(uniq) == 1:
        return names[0]
    if uniq <= set(_INTS):
        return "BIGINT"
    if uniq <= set(_INTS) | {"FLOAT", "DOUBLE"}:
        return "DOUBLE"
    return "VARCHAR"


def lazy_vectors() -> bool:
    """``LAMINA_MAP_VECTORS=lazy``: collections served from a code index map their vectors
    lazily (the process keeps the codes; each re-ranked candidate costs a soft page fault).
    Default ``eager``: every vector page is mapped up front (fastest re-ranking)."""
    return os.environ.get("LAMINA_MAP_VECTORS", "eager").strip().lower() == "lazy"


def _map_populated(info: SegmentInfo, populate: bool = True) -> np.ndarray:
    """The segment's vectors as a read-only ndarray over a shared memory map.

    With ``populate`` (MAP_POPULATE) every page is mapped when the reader is built (off the
    request path), so exact scans never take page faults on first touch; the pages are the OS
    page cache's, shared by every process serving the segment. Without it (collections served
    from a code index, with ``LAMINA_MAP_VECTORS=lazy``) only the re-ranked candidates' pages are
    touched, so what stays resident in the process is the codes; the file is read ahead into the
    page cache. A plain ndarray (numpy's memmap subclass adds ~1 ms per take).
    """
    code = np.dtype(VECTOR_DTYPES[info.dtype][0])
    if info.n_tiles == 0:
        return np.zeros((0, info.dim), code)
    with open(info.vectors_path, "rb") as f:
        size = info.n_tiles * info.dim * code.itemsize
        flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
        buf = mmap.mmap(f.fileno(), size, flags=flags, prot=mmap.PROT_READ)
        if not populate and hasattr(os, "posix_fadvise"):
            # warm the page cache (shared, reclaimable) in the background, so a candidate's
            # first touch is a soft fault, not a disk read
            os.posix_fadvise(f.fileno(), 0, size, os.POSIX_FADV_WILLNEED)
    if not populate and hasattr(mmap, "MADV_RANDOM"):
        buf.madvise(mmap.MADV_RANDOM)  # a fault maps the candidate's page, no read-ahead
    arr = np.frombuffer(buf, dtype=code).reshape(info.n_tiles, info.dim)
    return arr


class SegmentReader:
    """Read access to one committed segment (thread-safe; immutable data, cached masks)."""

    def __init__(self, info: SegmentInfo, populate: bool = True) -> None:
        self.info = info
        self.n = info.n_tiles
        self.vectors = _map_populated(info, populate)
        schema = pq.read_schema(info.tiles_path)
        strings = [
            f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
        ]
        table = pq.read_table(info.tiles_path, read_dictionary=strings)
        if table.num_rows != self.n:
            raise ValueError(
                f"segment {info.segment_id}: tiles.parquet has {table.num_rows} rows, "
                f"segment.json says {self.n}"
            )
        rows = table.column("row").to_numpy()
        if self.n and not np.array_equal(rows, np.arange(self.n)):
            table = table.take(pa.array(np.argsort(rows, kind="stable")))
        # ``row`` and ``segment_id`` are implied by the reader: not kept in memory
        self.table = table.drop_columns(["row", "segment_id"]).combine_chunks()
        del table
        self.tile_ids = self.table.column("tile_id").to_numpy()  # zero-copy view
        if self.n < 2 or bool(np.all(np.diff(self.tile_ids) > 0)):
            self._id_order = np.arange(self.n, dtype=np.int64)  # ids ascend with rows (usual)
            self._sorted_ids = self.tile_ids
        else:
            self._id_order = np.argsort(self.tile_ids, kind="stable")
            self._sorted_ids = self.tile_ids[self._id_order]
        self.min_id = int(self._sorted_ids[0]) if self.n else 0
        self.max_id = int(self._sorted_ids[-1]) if self.n else -1
        self.schema: dict[str, str] = {f.name: sql_type_name(f.type) for f in self.table.schema}
        # tombstones (a deletion's rewrite): rows still on disk that no answer may include
        self.live: np.ndarray | None = None
        self.n_live = self.n
        if info.n_deleted:
            live = np.ones(self.n, dtype=bool)
            live[info.deleted_rows()] = False
            live.flags.writeable = False
            self.live, self.n_live = live, int(np.count_nonzero(live))
        self._masks: OrderedDict[str, np.ndarray] = OrderedDict()
        self._codes: dict[str, tuple[np.ndarray, list[Any]]] = {}
        self._sources: pa.Table | None = None
        self._takers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.signature: tuple[tuple[int, int, int], ...] = ()

    @property
    def sources(self) -> pa.Table:
        """The segment's ``sources.parquet`` (small: one row per slide or photo), read once."""
        if self._sources is None:
            self._sources = pq.read_table(self.info.sources_path)
        return self._sources

    @property
    def segment_id(self) -> str:
        return self.info.segment_id

    @property
    def memory_bytes(self) -> int:
        """Heap bytes held for this segment (metadata table, id maps, cached masks)."""
        masks = sum(m.nbytes for m in self._masks.values())
        return int(self.table.nbytes + self._id_order.nbytes + masks)

    def rows_of(self, tile_ids: np.ndarray, *, deleted: bool = False) -> np.ndarray:
        """Rows of the given tile ids in this segment, -1 where absent (and where deleted,
        unless ``deleted``: then a deleted tile's row is given too)."""
        ids = np.asarray(tile_ids, dtype=np.int64)
        if self.n == 0:
            return np.full(len(ids), -1, np.int64)
        idx = np.clip(np.searchsorted(self._sorted_ids, ids), 0, self.n - 1)
        found = self._sorted_ids[idx] == ids
        rows = np.where(found, self._id_order[idx], -1)
        if self.live is not None and not deleted:
            rows = np.where((rows >= 0) & self.live[np.maximum(rows, 0)], rows, -1)
        return rows

    def mask(self, conds: Sequence[Condition], schema: dict[str, str]) -> np.ndarray:
        """Bool mask over this segment's rows for the AND of ``conds`` (cached, LRU); deleted
        rows (tombstones) are always False, so no filter, scan or index answers them."""
        key = conditions_key(conds)
        with self._lock:
            hit = self._masks.get(key)
            if hit is not None:
                self._masks.move_to_end(key)
                return hit
        out = np.ones(self.n, dtype=bool) if self.live is None else self.live.copy()
        names = self.table.column_names
        for cond in conds:
            col = self.table.column(cond.column) if cond.column in names else None
            out &= condition_mask(col, cond, schema[cond.column], self.n)
        out.flags.writeable = False
        with self._lock:
            self._masks[key] = out
            while len(self._masks) > MASK_CACHE_SIZE:
                self._masks.popitem(last=False)
        return out

    def codes(self, column: str) -> tuple[np.ndarray, list[Any]]:
        """(int code per row, distinct values by code; -1 = null) for grouping by ``column``."""
        with self._lock:
            hit = self._codes.get(column)
        if hit is not None:
            return hit
        if column not in self.table.column_names:
            out: tuple[np.ndarray, list[Any]] = (np.full(self.n, -1, np.int64), [])
        else:
            arr = self.table.column(column)
            enc = arr if pa.types.is_dictionary(arr.type) else arr.dictionary_encode()
            enc = enc.combine_chunks() if isinstance(enc, pa.ChunkedArray) else enc
            idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            out = (idx, enc.dictionary.to_pylist())
        with self._lock:
            self._codes[column] = out
        return out

    def take_rows(self, rows: np.ndarray, columns: Sequence[str] | None = None) -> list[dict]:
        """Row dicts for the given physical rows: per column one gather from a cached array
        (the values :meth:`pyarrow.Table.to_pylist` would give, without building a table)."""
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        names = self.table.column_names if columns is None else list(columns)
        values = [self._column_reader(c)(idx) for c in names]
        out = [dict(zip(names, vals, strict=True)) for vals in zip(*values, strict=True)]
        if not names:
            out = [{} for _ in idx]
        for r, row in zip(idx.tolist(), out, strict=True):
            row["segment_id"], row["row"] = self.info.segment_id, r
        return out

    def _column_reader(self, name: str) -> Any:
        """A function rows -> Python values of column ``name``, built once per column."""
        hit = self._takers.get(name)
        if hit is None:
            column = self.table.column(name)  # one chunk (the table was combined): no copy
            hit = _taker(column.chunk(0) if column.num_chunks == 1 else column.combine_chunks())
            with self._lock:
                self._takers[name] = hit
        return hit

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """float32 copies of the vectors at ``rows`` (sorted access is fastest)."""
        return np.asarray(self.vectors[np.asarray(rows, dtype=np.int64)], dtype=np.float32)


def _taker(col: pa.Array) -> Any:
    """rows -> list of Python values for one column: dictionary strings through their codes,
    numbers and booleans through a numpy array (nulls through the validity bitmap), anything
    else through an Arrow take."""
    t = col.type
    if pa.types.is_dictionary(col.type):
        codes = col.indices
        codes = (codes if codes.null_count == 0 else codes.fill_null(-1)).to_numpy(
            zero_copy_only=False
        )
        words = [*col.dictionary.to_pylist(), None]  # code -1 -> the trailing None
        return lambda idx: [words[c] for c in codes[idx].tolist()]
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        if col.null_count == 0:
            arr = col.to_numpy(zero_copy_only=False)
            return lambda idx: arr[idx].tolist()
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        filled = col.fill_null(False if pa.types.is_boolean(t) else 0)
        vals = filled.to_numpy(zero_copy_only=False)
        return lambda idx: [
            v if ok else None for v, ok in zip(vals[idx].tolist(), valid[idx].tolist(), strict=True)
        ]
    return lambda idx: col.take(pa.array(idx)).to_pylist()


def _signature(info: SegmentInfo) -> tuple[tuple[int, int, int], ...]:
    """(inode, size, mtime_ns) of the segment's files: a cached reader is reused only while
    they are unchanged (segments are immutable; a change is damage, checked again)."""
    out = []
    for path in (info.vectors_path, info.tiles_path, info.sources_path, info.path / "segment.json"):
        try:
            st = path.stat()
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((0, -1, 0))
    return tuple(out)


_READERS: dict[str, SegmentReader] = {}
_READERS_LOCK = threading.Lock()


def reader_for(info: SegmentInfo, populate: bool = True) -> SegmentReader:
    """The process-wide reader of a committed segment (built once; segments never change;
    ``populate``: pre-fault its vectors, see :func:`_map_populated` -- decided by the first
    view that opens the segment).

    The segment is checked first (``search.integrity.check_segment``: sizes, footers, and
    checksums of segments up to the open-time hash budget); a damaged one raises
    :class:`~search.integrity.DamagedSegmentError` and gets no reader."""
    key = str(info.path)
    sig = _signature(info)
    with _READERS_LOCK:
        hit = _READERS.get(key)
        if hit is not None and hit.signature != sig:  # its files were replaced or truncated
            del _READERS[key]
            hit = None
    if hit is not None:
        return hit
    problems = check_segment(info)
    if problems:
        if not info.path.exists():  # retired by a compaction meanwhile: the caller lists again
            raise FileNotFoundError(str(info.path))
        raise DamagedSegmentError(problems)
    try:
        reader = SegmentReader(info, populate)
        reader.signature = sig
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        if isinstance(exc, FileNotFoundError) and not info.path.exists():
            raise  # retired by a compaction meanwhile: the caller lists again
        name = f"segments/{info.path.name}"
        raise DamagedSegmentError(
            [Problem(info.path.name, name, f"cannot be read ({type(exc).__name__})")]
        ) from None
    with _READERS_LOCK:
        return _READERS.setdefault(key, reader)


def forget_readers(segments_dir: str, keep: Sequence[SegmentInfo]) -> None:
    """Drop cached readers of one collection's segments not in ``keep`` (after a swap)."""
    alive = {str(s.path) for s in keep}
    prefix = str(segments_dir).rstrip("/") + "/"
    with _READERS_LOCK:
        for key in [k for k in _READERS if k.startswith(prefix) and k not in alive]:
            del _READERS[key]
