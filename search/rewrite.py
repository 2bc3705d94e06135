"""Change committed data without re-embedding: metadata updates (annotate) and deletions.

Segments never change, so a change is a new segment that ``replaces`` the old one (the protocol
of compaction: one atomic rename makes the new segment visible and hides the old one; the old
one is then retired, and a process that opened it keeps reading it until it takes its next
snapshot). What makes this cheap is that the new segment *shares* the old one's vectors:

- ``vectors.f32`` / ``vectors.f16`` is a hard link to the old segment's file (same inode, same
  bytes, same recorded checksum; nothing is copied). Only where the file system refuses a hard
  link is it copied.
- ``tiles.parquet`` and ``sources.parquet`` are written again with the changed values; the
  per-source vectors (``source_vectors.f32``, one per source) are written again too.
- An ANN sidecar of the old segment is linked under the new id with its checksum record (it
  was built from the same vectors), so the index keeps covering the segment.

Cost: only segments holding a changed source are rewritten, and for those the metadata only.
At 10M tiles in 1M-tile segments (384-d float32: 1.5 GB of vectors each), changing one column
of every row rewrites ten ``tiles.parquet`` files (tens of MB each) and links ten vectors files:
no vector byte is read or written. Segments whose sources did not change are not touched.

Annotate (:func:`annotate`): ``updates`` maps (source id, source path) to the new values of
some metadata columns; the other columns keep their values. A value equal to the stored one is
no change; a source whose values all equal is not rewritten and not reported. Every change is
reported per source and column (old -> new). A tile's metadata is its source's (the ingest
denormalises the source's row into every tile), so each tile takes its source's new values. A
column's type follows its values: the stored type when every value fits it, else the type the
values have together (a column typed differently in two segments is unified by the views).

Delete (:func:`delete`): the deleted sources' rows leave ``sources.parquet`` and their source
vectors leave ``source_vectors.f32``; their tiles stay in ``tiles.parquet`` and in the shared
vectors file (so rows stay aligned with it) but every column except ``tile_id`` is null, and
their rows are listed in ``deleted_rows.i64`` (tombstones, recorded with a checksum in
``segment.json``). Readers leave tombstoned rows out of every mask, id lookup and bulk query,
so from the commit on a deleted tile is never a hit, a candidate, a count or an export row, and
a query by its id is ``TILE_NOT_FOUND`` ("was deleted"). The vectors and the old segment's files
still hold the deleted data until the next compaction (``search.compaction``) writes the
segment again without the tombstoned rows and removes the retired directories -- at once with
``erase``; see :func:`search.compaction.compact`.

All of this runs under the collection's ingest lock (no ingest or compaction at the same time;
searches never take it).
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lamina.search.integrity import check_segment, digest_bytes, file_entry, meta_checksum
from lamina.search.segments import (
    DELETED_ROWS_FILE,
    LOCK_NAME,
    RESERVED_COLUMNS,
    TMP_PREFIX,
    VECTOR_DTYPES,
    SegmentInfo,
    _fsync_file,
    _renumber,
    fsync_dir,
    new_segment_id,
    retire,
)
from lamina.search.store import Collection

SourceKey = tuple[str, str]
"""(source id, stored source path): one indexed file."""
Edited = tuple[pa.Table, pa.Table, np.ndarray, np.ndarray]
"""A segment's new (tiles, sources, source vectors, tombstoned rows)."""

# columns a deletion keeps for its tombstoned rows (everything else becomes null)
_KEPT_FOR_TOMBSTONES = ("tile_id", "segment_id", "row")


