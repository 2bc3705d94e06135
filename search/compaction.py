"""Compaction: merge a collection's small segments into large ones.

Method (tiered). Segments below ``target_rows`` tiles are taken oldest first and cut into groups
of consecutive small segments whose total stays within ``target_rows``; each group of at least
``min_segments`` segments becomes one new segment, written by the ordinary segment writer
(:meth:`SegmentWriter.add_block`): tile ids, tile rows, source rows, per-source vectors and the
vectors themselves (same dtype, byte-identical) are carried over; only ``row`` and
``segment_id`` are renumbered. Vectors are read from the old files and written ``BLOCK_ROWS``
rows at a time, so memory stays bounded by one block plus the group's metadata tables.

Atomicity and crash safety. The merged segment is committed with ``replaces`` naming the
segments it merges: its single atomic ``rename`` makes it visible and, in the same step, hides
the old ones (``list_segments`` leaves out replaced segments). Only then are the old directories
retired (renamed aside; :func:`search.segments.remove_stale` deletes them after a grace period,
so a process that opened them keeps reading). A SIGKILL before the rename leaves a temporary
directory (removed by the next cleanup) and the old segments visible; after it, the merged one
visible; never both, never neither. Before merging, a compaction first retires segments that a
committed compaction replaced but did not get to retire, so a later merge of the merged segment
can never resurrect them.

IVF indexes keep covering a merged segment without re-assignment: the old segments' list
assignments are concatenated into the new segment's sidecar before the commit
(:func:`search.ann.copy_sidecars`); other index kinds index the new segment on the next
``update_index`` (a server does so in the background). Sidecars of segments no longer present are
removed afterwards.

Compaction holds the collection's ingest lock, so it never races an ingest (or another
compaction) on the same segments; searches never take that lock. :func:`maybe_compact` runs it
when more than ``LAMINA_COMPACT_SEGMENTS`` (default 16) segments are below the target, and gives
way (does nothing) when an ingest holds the lock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lamina.search.ann import AnnIndex, copy_sidecars, write_assignment
from lamina.search.integrity import check_segment
from lamina.search.segments import (
    TMP_PREFIX,
    VECTOR_DTYPES,
    SegmentInfo,
    SegmentWriter,
    remove_stale,
    retire,
)
from lamina.search.store import Collection

DEFAULT_TARGET_ROWS = 1_000_000
DEFAULT_MIN_SEGMENTS = 2
THRESHOLD_ENV = "LAMINA_COMPACT_SEGMENTS"
DEFAULT_THRESHOLD = 16
BLOCK_ROWS = 65_536
Progress = Callable[[str, int, int], None]


class _Busy(Exception):
    """The ingest lock is held by another process (maybe_compact gives way)."""


def threshold() -> int:
    """How many small segments are tolerated before :func:`maybe_compact` merges them."""
    try:
        return max(1, int(os.environ.get(THRESHOLD_ENV) or DEFAULT_THRESHOLD))
    except ValueError:
        return DEFAULT_THRESHOLD


def plan_groups(
    segments: Sequence[SegmentInfo],
    target_rows: int = DEFAULT_TARGET_ROWS,
    min_segments: int = DEFAULT_MIN_SEGMENTS,
) -> list[list[SegmentInfo]]:
    """Groups of consecutive small segments (oldest first) to merge, each within ``target_rows``.

    A segment at or above the target, or of another vector dtype, ends the current group;
    groups of fewer than ``min_segments`` segments are left alone.
    """
    groups: list[list[SegmentInfo]] = []
    current: list[SegmentInfo] = []
    rows = 0

    def close() -> None:
        if len(current) >= max(2, min_segments):
            groups.append(list(current))
        current.clear()

    for seg in segments:
        if seg.n_tiles >= target_rows:
            close()
            rows = 0
            continue
        if current and (rows + seg.n_tiles > target_rows or seg.dtype != current[0].dtype):
            close()
            rows = 0
        current.append(seg)
        rows += seg.n_tiles
    close()
    return groups


def small_segments(col: Collection, target_rows: int = DEFAULT_TARGET_ROWS) -> int:
    """Number of the collection's visible segments below ``target_rows`` tiles."""
    return sum(1 for s in col.segments() if s.n_tiles < target_rows)


