"""`lamina status`: collections, their encoder, counts, snapshot, index type, runs and failures."""

from __future__ import annotations

from typing import Any

import click

from api.cli import CliContext, emit_json, handle_errors


def collection_status(col: Any, runs: int = 5) -> dict[str, Any]:
    """Status of one collection from its segments and run records (no index is built)."""
    import pyarrow.parquet as pq

    snap = col.snapshot()
    kinds: dict[str, int] = {}
    for seg in snap.segments:
        for kind in pq.read_table(seg.sources_path, columns=["kind"]).column("kind").to_pylist():
            kinds[kind] = kinds.get(kind, 0) + 1
    from pathlib import Path

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


def register(cli: click.Group) -> None:
    @cli.command("status")
    @click.option("--collection", default=None, help="Only this collection.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def status_command(ctx: CliContext, collection: str | None, as_json: bool) -> None:
        """Collections, encoder fingerprint, counts, snapshot, index type, last runs, failures."""
        store = ctx.store()
        names = [collection] if collection else store.names()
        cols = [collection_status(store.collection(n)) for n in names]
        if as_json:
            emit_json({"ok": True, "home": str(store.home), "collections": cols})
            return
        if not cols:
            click.echo(f"no collections in {store.home}")
        for c in cols:
            kinds = (
                ", ".join(f"{v} {k}s" for k, v in sorted(c["sources_by_kind"].items())) or "empty"
            )
            click.echo(
                f"{c['name']}: {c['encoder']} ({c['fingerprint']}), {c['embed_dim']}-d, "
                f"{kinds}, {c['tiles']} vectors in {c['segments']} segments, "
                f"index {c['index_type']}, snapshot {c['snapshot']}"
            )
            for r in c["last_runs"]:
                click.echo(
                    f"  run {r['run_id']}: {r['indexed']} indexed, {r['unchanged']} unchanged, "
                    f"{r['failed']} failed ({r['seconds']}s)"
                )
            for f in c["failures"][-10:]:
                click.echo(f"  failed: {f['file']}: {f['reason']}")
