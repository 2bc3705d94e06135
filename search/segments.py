"""Immutable segments: the durable source of truth of a collection.

A segment is a directory ``segments/<segment_id>/`` holding

- ``tiles.parquet``    one row per vector (tile or photo), metadata columns denormalised;
- ``vectors.f32``      row-aligned vectors (n, dim), raw little-endian float32 (or ``vectors.f16``,
                       float16, for a collection created with ``vector_dtype=float16``);
- ``sources.parquet``  one row per source (slide or photo) with its allowlisted properties;
- ``source_vectors.f32`` row-aligned per-source vectors (mean of its tiles, L2-normalised);
- ``segment.json``     counts, dim, vector dtype, encoder fingerprint, run id, and for a segment
                       made by compaction the ids of the segments it ``replaces``;
- ``deleted_rows.i64`` only in a segment rewritten by a deletion (``search.rewrite``): the rows
                       that are tombstones (their vectors stay until the next compaction).

It is written under ``segments/.tmp-<segment_id>/`` while an exclusive ``flock`` is held on a
file inside it, fsynced, then made visible by one atomic ``rename`` (the commit). A crash
leaves only the temporary directory; :func:`remove_stale` deletes those whose lock is free.

Compaction commits one segment that ``replaces`` others: from the moment of its rename the
replaced segments are no longer listed (one atomic step for readers); their directories are then
renamed to ``.retired-<id>`` and deleted by :func:`remove_stale` after a grace period. A process
that has already opened a replaced segment keeps reading it (memory maps survive unlink).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lamina.search.integrity import Hasher, digest_bytes, file_entry, meta_checksum
from lamina.search.tables import concat_tables as _concat
from lamina.search.tables import rows_table as _table

TMP_PREFIX = ".tmp-"
RETIRED_PREFIX = ".retired-"
LOCK_NAME = ".writer.lock"
RETIRED_GRACE_S = float(os.environ.get("LAMINA_RETIRED_GRACE_S", "120"))
VECTOR_DTYPES = {"float32": ("<f4", "vectors.f32"), "float16": ("<f2", "vectors.f16")}
DELETED_ROWS_FILE = "deleted_rows.i64"  # tombstones: raw little-endian int64 rows

# Columns every tile row has. Metadata columns (from a manifest) may not use these names.
TILE_CORE_COLUMNS: dict[str, pa.DataType] = {
    "tile_id": pa.int64(),
    "source_id": pa.string(),
    "source": pa.string(),
    "kind": pa.string(),
    "x": pa.int64(),
    "y": pa.int64(),
    "level": pa.int32(),
    "size_px": pa.int32(),
    "tile_px": pa.int32(),
    "mpp": pa.float64(),
    "tissue_fraction": pa.float32(),
    "segment_id": pa.string(),
    "row": pa.int64(),
}
SOURCE_CORE_COLUMNS: dict[str, pa.DataType] = {
    "source_id": pa.string(),
    "source": pa.string(),
    "kind": pa.string(),
    "width": pa.int64(),
    "height": pa.int64(),
    "mpp": pa.float64(),
    "n_tiles": pa.int64(),
    "properties": pa.string(),
    "segment_id": pa.string(),
    "row": pa.int64(),
    "file_size": pa.int64(),  # the source file when indexed (changed-file checks)
    "file_mtime_ns": pa.int64(),
}
RESERVED_COLUMNS = frozenset(TILE_CORE_COLUMNS) | frozenset(SOURCE_CORE_COLUMNS)


def file_stat(path: Path) -> dict[str, int]:
    """``file_size`` and ``file_mtime_ns`` of a source file, recorded with its row."""
    st = os.stat(path)
    return {"file_size": st.st_size, "file_mtime_ns": st.st_mtime_ns}


def new_segment_id() -> str:
    """Time-ordered (to the microsecond), collision-free id: ``20261126T034512.123456Z-1a2b3c4d``."""
    now = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 1_000_000_000))
    return f"{stamp}.{now // 1000 % 1_000_000:06d}Z-{secrets.token_hex(4)}"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON next to ``path``, fsync, then rename over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk leaves neither a partial file nor the temporary one
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@dataclass(frozen=True)
class SegmentInfo:
    segment_id: str
    path: Path
    n_tiles: int
    n_sources: int
    dim: int
    fingerprint: str
    run_id: str
    created_at: str
    dtype: str = "float32"
    replaces: tuple[str, ...] = ()
    meta: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    """``segment.json`` as read (checksums, tile id range); see ``search.integrity``."""

    @classmethod
    def load(cls, path: Path) -> SegmentInfo:
        meta = json.loads((path / "segment.json").read_text())
        if not isinstance(meta, dict):
            raise ValueError("segment.json is not a JSON object")
        return cls(
            segment_id=meta["segment_id"],
            path=path,
            n_tiles=meta["n_tiles"],
            n_sources=meta["n_sources"],
            dim=meta["dim"],
            fingerprint=meta["fingerprint"],
            run_id=meta.get("run_id", ""),
            created_at=meta.get("created_at", ""),
            dtype=meta.get("vector_dtype", "float32"),
            replaces=tuple(meta.get("replaces", ())),
            meta=meta,
        )

    @property
    def tile_id_range(self) -> tuple[int, int] | None:
        """(min, max) tile id recorded at commit (None: an older segment, read the ids)."""
        r = (self.meta or {}).get("tile_ids")
        return (int(r[0]), int(r[1])) if isinstance(r, list) and len(r) == 2 else None

    def file_digest(self, name: str) -> str | None:
        """The recorded checksum of one of the segment's files (None: not recorded)."""
        entry = ((self.meta or {}).get("files") or {}).get(name) or {}
        return entry.get("xxh3_64")

    @property
    def n_deleted(self) -> int:
        """Rows deleted but still on disk (tombstones, erased by the next compaction)."""
        return int((self.meta or {}).get("deleted_rows") or 0)

    def deleted_rows(self) -> np.ndarray:
        """The tombstoned rows of this segment, ascending (``deleted_rows.i64``; empty if none)."""
        if not self.n_deleted:
            return np.zeros(0, np.int64)
        return np.fromfile(self.path / DELETED_ROWS_FILE, dtype="<i8").astype(np.int64)

    @property
    def tiles_path(self) -> Path:
        return self.path / "tiles.parquet"

    @property
    def sources_path(self) -> Path:
        return self.path / "sources.parquet"

    @property
    def vectors_path(self) -> Path:
        return self.path / VECTOR_DTYPES[self.dtype][1]

    @property
    def vector_bytes(self) -> int:
        return self.n_tiles * self.dim * (2 if self.dtype == "float16" else 4)

    def vectors(self) -> np.ndarray:
        """Memory-mapped (n_tiles, dim) vectors in the segment's dtype (float32 or float16)."""
        code = VECTOR_DTYPES[self.dtype][0]
        if self.n_tiles == 0:
            return np.zeros((0, self.dim), code)
        return np.memmap(self.vectors_path, dtype=code, mode="r", shape=(self.n_tiles, self.dim))

    def source_vectors(self) -> np.ndarray:
        if self.n_sources == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.memmap(
            self.path / "source_vectors.f32",
            dtype="<f4",
            mode="r",
            shape=(self.n_sources, self.dim),
        )


