"""Repair: re-index the sources of quarantined segments from their files, then retire them.

For every segment :func:`search.verify.scan_segments` takes out of service (damaged files, a
missing or unreadable ``segment.json``, a copied directory, tile ids repeating another
segment's):

1. its sources are read from ``sources.parquet``, else from ``tiles.parquet`` (whichever is
   readable): path, source id, and the metadata columns they were indexed with;
2. sources whose path is already committed in a healthy segment are left alone (a copied
   directory's rows are served by the original); files that are gone are reported;
3. the rest are indexed again with the collection's encoder and tiling, with the metadata they
   had, in one ordinary ingest run (new tile ids: the damaged segment's ids are not reused);
4. a segment whose every source is now committed is retired (renamed aside, deleted after the
   grace period). One with sources that could not be indexed again (file gone or unreadable)
   stays quarantined and is reported, unless ``drop`` asks to retire it anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lamina.encoders import Encoder
from lamina.indexer.ingest_types import IngestOptions
from lamina.indexer.manifest import Manifest
from lamina.indexer.pipeline import Ingest
from lamina.search.segments import RESERVED_COLUMNS, committed_source_ids, retire
from lamina.search.store import Collection
from lamina.search.verify import quarantined_ids, recorded_sources, scan_segments


class _Recorded(Manifest):
    """The metadata each source had when first indexed, matched by resolved path."""

    def __init__(self, by_path: dict[str, dict[str, Any]]) -> None:
        super().__init__(Path("recorded"), "source", [], list(by_path.values()))
        self.by_path = by_path

    def match(self, file: Path) -> dict[str, Any] | None:
        return self.by_path.get(str(Path(file).resolve()))


def repair(
    col: Collection,
    encoder: Encoder,
    *,
    drop: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Re-index the sources of the collection's quarantined segments (see the module doc)."""
    healthy, problems, _ = scan_segments(col)  # as a process opening the segments sees them
    damaged = quarantined_ids(problems)
    out: dict[str, Any] = {
        "collection": col.name,
        "quarantined": damaged,
        "problems": [p.to_dict() for p in problems],
        "reindexed": 0,
        "already_committed": 0,
        "gone": [],
        "unrecoverable": [],
        "retired": [],
        "kept": [],
        "run": None,
    }
    if not damaged:
        out["ok"] = True
        return out
    committed = {p for paths in committed_source_ids(healthy).values() for p in paths}
    wanted: dict[str, dict[str, Any]] = {}
    per_segment: dict[str, list[str]] = {}
    for sid in damaged:
        rows, reason = recorded_sources(col.segments_dir / sid)
        if reason is not None:
            out["unrecoverable"].append(
                {"segment_id": sid, "reason": f"no readable table ({reason})"}
            )
            continue
        per_segment[sid] = [str(r["source"]) for r in rows]
        for row in rows:
            path = str(row["source"])
            if path in committed:
                out["already_committed"] += 1
            elif not Path(path).is_file():
                out["gone"].append({"segment_id": sid, "source": path})
            else:
                meta = {k: v for k, v in row.items() if k not in RESERVED_COLUMNS}
                wanted.setdefault(path, meta)
    if wanted:
        info = col.info
        options = IngestOptions(
            tile_px=int(info.get("tile_px") or 224),
            mpp=float(info.get("mpp") or 0.5),
            progress=progress,
        )
        report = Ingest(col, encoder, options, _Recorded(wanted)).run(sorted(wanted))
        out["run"] = report.run_id
        out["reindexed"] = report.indexed + report.unchanged
        out["failed"] = report.failed
    healthy, _, _ = scan_segments(col)
    committed = {p for paths in committed_source_ids(healthy).values() for p in paths}
    to_retire = []
    for sid in damaged:
        paths = per_segment.get(sid)
        if drop or (paths is not None and all(p in committed for p in paths)):
            to_retire.append(sid)
        else:
            out["kept"].append(sid)
    if to_retire:
        with col.ingest_lock():
            retire(col.segments_dir, to_retire)
        out["retired"] = to_retire
    out["ok"] = not out["kept"]
    return out
