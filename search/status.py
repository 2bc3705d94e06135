"""What `lamina status` and `GET /collections` report: counts, snapshot, index, runs, failures.

Sizes are in bytes. ``disk_bytes`` is every file of the snapshot's segments plus the collection's
index directory; ``vector_bytes`` the raw vectors (n_tiles x dim x 4 or 2). With a ``view`` (a
server's), ``memory_bytes`` is the view's heap (metadata, id maps, masks, ANN structures) and
``resident_vector_bytes`` the resident set (``Rss`` in ``/proc/self/smaps``) of this process's
mappings of the collection's vector files: the part of the memory-mapped vectors in RAM for this
process (0 where /proc is unavailable).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from lamina.search.columns import declared, role_columns
from lamina.search.store import Collection
from lamina.search.verify import quarantined_ids, scan_segments, source_changes

SMAPS = "/proc/self/smaps"


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
            except OSError:
                continue  # removed while we looked
    return total


def resident_bytes(paths: Iterable[str | os.PathLike[str]], smaps: str = SMAPS) -> int:
    """Sum of ``Rss`` over this process's mappings of the given files (0 if unreadable)."""
    wanted = {os.path.realpath(p) for p in paths}
    if not wanted:
        return 0
    total = 0
    current = False
    try:
        with open(smaps) as f:
            for line in f:
                head = line.split(None, 1)[0]
                if head.endswith(":"):
                    if current and head == "Rss:":
                        total += int(line.split()[1]) * 1024
                    continue
                parts = line.split(None, 5)  # a mapping header: range perms off dev inode path
                current = len(parts) == 6 and parts[5].strip() in wanted
    except (OSError, ValueError, IndexError):
        return 0
    return total


def index_status(col: Collection) -> dict[str, Any]:
    """The ANN index: factory, search params, built version, segments indexed, build progress."""
    from lamina.search.ann import AnnIndex, build_progress
    from lamina.search.index_spec import index_slug

    out: dict[str, Any] = {
        "factory": col.index_factory,
        "params": col.index_params,
        "version": None,
        "built_at": None,
        "segments_indexed": 0,
        "segments_total": len(col.segments()),
        "build": build_progress(col),
    }
    if col.index_factory == "Flat":
        out["segments_indexed"] = out["segments_total"]  # nothing to build
        return out
    ann = AnnIndex.load(col)
    if ann is None:
        try:
            meta = json.loads((col.index_dir / f"{index_slug(col.index_factory)}.json").read_text())
            out["built_for"] = meta.get("factory")
        except (OSError, ValueError):
            pass
        return out
    out["version"] = ann.version
    out["built_at"] = ann.meta.get("built_at")
    out["segments_indexed"] = sum(ann.sidecar(s.segment_id).exists() for s in col.segments())
    return out


def _column_names(healthy: list[Any]) -> set[str]:
    """Column names of the segments' tile tables (footers only)."""
    names: set[str] = set()
    for seg in healthy:
        try:
            names.update(pq.read_schema(seg.tiles_path).names)
        except (OSError, ValueError):  # damaged since listed: status reports it elsewhere
            continue
    return names


STATUS_SOURCES = 10_000  # sources stat-ed by status (all of them: lamina verify)


def _changed(healthy: list[Any]) -> dict[str, Any]:
    out = source_changes(healthy, limit=STATUS_SOURCES)
    out["files"] = out["files"][:20]
    return out