# Committed segments never change, so their metadata is read once per process.
_INFO_CACHE: dict[Path, SegmentInfo] = {}


def list_segments(segments_dir: Path) -> list[SegmentInfo]:
    """Committed segments, oldest first. Temporary directories are never listed.

    Costs one directory listing per call once the segments have been seen (a server calls this
    on every request to notice new commits). Segments replaced by a committed compaction are
    left out, so a snapshot never holds a tile twice.
    """
    return list_segments_checked(segments_dir)[0]


def list_segments_checked(segments_dir: Path) -> tuple[list[SegmentInfo], dict[str, str]]:
    """:func:`list_segments`, plus ``{directory: reason}`` for directories under ``segments/``
    that are not loadable segments (``segment.json`` missing or unreadable): damaged segments,
    reported and never served."""
    if not segments_dir.is_dir():
        return [], {}
    for _ in range(5):
        listed = _listing(segments_dir)
        if listed is not None:
            break
    else:  # a compaction retired segments under five listings in a row: list once more
        listed = _listing(segments_dir) or ([], {})
    out, broken = listed
    replaced = {r for s in out for r in s.replaces}
    return ([s for s in out if s.segment_id not in replaced] if replaced else out), broken


def _listing(segments_dir: Path) -> tuple[list[SegmentInfo], dict[str, str]] | None:
    """One listing; None if a listed segment vanished meanwhile (retired by a compaction whose
    merged segment is already committed), so the caller lists again and sees the merge."""
    out = []
    broken: dict[str, str] = {}
    for entry in sorted(os.listdir(segments_dir)):
        if entry.startswith("."):
            continue
        path = segments_dir / entry
        info = _INFO_CACHE.get(path)
        if info is None:
            try:
                info = SegmentInfo.load(path)
            except FileNotFoundError:
                if not path.exists():
                    return None
                if path.is_dir():
                    broken[entry] = "segment.json is missing"
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                if path.is_dir():  # a stray file is not a segment
                    broken[entry] = f"segment.json is unreadable ({type(exc).__name__})"
                continue
            _INFO_CACHE[path] = info
        out.append(info)
    return out, broken


