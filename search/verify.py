"""Whole-collection checks: what ``lamina verify``, ``lamina status`` and ``lamina repair`` see.

:func:`scan_segments` runs :func:`search.integrity.check_segment` on every listed segment,
adds the directories that are not loadable segments and the segments repeating another's tile
ids (the later one: a copied directory), and returns the healthy segments. :func:`verify`
adds the tile id counter, ``collection.json``, the ANN index (trained file and every sidecar
against its checksum record, see ``search.ann``) and the sources' files.

Sources. The ingest records each source file's size and ``mtime_ns`` (``file_size``,
``file_mtime_ns`` in ``sources.parquet``); its ``source_id`` is the sha256 of its bytes. A file
is *gone* when absent and *changed* when its size differs, or its mtime differs and its sha256
no longer equals the source id (files up to :data:`REHASH_BYTES` are re-hashed to tell a
touched file from a rewritten one; larger ones count as changed). ``--deep`` re-hashes every
file. Sources without a recorded size (imported vectors, older segments) are not checked.

Costs: a cheap scan stats each segment's files and reads its Parquet footers (and hashes
segments within the open-time budget); sources cost one ``stat`` each. Problems name files
relative to the collection directory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from lamina.search.integrity import (
    OPEN_HASH_BYTES,
    Problem,
    check_segment,
    duplicate_tile_ids,
    meta_checksum,
    unverified,
)
from lamina.search.segments import RESERVED_COLUMNS, SegmentInfo
from lamina.search.store import Collection, next_free_tile_id

REHASH_BYTES = 64 << 20
_SOURCE_COLUMNS = ("source_id", "source", "kind", "file_size", "file_mtime_ns")


def _ids_loader(seg: SegmentInfo) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        return pq.read_table(seg.tiles_path, columns=["tile_id"]).column("tile_id").to_numpy()

    return load


def scan_segments(
    col: Collection, *, deep: bool = False, hash_limit: int | None = None
) -> tuple[list[SegmentInfo], list[Problem], list[str]]:
    """(healthy segments, problems, unverified segment ids) of the collection's snapshot.

    A segment that vanished while being checked (retired by a compaction that committed its
    merge meanwhile) is not damage: the collection is listed again."""
    for _ in range(3):
        out = _scan(col, deep, hash_limit)
        if all(s.path.exists() for s in out[3]):
            break
    return out[0], out[1], out[2]


def _scan(
    col: Collection, deep: bool, hash_limit: int | None
) -> tuple[list[SegmentInfo], list[Problem], list[str], list[SegmentInfo]]:
    snap = col.snapshot()
    problems = [Problem(d, f"segments/{d}", reason) for d, reason in snap.damaged]
    healthy: list[SegmentInfo] = []
    for seg in snap.segments:
        found = check_segment(seg, deep=deep, hash_limit=hash_limit)
        if found:
            problems.extend(found)
        else:
            healthy.append(seg)
    spans = []
    for seg in healthy:
        if seg.n_tiles == 0:
            continue
        loader = _ids_loader(seg)
        span = seg.tile_id_range
        if span is None:
            ids = loader()
            span = (int(ids.min()), int(ids.max()))
        spans.append((seg.path.name, span[0], span[1], loader))
    dropped: set[str] = set()
    for later, earlier, tile_id in duplicate_tile_ids(spans):
        if earlier in dropped or later in dropped:
            continue
        dropped.add(later)
        problems.append(
            Problem(
                later,
                f"segments/{later}/tiles.parquet",
                f"tile id {tile_id} is also in segment {earlier} (duplicate tile ids)",
                "duplicate",
            )
        )
    healthy = [s for s in healthy if s.path.name not in dropped]
    return healthy, problems, [s.path.name for s in healthy if unverified(s)], list(snap.segments)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def source_rows(segments: Sequence[SegmentInfo]) -> list[dict[str, Any]]:
    """(source_id, source, kind, file_size, file_mtime_ns, segment) of the segments' sources."""
    out = []
    for seg in segments:
        names = set(pq.read_schema(seg.sources_path).names)
        cols = [c for c in _SOURCE_COLUMNS if c in names]
        for row in pq.read_table(seg.sources_path, columns=cols).to_pylist():
            row["segment_id"] = seg.path.name
            out.append(row)
    return out


