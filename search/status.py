"""What `lamina status` and `GET /collections` report: counts, snapshot, index, runs, failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from search.store import Collection


def collection_status(col: Collection, runs: int = 5) -> dict[str, Any]:
    """Status of one collection from its segments and run records (no index is built)."""
    snap = col.snapshot()
    kinds: dict[str, int] = {}
    for seg in snap.segments:
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
    return {
        "name": col.name,
        "encoder": col.encoder_key,
        "fingerprint": col.fingerprint,
        "embed_dim": col.dim,
        "metric": col.info.get("metric", "inner_product"),
        "tile_px": col.info.get("tile_px"),
        "mpp": col.info.get("mpp"),
        "sources": snap.n_sources,
        "sources_by_kind": kinds,
        "tiles": snap.n_tiles,
        "vectors": snap.n_tiles,
        "segments": len(snap.segments),
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
    }