def retire(segments_dir: Path, segment_ids: Iterable[str]) -> None:
    """Hide replaced segments' directories; :func:`remove_stale` deletes them after the grace."""
    stamp = int(time.time())
    for sid in segment_ids:
        src = segments_dir / sid
        if src.is_dir():
            os.rename(src, segments_dir / f"{RETIRED_PREFIX}{stamp}-{sid}")
            _INFO_CACHE.pop(src, None)
    fsync_dir(segments_dir)


def remove_stale(segments_dir: Path, grace_s: float | None = None) -> list[str]:
    """Delete temporary segment directories whose writer is gone (its flock is free), and
    retired (replaced) segments older than the grace period."""
    removed: list[str] = []
    if not segments_dir.is_dir():
        return removed
    grace = RETIRED_GRACE_S if grace_s is None else grace_s
    for entry in os.listdir(segments_dir):
        if entry.startswith(RETIRED_PREFIX):
            stamp = entry[len(RETIRED_PREFIX) :].split("-", 1)[0]
            if stamp.isdigit() and time.time() - int(stamp) >= grace:
                shutil.rmtree(segments_dir / entry, ignore_errors=True)
                removed.append(entry)
            continue
        if not entry.startswith(TMP_PREFIX):
            continue
        path = segments_dir / entry
        lock_path = path / LOCK_NAME
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except FileNotFoundError:
            fd = None
        except OSError:
            continue
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer holds it
            shutil.rmtree(path, ignore_errors=True)
            removed.append(entry)
        finally:
            if fd is not None:
                os.close(fd)
    return removed