def collection_status(col: Collection, runs: int = 5, view: Any = None) -> dict[str, Any]:
    """Status of one collection from its segments and run records (no index is built).

    ``view`` (a server's :class:`~search.views.CollectionView` of ``col``) adds what this
    process holds in memory for it."""
    snap = col.snapshot()
    if view is not None:  # what this server answers on
        healthy = [r.info for r in view.readers]
        problems = list(view.quarantined)
    else:
        healthy, problems, _ = scan_segments(col, hash_limit=0)  # cheap: verify hashes
    kinds: dict[str, int] = {}
    for seg in healthy:
        for kind in pq.read_table(seg.sources_path, columns=["kind"]).column("kind").to_pylist():
            kinds[kind] = kinds.get(kind, 0) + 1
    last_runs = col.runs(limit=runs)
    committed = {p for paths in col.committed_sources().values() for p in paths}
    # failures of the last runs, less files that a later run has since committed
    failures = [
        dict(f, run_id=r["run_id"])
        for r in last_runs
        for f in r.get("failed", [])
        if str(Path(f["file"]).resolve()) not in committed
    ]
    out: dict[str, Any] = {
        "name": col.name,
        "encoder": col.encoder_key,
        "fingerprint": col.fingerprint,
        "embed_dim": col.dim,
        "metric": col.info.get("metric", "inner_product"),
        "tile_px": col.info.get("tile_px"),
        "mpp": col.info.get("mpp"),
        "sources": sum(s.n_sources for s in healthy),
        "sources_by_kind": kinds,
        "tiles": sum(s.n_tiles - s.n_deleted for s in healthy),
        "vectors": sum(s.n_tiles - s.n_deleted for s in healthy),
        # deleted tiles whose vectors are still on disk (erased by the next `lamina compact`)
        "deleted_pending_erasure": sum(s.n_deleted for s in healthy),
        "segments": len(healthy),
        "missing_segments": quarantined_ids(problems),
        "damaged": [p.to_dict() for p in problems],
        "changed_sources": _changed(healthy),
        "snapshot": snap.id,
        "index_type": col.info.get("index_factory", "Flat"),
        "last_runs": [
            {
                k: r.get(k)
                for k in (
                    "run_id",
                    "started_at",
                    "finished_at",
                    "indexed",
                    "tiles",
                    "unchanged",
                    "seconds",
                    "ok",
                    "interrupted",
                )
            }
            | {"failed": len(r.get("failed", [])), "duplicates": len(r.get("duplicates", []))}
            for r in last_runs
        ],
        "failures": failures,
        "vector_dtype": col.vector_dtype,
        "vector_bytes": sum(seg.vector_bytes for seg in snap.segments),
        "disk_bytes": sum(_tree_bytes(seg.path) for seg in snap.segments)
        + (_tree_bytes(col.index_dir) if col.index_dir.is_dir() else 0),
        "index": index_status(col),
    }
    names = set(view.schema) if view is not None else _column_names(healthy)
    out.update(role_columns(col, names))  # patient_column, case_column, lesion_column
    out["declared_columns"] = {f"{r}_column": c for r, c in declared(col).items()}
    # the same keys with or without a view: what this process holds (0 when it has not opened
    # the collection) and how much of the vector files the page cache holds (any process)
    out["memory_bytes"] = 0 if view is None else int(view.memory_bytes())
    out["resident_vector_bytes"] = resident_bytes(str(seg.vectors_path) for seg in healthy)
    return out


def status_of(store: Any, name: str, *, strict: bool = False) -> dict[str, Any]:
    """:func:`collection_status` of ``name``; a collection whose ``collection.json`` is damaged
    gives ``{"name", "error"}`` (raised instead when ``strict``: it was asked for by name)."""
    from lamina.search.errors import CollectionDamagedError

    try:
        return collection_status(store.collection(name))
    except CollectionDamagedError as exc:
        if strict:
            raise
        return {"name": name, "error": str(exc)}


def index_state(col: Collection) -> dict[str, Any]:
    """The index settings of ``col`` and how far its ANN index covers the committed segments
    (``index.state``: ``exact`` for Flat, else ``none``, ``partial`` or ``ready``)."""
    from lamina.search.ann import AnnIndex, build_progress
    from lamina.search.params import effective

    segments = col.segments()
    doc: dict[str, Any] = {
        "name": col.name,
        "index_factory": col.index_factory,
        "index_params": col.index_params,
        "effective_params": effective(col.index_params, None),
        "vector_dtype": col.vector_dtype,
        "tiles": sum(s.n_tiles for s in segments),
        "segments": len(segments),
    }
    if col.index_factory == "Flat":
        doc["index"] = {"state": "exact", "segments_indexed": 0}
        return doc
    ann = AnnIndex.load(col)
    indexed = [s for s in segments if ann is not None and ann.sidecar(s.segment_id).exists()]
    doc["index"] = {
        "state": "none" if ann is None else "ready" if len(indexed) == len(segments) else "partial",
        "version": None if ann is None else ann.version,
        "built_at": None if ann is None else ann.meta.get("built_at"),
        "segments_indexed": len(indexed),
        "tiles_indexed": sum(s.n_tiles for s in indexed),
        "build": build_progress(col),
    }
    return doc


def metadata_types(segments: Iterable[Any]) -> dict[str, str]:
    """Metadata column -> type over the segments' tile tables, as a view reports them
    (``CollectionView.schema`` less the reserved columns), from the Parquet schemas alone."""
    from lamina.search.segment_reader import sql_type_name, unify_types
    from lamina.search.segments import RESERVED_COLUMNS

    types: dict[str, list[str]] = {}
    for seg in segments:
        try:
            schema = pq.read_schema(seg.tiles_path)
        except (OSError, ValueError):  # a damaged segment: status reports it, searches skip it
            continue
        for f in schema:
            types.setdefault(f.name, []).append(sql_type_name(f.type))
    return {n: unify_types(t) for n, t in types.items() if n not in RESERVED_COLUMNS}