def link_or_copy(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` at ``dst`` (True), or copy it where links are refused (False)."""
    try:
        os.link(src, dst)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    shutil.copyfile(src, dst)
    _fsync_file(dst)
    return False


def _plain(value: Any) -> Any:
    """A manifest value as stored: numpy scalars as Python ones, NaN as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, float) and math.isnan(old):
        old = None
    if isinstance(new, float) and math.isnan(new):
        new = None
    if old is None or new is None:
        return old is None and new is None
    if isinstance(old, bool) != isinstance(new, bool):
        return False
    if isinstance(old, int | float) and isinstance(new, int | float):
        return bool(old == new)
    return type(old) is type(new) and bool(old == new)


def _typed(values: list[Any], prefer: pa.DataType | None) -> pa.Array:
    """``values`` as one Arrow array: of ``prefer`` when they all fit, else inferred, else text."""
    if prefer is not None and pa.types.is_dictionary(prefer):
        prefer = prefer.value_type
    if prefer is not None and not pa.types.is_null(prefer):
        try:
            return pa.array(values, type=prefer)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
            pass
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def _keys(table: pa.Table) -> list[SourceKey | None]:
    ids, paths = table.column("source_id").to_pylist(), table.column("source").to_pylist()
    return [
        None if i is None or p is None else (str(i), str(p))
        for i, p in zip(ids, paths, strict=True)
    ]


def _tile_sources(tiles: pa.Table, keys: Sequence[SourceKey | None]) -> np.ndarray:
    """For every tile row the index of its source in ``keys`` (-1: none, a tombstone)."""
    joined = pc.binary_join_element_wise(tiles.column("source_id"), tiles.column("source"), "\0")
    wanted = pa.array(["\0".join(k) if k is not None else None for k in keys], pa.string())
    idx = pc.index_in(joined, value_set=wanted)
    return np.asarray(idx.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


def _read_tiles(seg: SegmentInfo) -> pa.Table:
    table = pq.read_table(seg.tiles_path)
    rows = table.column("row").to_numpy()
    if seg.n_tiles and not np.array_equal(rows, np.arange(seg.n_tiles)):
        table = table.take(pa.array(np.argsort(rows, kind="stable")))
    return table


def _set_column(table: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


def _apply_updates(
    tiles: pa.Table,
    sources: pa.Table,
    updates: Mapping[SourceKey, Mapping[str, Any]],
    changes: list[dict[str, Any]],
) -> tuple[pa.Table, pa.Table]:
    """New values for the segment's sources named in ``updates``; changes appended."""
    keys = _keys(sources)
    old_rows = sources.to_pylist()
    changed: dict[int, dict[str, Any]] = {}
    for i, key in enumerate(keys):
        new = updates.get(key) if key is not None else None
        if not new:
            continue
        diff = {
            c: {"old": old_rows[i].get(c), "new": v}
            for c, v in new.items()
            if c not in RESERVED_COLUMNS and not _same(old_rows[i].get(c), v)
        }
        if diff:
            changed[i] = dict(new)
            assert key is not None
            changes.append({"source_id": key[0], "source": key[1], "changes": diff})
    if not changed:
        return tiles, sources
    columns = sorted({c for new in changed.values() for c in new if c not in RESERVED_COLUMNS})
    tile_src = _tile_sources(tiles, keys)
    is_changed = np.zeros(len(keys), bool)
    is_changed[list(changed)] = True
    tile_changed = pa.array((tile_src >= 0) & is_changed[np.maximum(tile_src, 0)])
    for c in columns:
        per_source = [
            changed[i].get(c, row.get(c)) if i in changed else row.get(c)
            for i, row in enumerate(old_rows)
        ]
        old_tiles = tiles.column(c) if c in tiles.column_names else None
        prefer = old_tiles.type if old_tiles is not None else None
        values = _typed(per_source, prefer)
        sources = _set_column(sources, c, values)
        taken = values.take(pa.array(np.maximum(tile_src, 0)))
        if old_tiles is None:
            old = pa.nulls(tiles.num_rows, values.type)
        else:
            old = old_tiles.combine_chunks()
            if pa.types.is_dictionary(old.type):
                old = old.cast(old.type.value_type)
            if old.type != values.type:
                old = old.cast(values.type) if _castable(old, values.type) else None
        if old is None:  # the old values do not fit the new type: take every tile's source value
            new_col = taken
        else:
            new_col = pc.if_else(tile_changed, taken, old)
        tiles = _set_column(tiles, c, new_col)
    return tiles, sources


def _castable(arr: pa.Array, to: pa.DataType) -> bool:
    try:
        arr.cast(to)
        return True
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return False


def _apply_deletes(
    tiles: pa.Table,
    sources: pa.Table,
    source_vectors: np.ndarray,
    tombstones: np.ndarray,
    delete: set[SourceKey],
    deleted: list[dict[str, Any]],
) -> tuple[pa.Table, pa.Table, np.ndarray, np.ndarray]:
    keys = _keys(sources)
    gone = np.array([k is not None and k in delete for k in keys], bool)
    if not gone.any():
        return tiles, sources, source_vectors, tombstones
    tile_src = _tile_sources(tiles, keys)
    dead = np.zeros(tiles.num_rows, bool)
    dead[tombstones] = True
    newly = (tile_src >= 0) & gone[np.maximum(tile_src, 0)] & ~dead
    n_tiles = np.bincount(tile_src[newly], minlength=len(keys))
    for i in np.flatnonzero(gone):
        key = keys[i]
        assert key is not None
        deleted.append({"source_id": key[0], "source": key[1], "tiles": int(n_tiles[i])})
    dead |= newly
    live = pa.array(~dead)
    for name in tiles.column_names:
        if name in _KEPT_FOR_TOMBSTONES:
            continue
        col = tiles.column(name).combine_chunks()
        tiles = tiles.set_column(
            tiles.column_names.index(name),
            name,
            pc.if_else(live, col, pa.nulls(len(col), col.type)),
        )
    keep = ~gone
    return (
        tiles,
        sources.filter(pa.array(keep)),
        np.ascontiguousarray(source_vectors[keep]),
        np.flatnonzero(dead).astype(np.int64),
    )


def _carry_sidecar(col: Collection, old_id: str, new_id: str) -> None:
    """Link the old segment's ANN sidecar (and its checksum record) under the new id."""
    from lamina.search.ann import AnnIndex
    from lamina.search.segments import write_json_atomic

    ann = AnnIndex.load(col)
    if ann is None:
        return
    src = ann.sidecar(old_id)
    if not src.exists() or ann.part_problem(old_id, hash_limit=0) is not None:
        return  # not indexed or not trusted: update_index indexes the new segment
    record = json.loads(src.with_suffix(".sum").read_text())
    dst = ann.sidecar(new_id)
    write_json_atomic(dst.with_suffix(".sum"), record)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    link_or_copy(src, tmp)
    os.replace(tmp, dst)


def _commit(
    col: Collection,
    seg: SegmentInfo,
    tiles: pa.Table,
    sources: pa.Table,
    source_vectors: np.ndarray,
    tombstones: np.ndarray,
    run_id: str,
) -> SegmentInfo:
    """Write the rewritten segment next to ``seg`` (vectors linked) and commit it replacing
    ``seg``; ``seg`` is then retired."""
    sid = new_segment_id()
    tmp = col.segments_dir / (TMP_PREFIX + sid)
    tmp.mkdir()
    fd = os.open(tmp / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        vec_name = VECTOR_DTYPES[seg.dtype][1]
        link_or_copy(seg.vectors_path, tmp / vec_name)
        pq.write_table(_renumber(tiles, sid, 0), tmp / "tiles.parquet")
        pq.write_table(_renumber(sources, sid, 0), tmp / "sources.parquet")
        sv = np.ascontiguousarray(source_vectors, dtype="<f4").tobytes()
        (tmp / "source_vectors.f32").write_bytes(sv)
        files: dict[str, Any] = {
            "tiles.parquet": file_entry(tmp / "tiles.parquet"),
            "sources.parquet": file_entry(tmp / "sources.parquet"),
            "source_vectors.f32": file_entry(tmp / "source_vectors.f32", digest_bytes(sv)),
        }
        recorded = ((seg.meta or {}).get("files") or {}).get(vec_name)
        if recorded:
            files[vec_name] = recorded  # the same bytes: the same checksum
        names = ["tiles.parquet", "sources.parquet", "source_vectors.f32"]
        if len(tombstones):
            data = np.asarray(tombstones, dtype="<i8").tobytes()
            (tmp / DELETED_ROWS_FILE).write_bytes(data)
            files[DELETED_ROWS_FILE] = file_entry(tmp / DELETED_ROWS_FILE, digest_bytes(data))
            names.append(DELETED_ROWS_FILE)
        meta = {
            "segment_id": sid,
            "n_tiles": seg.n_tiles,
            "n_sources": sources.num_rows,
            "dim": seg.dim,
            "fingerprint": seg.fingerprint,
            "run_id": run_id,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "vector_dtype": seg.dtype,
            "replaces": [seg.segment_id],
            "format": 1,
            "files": files,
            "tile_ids": (seg.meta or {}).get("tile_ids"),
            "vectors_from": seg.segment_id,
            "deleted_rows": int(len(tombstones)),
        }
        meta["checksum"] = meta_checksum(meta)
        (tmp / "segment.json").write_text(json.dumps(meta, indent=2))
        for name in [*names, "segment.json"]:
            _fsync_file(tmp / name)
        fsync_dir(tmp)
        _carry_sidecar(col, seg.segment_id, sid)
        final = col.segments_dir / sid
        os.rename(tmp, final)
        fsync_dir(col.segments_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    (final / LOCK_NAME).unlink(missing_ok=True)
    retire(col.segments_dir, [seg.segment_id])
    return SegmentInfo.load(final)


def _rewrite(
    col: Collection,
    run_id: str,
    edit: Callable[[SegmentInfo, pa.Table, pa.Table, np.ndarray, np.ndarray], Edited | None],
    locked: bool,
) -> list[str]:
    """Apply ``edit`` to every healthy segment; commit those it changed. Returns new ids."""
    done: list[str] = []

    def run() -> None:
        for seg in col.segments():
            if check_segment(seg, hash_limit=0):
                continue  # damaged: quarantined (lamina repair re-indexes it)
            sources = pq.read_table(seg.sources_path)
            tiles = _read_tiles(seg)
            source_vectors = np.array(seg.source_vectors(), dtype="<f4")
            tombstones = seg.deleted_rows()
            out = edit(seg, tiles, sources, source_vectors, tombstones)
            if out is None:
                continue
            tiles, sources, source_vectors, tombstones = out
            if sources.num_rows == 0:  # every source deleted: the segment just leaves the listing
                retire(col.segments_dir, [seg.segment_id])
                continue
            new = _commit(col, seg, tiles, sources, source_vectors, tombstones, run_id)
            done.append(new.segment_id)

    if locked:
        run()
    else:
        with col.ingest_lock():
            run()
    return done


def annotate(
    col: Collection,
    updates: Mapping[SourceKey, Mapping[str, Any]],
    *,
    locked: bool = False,
) -> dict[str, Any]:
    """Set metadata columns of existing sources without re-embedding (module docstring).

    ``updates``: (source id, source path) -> {column: value}. Returns ``{"changed": [{source_id,
    source, changes: {column: {old, new}}}], "segments": [new segment ids], "snapshot"}``.
    ``locked``: the caller holds the ingest lock already (``lamina index``)."""
    changes: list[dict[str, Any]] = []
    run_id = "annotate-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    updates = {k: {c: _plain(v) for c, v in row.items()} for k, row in updates.items()}

    def edit(
        seg: SegmentInfo, tiles: pa.Table, sources: pa.Table, sv: np.ndarray, tomb: np.ndarray
    ) -> Edited | None:
        before = len(changes)
        tiles, sources = _apply_updates(tiles, sources, updates, changes)
        return None if len(changes) == before else (tiles, sources, sv, tomb)

    segments = _rewrite(col, run_id, edit, locked)
    changes.sort(key=lambda c: (c["source"], c["source_id"]))
    return {"changed": changes, "segments": segments, "snapshot": col.snapshot().id}


def delete(col: Collection, keys: Sequence[SourceKey]) -> dict[str, Any]:
    """Delete whole sources (tombstones now, erasure at the next compaction; module doc).

    Returns ``{"deleted": [{source_id, source, tiles}], "segments": [...], "snapshot"}``; run
    records of the collection lose every entry naming a deleted file."""
    wanted = set(keys)
    deleted: list[dict[str, Any]] = []
    run_id = "delete-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())

    def edit(
        seg: SegmentInfo, tiles: pa.Table, sources: pa.Table, sv: np.ndarray, tomb: np.ndarray
    ) -> Edited | None:
        before = len(deleted)
        out = _apply_deletes(tiles, sources, sv, tomb, wanted, deleted)
        return None if len(deleted) == before else out

    segments = _rewrite(col, run_id, edit, locked=False)
    scrub_runs(col, {d["source"] for d in deleted})
    deleted.sort(key=lambda d: (d["source"], d["source_id"]))
    return {"deleted": deleted, "segments": segments, "snapshot": col.snapshot().id}


_TILE_ONLY_COLUMNS = frozenset(
    {"tile_id", "x", "y", "level", "size_px", "tile_px", "tissue_fraction", "row", "segment_id"}
)


def resolve_sources(view: Any, names: Sequence[str], conds: Sequence[Any]) -> list[SourceKey]:
    """The sources a deletion names: each of ``names`` is a source id, a stored path, a file
    name or a trailing part of a path; ``conds`` (a filter) select every source with a matching
    tile (a filter on a tile-only column such as ``x`` or ``tissue_fraction`` is refused: a
    deletion removes whole sources). A name matching nothing is ``SourceNotFoundError``; a file
    name matching files at several paths is ``InvalidQueryError`` (name a path or the id)."""
    from lamina.search.errors import InvalidQueryError, SourceNotFoundError

    known: list[SourceKey] = []
    for r in view.readers:
        known.extend(k for k in _keys(r.sources) if k is not None)
    out: dict[SourceKey, None] = {}
    for name in names:
        text = str(name).strip().replace("\\", "/")
        if not text:
            raise InvalidQueryError("an empty source name was given")
        hits = [k for k in known if text == k[0]]
        if not hits:
            hits = [k for k in known if k[1] == text or k[1].endswith("/" + text.lstrip("/"))]
        if not hits:
            raise SourceNotFoundError(
                f"source {text!r} is not in collection {view.collection.name!r}; nothing was "
                "deleted"
            )
        if len({k[1] for k in hits}) > 1:
            raise InvalidQueryError(
                f"source {text!r} matches {len(hits)} files in collection "
                f"{view.collection.name!r}; name it by a longer path or its source id"
            )
        out.update(dict.fromkeys(hits))
    if conds:
        bad = sorted({c.column for c in conds if c.column in _TILE_ONLY_COLUMNS})
        if bad:
            raise InvalidQueryError(
                f"a deletion removes whole sources: filter on source metadata, not on "
                f"{', '.join(bad)}"
            )
        pos = view.matching_positions(conds)
        sid_codes, sid_names = view.codes("source_id")
        path_codes, path_names = view.codes("source")
        pairs = np.unique(np.stack([sid_codes[pos], path_codes[pos]], axis=1), axis=0)
        for a, b in pairs.tolist():
            if a >= 0 and b >= 0:
                out[(str(sid_names[a]), str(path_names[b]))] = None
    return list(out)


def planned_deletion(view: Any, keys: Sequence[SourceKey]) -> list[dict[str, Any]]:
    """What :func:`delete` of ``keys`` would remove: ``[{source_id, source, tiles}]``."""
    wanted = set(keys)
    out = []
    for r in view.readers:
        t = r.sources
        counts = t.column("n_tiles").to_pylist()
        for key, n in zip(_keys(t), counts, strict=True):
            if key in wanted:
                out.append({"source_id": key[0], "source": key[1], "tiles": int(n or 0)})
    return sorted(out, key=lambda d: (d["source"], d["source_id"]))


def scrub_runs(col: Collection, paths: set[str]) -> int:
    """Drop from the collection's run records every list entry naming one of ``paths`` (a
    deleted file must not stay named in the store); returns the number of records rewritten."""
    from lamina.search.segments import write_json_atomic

    if not paths or not col.runs_dir.is_dir():
        return 0
    names = {Path(p).name for p in paths}

    def names_one(entry: Any) -> bool:
        text = json.dumps(entry, default=str) if not isinstance(entry, str) else entry
        return any(p in text for p in paths) or any(n in text for n in names)

    n = 0
    for path in sorted(col.runs_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict):
            continue
        changed = False
        for key, value in list(record.items()):
            if isinstance(value, list):
                kept = [e for e in value if not names_one(e)]
                if len(kept) != len(value):
                    record[key], changed = kept, True
        if changed:
            write_json_atomic(path, record)
            n += 1
    return n


def drop(store: Any, name: str, catalog: Any) -> dict[str, Any]:
    """Remove collection ``name`` whole: under its ingest lock the directory is renamed aside
    (one atomic step: no process sees a half-removed collection) and deleted; then the cohorts
    of it and its export records leave the catalog (a cohort names tiles of one collection and
    means nothing without it). Returns what was removed."""
    from lamina.search.segments import fsync_dir

    col = store.collection(name)  # CollectionNotFoundError when there is none
    gone = col.path.with_name(f".dropped-{name}-{os.getpid()}-{time.time_ns()}")
    with col.ingest_lock():
        tiles = sum(s.n_tiles - s.n_deleted for s in col.segments())
        os.rename(col.path, gone)
        fsync_dir(col.path.parent)
    shutil.rmtree(gone, ignore_errors=True)
    cohorts = []
    for c in catalog.cohorts():
        if c.get("collection") == name:
            catalog.delete_cohort(str(c["name"]))
            cohorts.append(str(c["name"]))
    exports = 0
    for rec in catalog.exports(name):
        path = catalog.root / "exports" / f"{rec.get('id')}.json"
        if path.is_file():
            path.unlink()
            exports += 1
    return {"dropped": name, "tiles": tiles, "cohorts_deleted": sorted(cohorts),
            "export_records_deleted": exports}  # fmt: skip