class SegmentWriter:
    """Accumulates whole sources and commits them as one immutable segment.

    Vectors are streamed to disk as they arrive; rows are kept in memory until commit (as row
    dicts from :meth:`add_source`, as Arrow tables from :meth:`add_block`), in arrival order.
    Every tile's ``row`` is its physical row in the segment and ``segment_id`` the segment's.
    """

    def __init__(
        self,
        segments_dir: Path,
        dim: int,
        fingerprint: str,
        run_id: str,
        allocate_ids: Any,
        dtype: str = "float32",
    ) -> None:
        if dtype not in VECTOR_DTYPES:
            raise ValueError(f"vector dtype must be one of {sorted(VECTOR_DTYPES)}, not {dtype!r}")
        self.segments_dir = segments_dir
        self.dtype = dtype
        self.dim = dim
        self.fingerprint = fingerprint
        self.run_id = run_id
        self._allocate_ids = allocate_ids
        self.segment_id = new_segment_id()
        segments_dir.mkdir(parents=True, exist_ok=True)
        self.tmp = segments_dir / (TMP_PREFIX + self.segment_id)
        self.tmp.mkdir()
        self._lock_fd = os.open(self.tmp / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._vec = open(self.tmp / VECTOR_DTYPES[dtype][1], "wb")  # noqa: SIM115 - closed in commit/abort
        self._vec_hash = Hasher()  # the vectors' checksum, computed as they are written
        self._min_id: int | None = None
        self._max_id: int | None = None
        self._tiles: list[dict[str, Any]] = []
        self._sources: list[dict[str, Any]] = []
        self._tile_parts: list[pa.Table] = []  # committed order: parts, then pending row dicts
        self._source_parts: list[pa.Table] = []
        self._source_vectors: list[np.ndarray] = []  # (m, dim) blocks
        self._n_tiles = 0
        self._n_sources = 0
        self.replaces: tuple[str, ...] = ()  # set by compaction before commit
        self.closed = False

    @property
    def n_tiles(self) -> int:
        return self._n_tiles

    @property
    def n_sources(self) -> int:
        return self._n_sources

    def add_source(
        self, source: dict[str, Any], tiles: list[dict[str, Any]], vectors: np.ndarray
    ) -> list[int]:
        """Add one whole source with its tile rows and (n, dim) vectors; returns the tile ids."""
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.shape != (len(tiles), self.dim) or not np.all(np.isfinite(vectors)):
            raise ValueError(
                f"vectors {vectors.shape} do not match {len(tiles)} tiles x {self.dim} "
                "or are not all finite"
            )
        ids = self._allocate_ids(len(tiles)) if tiles else []
        base_row = self._n_tiles
        for i, (tile, tid) in enumerate(zip(tiles, ids, strict=True)):
            row = dict(tile)
            row["tile_id"] = int(tid)
            row["source_id"] = source["source_id"]
            row["source"] = source["source"]
            row.setdefault("kind", source.get("kind", "photo"))
            row["segment_id"] = self.segment_id
            row["row"] = base_row + i
            self._tiles.append(row)
        self._n_tiles += len(tiles)
        self._write_vectors(vectors.astype(VECTOR_DTYPES[self.dtype][0], copy=False).tobytes())
        if ids:
            self._note_ids(min(ids), max(ids))
        src = dict(source)
        src["n_tiles"] = len(tiles)
        src["segment_id"] = self.segment_id
        src["row"] = self._n_sources
        if isinstance(src.get("properties"), dict):
            src["properties"] = json.dumps(src["properties"], sort_keys=True)
        self._sources.append(src)
        self._n_sources += 1
        mean = vectors.mean(axis=0) if len(vectors) else np.zeros(self.dim, np.float32)
        norm = float(np.linalg.norm(mean))
        self._source_vectors.append((mean / norm if norm > 0 else mean).astype("<f4")[None, :])
        return [int(t) for t in ids]

    def add_block(
        self,
        sources: pa.Table,
        tiles: pa.Table,
        vectors: np.ndarray,
        source_vectors: np.ndarray,
        block_rows: int = 65_536,
    ) -> None:
        """Append already-identified rows in bulk (compaction): tile ids and every other column
        are kept, ``row`` and ``segment_id`` renumbered for this segment. ``vectors`` (n, dim),
        e.g. another segment's memory map, are copied ``block_rows`` at a time, byte-identical
        when already in this segment's dtype; ``source_vectors`` (m, dim) are the sources' own.
        The caller adds whole sources (every tile of a source in the same segment)."""
        n, m = tiles.num_rows, sources.num_rows
        if vectors.shape != (n, self.dim) or source_vectors.shape != (m, self.dim):
            raise ValueError(
                f"vectors {vectors.shape} / source vectors {source_vectors.shape} do not match "
                f"{n} tiles / {m} sources x {self.dim}"
            )
        if "tile_id" not in tiles.column_names or "source_id" not in sources.column_names:
            raise ValueError("add_block needs tiles with tile_id and sources with source_id")
        code = VECTOR_DTYPES[self.dtype][0]
        for lo in range(0, n, block_rows):
            block = np.asarray(vectors[lo : lo + block_rows])
            if not np.all(np.isfinite(block)):
                raise ValueError(f"vectors {lo}..{lo + len(block)} are not all finite")
            self._write_vectors(np.ascontiguousarray(block, dtype=code).tobytes())
        if n:
            ids = tiles.column("tile_id")
            self._note_ids(int(pc.min(ids).as_py()), int(pc.max(ids).as_py()))
        self._flush_rows()
        self._tile_parts.append(_renumber(tiles, self.segment_id, self._n_tiles))
        self._source_parts.append(_renumber(sources, self.segment_id, self._n_sources))
        self._source_vectors.append(np.asarray(source_vectors, dtype="<f4").reshape(m, self.dim))
        self._n_tiles += n
        self._n_sources += m

    def _write_vectors(self, data: bytes) -> None:
        self._vec.write(data)
        self._vec_hash.update(data)

    def _note_ids(self, lo: int, hi: int) -> None:
        self._min_id = lo if self._min_id is None else min(self._min_id, lo)
        self._max_id = hi if self._max_id is None else max(self._max_id, hi)

    def vectors_digest(self) -> str:
        """Checksum of the vectors written so far (the final one once every row is added)."""
        return self._vec_hash.hexdigest()

    def _flush_rows(self) -> None:
        """Turn pending row dicts into table parts (keeps arrival order across both paths)."""
        if self._tiles:
            self._tile_parts.append(_table(self._tiles, TILE_CORE_COLUMNS))
            self._tiles = []
        if self._sources:
            self._source_parts.append(_table(self._sources, SOURCE_CORE_COLUMNS))
            self._sources = []

    def commit(self) -> SegmentInfo | None:
        """fsync everything and rename into place. Returns None if nothing was added."""
        if self.closed:
            raise RuntimeError("segment already closed")
        if not self._n_sources:
            self.abort()
            return None
        self._vec.flush()
        os.fsync(self._vec.fileno())
        self._vec.close()
        self._flush_rows()
        tiles = _concat(self._tile_parts, TILE_CORE_COLUMNS)
        sources = _concat(self._source_parts, SOURCE_CORE_COLUMNS)
        pq.write_table(tiles, self.tmp / "tiles.parquet")
        pq.write_table(sources, self.tmp / "sources.parquet")
        source_vectors = np.concatenate(self._source_vectors).astype("<f4").tobytes()
        with open(self.tmp / "source_vectors.f32", "wb") as f:
            f.write(source_vectors)
        vec_name = VECTOR_DTYPES[self.dtype][1]
        files = {
            "tiles.parquet": file_entry(self.tmp / "tiles.parquet"),
            "sources.parquet": file_entry(self.tmp / "sources.parquet"),
            "source_vectors.f32": file_entry(
                self.tmp / "source_vectors.f32", digest_bytes(source_vectors)
            ),
            vec_name: file_entry(self.tmp / vec_name, self.vectors_digest()),
        }
        meta = {
            "segment_id": self.segment_id,
            "n_tiles": self._n_tiles,
            "n_sources": self._n_sources,
            "dim": self.dim,
            "fingerprint": self.fingerprint,
            "run_id": self.run_id,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "vector_dtype": self.dtype,
            "replaces": list(self.replaces),
            "format": 1,
            "files": files,
            "tile_ids": None if self._min_id is None else [self._min_id, self._max_id],
        }
        meta["checksum"] = meta_checksum(meta)
        with open(self.tmp / "segment.json", "w") as f:
            json.dump(meta, f, indent=2)
        for name in ("tiles.parquet", "sources.parquet", "source_vectors.f32", "segment.json"):
            _fsync_file(self.tmp / name)
        fsync_dir(self.tmp)
        final = self.segments_dir / self.segment_id
        os.rename(self.tmp, final)
        fsync_dir(self.segments_dir)
        self._release()
        (final / LOCK_NAME).unlink(missing_ok=True)
        return SegmentInfo.load(final)

    def abort(self) -> None:
        if self.closed:
            return
        if not self._vec.closed:
            with contextlib.suppress(OSError):  # a full disk cannot flush what is thrown away
                self._vec.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        self.closed = True
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            os.close(self._lock_fd)


def _renumber(table: pa.Table, segment_id: str, base_row: int) -> pa.Table:
    """``table`` with ``segment_id`` set to ``segment_id`` and ``row`` to base_row, base_row+1..."""
    n = table.num_rows
    rows = pa.array(np.arange(base_row, base_row + n, dtype=np.int64))
    seg = pa.array([segment_id] * n, pa.string())
    for name, values in (("row", rows), ("segment_id", seg)):
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, values)
        else:
            table = table.append_column(name, values)
    return table


def committed_source_ids(segments: Iterable[SegmentInfo]) -> dict[str, list[str]]:
    """source_id (content hash) -> the source paths committed with it, over the segments.

    Damaged segments (failing the cheap checks of ``search.integrity``) are left out: their
    sources count as not indexed, so indexing them again re-commits them."""
    from lamina.search.integrity import check_segment

    out: dict[str, list[str]] = {}
    for seg in segments:
        if check_segment(seg, hash_limit=0):
            continue
        try:
            t = pq.read_table(seg.sources_path, columns=["source_id", "source"])
        except Exception:  # noqa: BLE001 - unreadable past its footer: damaged, not indexed
            continue
        for sid, src in zip(
            t.column("source_id").to_pylist(), t.column("source").to_pylist(), strict=True
        ):
            out.setdefault(sid, []).append(src)
    return out