def source_state(row: dict[str, Any], deep: bool = False) -> str | None:
    """'gone', 'changed', 'unverified' (no recorded size) or None (unchanged)."""
    size, mtime = row.get("file_size"), row.get("file_mtime_ns")
    if size is None or mtime is None:
        return "unverified"
    path = Path(str(row.get("source") or ""))
    try:
        st = path.stat()
    except OSError:
        return "gone"
    if st.st_size != size:
        return "changed"
    if st.st_mtime_ns != mtime or deep:
        if not deep and st.st_size > REHASH_BYTES:
            return "changed"
        try:
            return None if _sha256(path) == row.get("source_id") else "changed"
        except OSError:
            return "gone"
    return None


def source_changes(
    segments: Sequence[SegmentInfo], *, deep: bool = False, limit: int | None = None
) -> dict[str, Any]:
    """Sources whose files are gone or changed since indexing (at most ``limit`` checked);
    a stored path is looked for where the home's roots say it is now (``search.roots``)."""
    from lamina.search.roots import Roots

    rows = source_rows(segments)
    checked = rows if limit is None else rows[:limit]
    found: list[dict[str, Any]] = []
    unverified_n = 0
    roots = Roots.of(segments[0].path.parents[3]).table() if segments else None
    for row in checked:
        here = roots.resolve(str(row.get("source") or "")) if roots is not None else None
        state = source_state({**row, "source": here} if here else row, deep)
        if state == "unverified":
            unverified_n += 1
        elif state is not None:
            found.append(
                {
                    "state": state,
                    "source_id": row["source_id"],
                    "source": row.get("source"),
                    "segment_id": row["segment_id"],
                }
            )
    return {
        "checked": len(checked) - unverified_n,
        "unverified": unverified_n,
        "not_checked": len(rows) - len(checked),
        "changed": sum(f["state"] == "changed" for f in found),
        "gone": sum(f["state"] == "gone" for f in found),
        "files": found,
    }


def _collection_problems(col: Collection, healthy: Sequence[SegmentInfo]) -> list[Problem]:
    out = []
    info = col.info
    if "checksum" in info and meta_checksum(info) != info["checksum"]:
        out.append(
            Problem("", "collection.json", "content does not match its checksum", "collection")
        )
    for seg in healthy:
        if (seg.dim, seg.fingerprint) != (col.dim, col.fingerprint):
            out.append(
                Problem(
                    seg.path.name,
                    f"segments/{seg.path.name}/segment.json",
                    f"holds {seg.dim}-d vectors of {seg.fingerprint}; the collection is "
                    f"{col.dim}-d {col.fingerprint}",
                )
            )
    counter = col.path / "next_tile_id"
    floor = next_free_tile_id(col.segments_dir)
    try:
        value: int | None = int(counter.read_text().strip())
    except FileNotFoundError:
        value = None if floor > 0 else floor
        reason = "is missing"
    except (OSError, ValueError):
        value, reason = None, "is unreadable"
    else:
        reason = f"says {value}; segments hold ids up to {floor - 1}"
    if value is None or value < floor:
        out.append(
            Problem(
                "",
                "next_tile_id",
                f"{reason} (the next ingest starts at {floor}: ids are never reused)",
                "counter",
            )
        )
    return out