@contextmanager
def _locked(col: Collection, wait: bool, on_wait: Callable[[str], None] | None) -> Iterator[None]:
    def waiting(holder: str) -> None:
        if not wait:
            raise _Busy(holder)
        if on_wait is not None:
            on_wait(holder)

    with col.ingest_lock(on_wait=waiting):
        yield


def _read(path: Path, rows: int) -> pa.Table:
    """A small Parquet file is read fastest directly, without threads (about 1 ms vs 3 ms)."""
    return pq.ParquetFile(path).read(use_threads=rows >= BLOCK_ROWS)


def _tiles_in_row_order(seg: SegmentInfo) -> pa.Table:
    table = _read(seg.tiles_path, seg.n_tiles)
    rows = table.column("row").to_numpy()
    if seg.n_tiles and not np.array_equal(rows, np.arange(seg.n_tiles)):
        table = table.take(pa.array(np.argsort(rows, kind="stable")))
    if table.num_rows != seg.n_tiles:
        raise ValueError(
            f"segment {seg.segment_id}: tiles.parquet has {table.num_rows} rows, "
            f"segment.json says {seg.n_tiles}"
        )
    return table


def _blocks(seg: SegmentInfo, code: np.dtype) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, vectors) of the segment, ``BLOCK_ROWS`` rows at a time, by plain reads."""
    if seg.n_tiles == 0:
        return
    with open(seg.vectors_path, "rb") as f:
        for lo in range(0, seg.n_tiles, BLOCK_ROWS):
            n = min(BLOCK_ROWS, seg.n_tiles - lo)
            block = np.fromfile(f, dtype=code, count=n * seg.dim)
            if len(block) != n * seg.dim:
                raise ValueError(f"segment {seg.segment_id}: the vectors file is short")
            yield lo, block.reshape(n, seg.dim)


def _no_ids(n: int) -> range:
    raise RuntimeError("a compaction writer never allocates tile ids")


def merge(
    col: Collection, group: Sequence[SegmentInfo], progress: Progress | None = None
) -> SegmentInfo:
    """Write ``group`` as one new segment and commit it, which hides the group's segments.

    Does not retire them (the caller does, right after). Raises, leaving only a temporary
    directory that is then removed, when a segment does not match the collection.
    """
    dtype = group[0].dtype
    code = np.dtype(VECTOR_DTYPES[dtype][0])
    total = sum(s.n_tiles - s.n_deleted for s in group)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    writer = SegmentWriter(
        col.segments_dir, col.dim, col.fingerprint, f"compact-{stamp}", _no_ids, dtype
    )
    keeps: list[np.ndarray | None] = []
    try:
        done = 0
        for seg in group:
            if seg.dim != col.dim or seg.fingerprint != col.fingerprint or seg.dtype != dtype:
                raise ValueError(f"segment {seg.segment_id} does not match the collection")
            tiles = _tiles_in_row_order(seg)
            sources = _read(seg.sources_path, seg.n_sources)
            source_vectors = np.array(seg.source_vectors(), dtype="<f4")
            # the segment's sources first, then its tiles block by block
            writer.add_block(
                sources, tiles.slice(0, 0), np.zeros((0, col.dim), code), source_vectors
            )
            keep = _live_rows(seg)
            keeps.append(keep)
            if keep is not None:  # tombstones: only the live rows are written (erasure)
                vectors = seg.vectors()
                for lo in range(0, len(keep), BLOCK_ROWS):
                    rows = keep[lo : lo + BLOCK_ROWS]
                    writer.add_block(
                        sources.slice(0, 0),
                        tiles.take(pa.array(rows)),
                        np.asarray(vectors[rows]),
                        source_vectors[:0],
                    )
                    done += len(rows)
                    if progress is not None:
                        progress("merge", done, total)
                continue
            for lo, block in _blocks(seg, code):
                writer.add_block(
                    sources.slice(0, 0), tiles.slice(lo, len(block)), block, source_vectors[:0]
                )
                done += len(block)
                if progress is not None:
                    progress("merge", done, total)
        writer.replaces = tuple(s.segment_id for s in group)
        copy_sidecars(col, group, writer.segment_id, writer.n_tiles, writer.vectors_digest(), keeps)
        info = writer.commit()
    except BaseException:
        writer.abort()
        raise
    if info is None:  # pragma: no cover - a group always has sources
        raise ValueError("nothing to merge")
    return info


def _live_rows(seg: SegmentInfo) -> np.ndarray | None:
    """The rows of a segment that are not tombstones (None: it has none)."""
    if not seg.n_deleted:
        return None
    live = np.ones(seg.n_tiles, bool)
    live[seg.deleted_rows()] = False
    return np.flatnonzero(live)


def _dropped(table: pa.Table, drop: set[tuple[str, str]]) -> np.ndarray:
    ids, paths = table.column("source_id").to_pylist(), table.column("source").to_pylist()
    return np.array([p in drop for p in zip(ids, paths, strict=True)], bool)


def _moved(table: pa.Table, moves: Mapping[tuple[str, str], Mapping[str, Any]]) -> pa.Table:
    """``table`` with the fields of ``moves[(source_id, source)]`` (the new ``source`` path and,
    in a sources table, the file's ``file_size`` / ``file_mtime_ns``) set on its moved rows."""
    keys = list(zip(table.column("source_id").to_pylist(), table.column("source").to_pylist(),
                    strict=True))  # fmt: skip
    for name in ("source", "file_size", "file_mtime_ns"):
        if name not in table.column_names:
            continue
        values = table.column(name).to_pylist()
        new = [moves[k][name] if k in moves and name in moves[k] else v
               for k, v in zip(keys, values, strict=True)]  # fmt: skip
        col_type = table.schema.field(name).type
        table = table.set_column(table.column_names.index(name), name, pa.array(new, type=col_type))
    return table


def carry_over(
    col: Collection,
    writer: SegmentWriter,
    drop: set[tuple[str, str]],
    moves: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> list[str]:
    """Add to ``writer`` every row of the segments holding a (source_id, source path) of
    ``drop`` except those sources' rows, and make ``writer`` replace those segments (so its
    commit removes the dropped rows atomically). Returns the replaced segment ids; the
    caller retires them after the commit. Used when a file's bytes changed since indexing.
    ``moves`` maps (source_id, source path) of sources found at a new path to their new
    ``source`` (and ``file_size`` / ``file_mtime_ns``): their rows are carried over with
    those fields changed, tile ids and vectors unchanged."""
    hit = []
    moves = moves or {}
    for seg in col.segments():
        if check_segment(seg, hash_limit=0):
            continue  # damaged: quarantined already (repair re-indexes it)
        sources = _read(seg.sources_path, seg.n_sources)
        keep_src = ~_dropped(sources, drop)
        moved = _dropped(sources, set(moves)).any() if moves else False
        if keep_src.all() and not moved:
            continue
        tiles = _tiles_in_row_order(seg)
        if moved:
            sources, tiles = _moved(sources, moves), _moved(tiles, moves)
        alive = _live_rows(seg)  # tombstones are never carried over
        gone = _dropped(tiles, drop)
        if alive is not None:
            gone[np.setdiff1d(np.arange(seg.n_tiles), alive)] = True
        keep = np.flatnonzero(~gone)
        code = np.dtype(VECTOR_DTYPES[seg.dtype][0])
        source_vectors = np.array(seg.source_vectors(), dtype="<f4")[keep_src]
        writer.add_block(
            sources.filter(pa.array(keep_src)),
            tiles.slice(0, 0),
            np.zeros((0, col.dim), code),
            source_vectors,
        )
        vectors = seg.vectors()
        for lo in range(0, len(keep), BLOCK_ROWS):
            rows = keep[lo : lo + BLOCK_ROWS]
            writer.add_block(
                sources.slice(0, 0),
                tiles.take(pa.array(rows)),
                np.asarray(vectors[rows]),
                source_vectors[:0],
            )
        hit.append(seg.segment_id)
    writer.replaces = tuple(writer.replaces) + tuple(hit)
    return hit


def finish_interrupted(col: Collection) -> dict[str, list[str]]:
    """Retire segments a committed compaction replaced but did not get to retire (chains of
    merges included), remove temporary directories of dead writers, and drop index sidecars of
    segments no longer present."""
    segments_dir = col.segments_dir
    present: dict[str, SegmentInfo] = {}
    if segments_dir.is_dir():
        for entry in sorted(os.listdir(segments_dir)):
            if not entry.startswith("."):
                try:
                    present[entry] = SegmentInfo.load(segments_dir / entry)
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # not a loadable segment (damaged: reported by verify)
    leftovers = sorted({r for s in present.values() for r in s.replaces} & set(present))
    if leftovers:
        retire(segments_dir, leftovers)
    removed = remove_stale(segments_dir)
    return {"retired": leftovers, "removed": removed, "sidecars": _drop_sidecars(col)}


def _drop_sidecars(col: Collection) -> list[str]:
    ann = AnnIndex.load(col)
    if ann is None or not ann.dir.is_dir():
        return []
    present = {e for e in os.listdir(col.segments_dir) if not e.startswith(".")}
    # a writer's temporary directory may already have its sidecar (copied before its commit)
    present |= {
        e[len(TMP_PREFIX) :] for e in os.listdir(col.segments_dir) if e.startswith(TMP_PREFIX)
    }
    dropped = []
    for name in os.listdir(ann.dir):
        if not name.startswith("seg-"):
            continue
        sid = name[len("seg-") :].rsplit(".", 1)[0]
        if sid not in present:
            (ann.dir / name).unlink(missing_ok=True)
            dropped.append(sid)
    return dropped


def compact(
    col: Collection,
    *,
    min_segments: int = DEFAULT_MIN_SEGMENTS,
    target_rows: int = DEFAULT_TARGET_ROWS,
    progress: Progress | None = None,
    wait: bool = True,
    on_wait: Callable[[str], None] | None = None,
    erase: bool = False,
    retrain_index: bool = False,
) -> dict[str, Any]:
    """Merge the collection's small segments (see the module docstring); returns a summary.

    Every segment holding tombstones (deleted rows) is written again without them, merged or
    alone, whatever its size: the deleted vectors and rows are then in no visible segment. The
    replaced directories are retired and removed after ``LAMINA_RETIRED_GRACE_S`` (120 s) by
    the next compaction or ingest; with ``erase`` they are removed at once (a process that has
    them mapped keeps its mapping until its next snapshot; the blocks are freed when it lets go)
    and the index entries of deleted rows go with the segments they belonged to (a rewritten
    segment's IVF lists are carried over for its kept rows only). ``retrain_index`` (with
    ``erase``) also trains the ANN index again on the remaining vectors: its centroids or PQ
    codebooks are means over a training sample that may hold deleted vectors -- no vector's
    bytes, but derived from them. Retraining costs a full index build (105 s of the 111 s of an
    erase at 1M tiles, ``python -m bench.lifecycle``), so it is asked for, not implied.

    Holds the ingest lock; with ``wait=False`` returns ``{"skipped": ...}`` instead of waiting
    for an ingest that holds it (``on_wait(holder)`` is called once when waiting).
    """
    t0 = time.perf_counter()
    index_seconds: float | None = None
    merged: list[dict[str, Any]] = []
    try:
        with _locked(col, wait, on_wait):
            cleaned = finish_interrupted(col)
            before = col.segments()
            healthy = [s for s in before if not check_segment(s, hash_limit=0)]
            gone = [s for s in healthy if s.n_deleted and not s.n_sources]  # nothing live left
            if gone:  # leaves the listing in one rename; removed with the other retired ones
                retire(col.segments_dir, [s.segment_id for s in gone])
            live = [s for s in healthy if s not in gone]
            groups = plan_groups(live, target_rows, min_segments)
            grouped = {s.segment_id for g in groups for s in g}
            groups += [[s] for s in live if s.n_deleted and s.segment_id not in grouped]
            erased = sum(s.n_deleted for g in groups for s in g) + sum(s.n_deleted for s in gone)
            for group in groups:
                t1 = time.perf_counter()
                info = merge(col, group, progress)
                retire(col.segments_dir, info.replaces)
                merged.append(
                    {
                        "segment_id": info.segment_id,
                        "replaces": list(info.replaces),
                        "tiles": info.n_tiles,
                        "sources": info.n_sources,
                        "seconds": round(time.perf_counter() - t1, 3),
                    }
                )
            if merged:
                cleaned["sidecars"] += _drop_sidecars(col)
            if erase:
                cleaned["removed"] += remove_stale(col.segments_dir, grace_s=0)
                if erased and AnnIndex.load(col) is not None:
                    from lamina.search.ann import update_index

                    # the rewritten segments are indexed before this returns (IVF lists are
                    # carried over; code and graph indexes encode them again)
                    t1 = time.perf_counter()
                    update_index(col, rebuild=retrain_index)
                    index_seconds = round(time.perf_counter() - t1, 3)
            after = col.segments()
    except _Busy as busy:
        return {"skipped": f"an ingest ({busy}) holds the collection's ingest lock"}
    except OSError as exc:  # full disk: the group being merged was aborted, its segments stay
        from lamina.search.errors import io_failure

        done = f"{len(merged)} merges committed before it" if merged else "nothing was merged"
        raise io_failure(f"compaction of collection {col.name!r} ({done})", exc) from exc
    return {
        "collection": col.name,
        "segments_before": len(before),
        "segments_after": len(after),
        "tiles": sum(s.n_tiles for s in after),
        "merged": merged,
        "retired_leftovers": cleaned["retired"],
        "erased_tiles": erased,
        "erase": erase,
        "index_retrained": index_seconds is not None and retrain_index,
        "index_seconds": index_seconds,
        "removed": cleaned["removed"],
        "target_rows": target_rows,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def maybe_compact(
    col: Collection,
    *,
    target_rows: int = DEFAULT_TARGET_ROWS,
    limit: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any] | None:
    """Compact when more than ``limit`` (default :func:`threshold`) segments are below the
    target; None when not needed. Never waits for an ingest (that ingest compacts after)."""
    limit = threshold() if limit is None else limit
    if small_segments(col, target_rows) <= limit:
        return None
    return compact(col, target_rows=target_rows, progress=progress, wait=False)


# -- clustering: rows in IVF list order ----------------------------------------------------------
CLUSTER_MIN_ROWS = 65_536


def cluster(
    col: Collection,
    *,
    min_rows: int = CLUSTER_MIN_ROWS,
    progress: Progress | None = None,
    wait: bool = False,
) -> dict[str, Any]:
    """Rewrite each IVF-indexed segment of at least ``min_rows`` tiles with its rows sorted by
    IVF list (then by row), so that every list is a contiguous run of the vectors file: an IVF
    probe then reads a few sequential ranges instead of thousands of scattered rows. Same
    protocol as a merge (one new segment that ``replaces`` the old one, committed by rename,
    the old one retired); tile ids, rows' content and vectors are unchanged, only their order.
    Segments already in list order are skipped. Does nothing for other index kinds.
    """
    ann = AnnIndex.load(col)
    if ann is None or ann.spec.kind != "ivf":
        return {"clustered": []}
    done: list[str] = []
    try:
        with _locked(col, wait, None):
            for seg in col.segments():
                if seg.n_tiles < min_rows or seg.n_deleted or check_segment(seg, hash_limit=0):
                    continue  # (a segment with tombstones is written again by compaction)
                part = ann.segment(seg.segment_id)
                if part is None or part.assign is None or part.contiguous:
                    continue
                info = _cluster_one(col, seg, part.assign, progress)
                retire(col.segments_dir, info.replaces)
                done.append(info.segment_id)
            if done:
                _drop_sidecars(col)
    except _Busy as busy:
        return {"clustered": done, "skipped": f"an ingest ({busy}) holds the ingest lock"}
    return {"clustered": done}


def _cluster_one(
    col: Collection, seg: SegmentInfo, assign: np.ndarray, progress: Progress | None
) -> SegmentInfo:
    order = np.argsort(assign, kind="stable")
    code = np.dtype(VECTOR_DTYPES[seg.dtype][0])
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    writer = SegmentWriter(
        col.segments_dir, col.dim, col.fingerprint, f"cluster-{stamp}", _no_ids, seg.dtype
    )
    try:
        tiles = _tiles_in_row_order(seg).take(pa.array(order))
        sources = _read(seg.sources_path, seg.n_sources)
        writer.add_block(
            sources,
            tiles.slice(0, 0),
            np.zeros((0, col.dim), code),
            np.array(seg.source_vectors(), dtype="<f4"),
        )
        vectors = seg.vectors()
        for lo in range(0, seg.n_tiles, BLOCK_ROWS):
            rows = order[lo : lo + BLOCK_ROWS]
            writer.add_block(
                sources.slice(0, 0),
                tiles.slice(lo, len(rows)),
                np.asarray(vectors[np.sort(rows)])[np.argsort(np.argsort(rows))],
                np.zeros((0, col.dim), "<f4"),
            )
            if progress is not None:
                progress("cluster", lo + len(rows), seg.n_tiles)
        writer.replaces = (seg.segment_id,)
        write_assignment(col, writer.segment_id, assign[order], writer.vectors_digest())
        info = writer.commit()
    except BaseException:
        writer.abort()
        raise
    assert info is not None
    return info