def _index_problems(
    col: Collection, healthy: Sequence[SegmentInfo], notes: dict[str, Any], deep: bool = False
) -> list[Problem]:
    """Problems of the ANN index; ``notes`` gets what is merely not built yet (searched
    exactly meanwhile: ``not_built`` or ``unindexed`` segments)."""
    from lamina.search.ann import AnnIndex
    from lamina.search.index_spec import index_slug

    if col.index_factory == "Flat":
        return []
    slug = index_slug(col.index_factory)
    pointer = col.index_dir / f"{slug}.json"
    if not pointer.exists():
        notes["not_built"] = True  # searches scan exactly until it is built
        return []
    rel = f"index/{slug}.json"
    try:
        meta = json.loads(pointer.read_text())
        directory = col.index_dir / f"{slug}-{meta['version']}"
        if "checksum" in meta and meta_checksum(meta) != meta["checksum"]:
            raise ValueError("checksum")
    except (OSError, ValueError, KeyError, TypeError):
        return [
            Problem("", rel, "unreadable or damaged (searches scan exactly until rebuilt)", "index")
        ]
    ann = AnnIndex.load(col)
    if ann is None:
        return [
            Problem(
                "",
                f"index/{directory.name}",
                "trained file missing or not matching its checksum (searches scan exactly "
                "until `lamina collection build` or the next index run rebuilds it)",
                "index",
            )
        ]
    out = []
    for seg in healthy:
        problem = ann.part_problem(seg.segment_id, hash_limit=None if deep else OPEN_HASH_BYTES)
        if problem == "not indexed":
            notes.setdefault("unindexed", []).append(seg.path.name)
        elif problem is not None:
            name = ann.sidecar(seg.segment_id).name
            out.append(
                Problem(
                    seg.path.name,
                    f"index/{directory.name}/{name}",
                    f"{problem} (not used: the segment is scanned exactly until rebuilt)",
                    "index",
                )
            )
    return out


def verify(
    col: Collection, *, deep: bool = False, sources: bool = True, source_limit: int | None = None
) -> dict[str, Any]:
    """Every check of the collection; ``ok`` is False when any problem (or a changed or gone
    source) was found."""
    healthy, problems, unverified_ids = scan_segments(col, deep=deep)
    problems += _collection_problems(col, healthy)
    notes: dict[str, Any] = {"factory": col.index_factory}
    problems += _index_problems(col, healthy, notes, deep)
    doc: dict[str, Any] = {
        "collection": col.name,
        "deep": deep,
        "segments": len(healthy) + len(quarantined_ids(problems)),
        "healthy_segments": len(healthy),
        "unverified_segments": unverified_ids,
        "index": notes,
        "problems": [p.to_dict() for p in problems],
    }
    if sources:
        doc["sources"] = source_changes(healthy, deep=deep, limit=source_limit)
    changed = doc.get("sources", {})
    doc["ok"] = not problems and not changed.get("changed") and not changed.get("gone")
    return doc


def quarantined_ids(problems: Sequence[Problem]) -> list[str]:
    """Segments (directories) a list of problems takes out of service."""
    return sorted({p.segment_id for p in problems if p.kind in ("segment", "duplicate")})


def verify_named(store: Any, name: str, *, deep: bool = False) -> dict[str, Any]:
    """:func:`verify` of collection ``name``; a damaged ``collection.json`` is one problem."""
    from lamina.search.errors import CollectionDamagedError

    try:
        col = store.collection(name)
    except CollectionDamagedError as exc:
        problem = Problem("", "collection.json", str(exc), "collection").to_dict()
        return {"collection": name, "ok": False, "problems": [problem]}
    return verify(col, deep=deep)


def recorded_sources(directory: Path) -> tuple[list[dict[str, Any]], str | None]:
    """(source rows with their metadata, None) of a segment directory, read from whichever of
    ``sources.parquet`` / ``tiles.parquet`` is readable; ([], reason) when neither is."""
    reasons = []
    for name in ("sources.parquet", "tiles.parquet"):
        try:
            rows = pq.read_table(directory / name).to_pylist()
        except Exception as exc:  # noqa: BLE001 - any Arrow/IO error: try the other table
            reasons.append(f"{name}: {type(exc).__name__}")
            continue
        by_path: dict[str, dict[str, Any]] = {}
        for row in rows:
            path = row.get("source")
            if path and path not in by_path:
                by_path[str(path)] = row
        return list(by_path.values()), None
    return [], "; ".join(reasons)


def recorded_metadata(col: Collection) -> dict[str, dict[str, Any]]:
    """The metadata columns the sources of damaged segments were indexed with, by source
    path (what ``lamina index`` and ``lamina repair`` give them when indexing them again)."""
    _, problems, _ = scan_segments(col, hash_limit=0)
    out: dict[str, dict[str, Any]] = {}
    for sid in quarantined_ids(problems):
        rows, _ = recorded_sources(col.segments_dir / sid)
        for row in rows:
            meta = {k: v for k, v in row.items() if k not in RESERVED_COLUMNS}
            out.setdefault(str(row["source"]), meta)
    return out
