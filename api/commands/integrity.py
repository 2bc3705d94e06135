"""`lamina verify` and `lamina repair`: prove the store's integrity, and mend what is damaged.

``verify`` runs every check of ``search.verify`` (cheap by default, ``--deep`` re-hashes every
file) and exits 1 when anything is damaged or a source file changed, 0 otherwise; problems name
the segment and the file relative to the collection. ``repair`` re-indexes the sources of
quarantined segments from their files (``indexer.repair``). Both work on the machine holding
the store (not through ``--url``).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from lamina.api.cli import CliContext, emit_json, handle_errors


def _print(doc: dict[str, Any]) -> None:
    src = doc.get("sources") or {}
    state = "ok" if doc["ok"] else "DAMAGED"
    counts = (
        f"{doc.get('healthy_segments', 0)} of {doc.get('segments', 0)} segments healthy"
        if "segments" in doc
        else "unreadable"
    )
    click.echo(
        f"{doc['collection']}: {state}, {counts}, sources: {src.get('checked', 0)} checked, "
        f"{src.get('changed', 0)} changed, {src.get('gone', 0)} gone"
        + (" (deep)" if doc.get("deep") else "")
    )
    for p in doc["problems"]:
        where = f"segment {p['segment_id']}: " if p["segment_id"] else ""
        click.echo(f"  {p['kind']}: {where}{p['file']}: {p['reason']}")
    for f in src.get("files", []):
        click.echo(f"  source {f['state']}: {f['source']}")
    if doc.get("unverified_segments"):
        n = len(doc["unverified_segments"])
        click.echo(f"  {n} segment(s) written before checksums: sizes and footers checked only")


def register(cli: click.Group) -> None:
    @cli.command("verify")
    @click.argument("collection", required=False)
    @click.option("--deep", is_flag=True, help="Re-hash every file (segments, index, sources).")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def verify_command(ctx: CliContext, collection: str | None, deep: bool, as_json: bool) -> None:
        """Check segments, ANN index files, the tile id counter and source files; exit 1 when
        anything is damaged or changed."""
        from lamina.search.verify import verify_named

        ctx.require_local("verify", "it reads the store's files: run it where the store is")
        store = ctx.store()
        names = [collection] if collection else store.names() + store.damaged_names()
        docs = [verify_named(store, n, deep=deep) for n in names]
        ok = all(d["ok"] for d in docs)
        if as_json:
            emit_json({"ok": ok, "collections": docs})
        else:
            if not docs:
                click.echo("no collections")
            for d in docs:
                _print(d)
        sys.exit(0 if ok else 1)

    @cli.command("repair")
    @click.argument("collection")
    @click.option(
        "--drop",
        is_flag=True,
        help="Also retire quarantined segments whose sources cannot be indexed again.",
    )
    @click.option(
        "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
    )
    @click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def repair_command(
        ctx: CliContext, collection: str, drop: bool, device: str, no_progress: bool, as_json: bool
    ) -> None:
        """Re-index the sources of quarantined segments from their files and retire those
        segments; reports sources whose files are gone. Exit 1 when a segment stays damaged."""
        from lamina.api.commands.index import load_encoder_for
        from lamina.indexer.repair import repair

        ctx.require_local("repair", "it rewrites the store's files: run it where the store is")
        col = ctx.store().collection(collection)
        encoder = load_encoder_for(ctx, collection, None, None, device, allow_test=True)
        doc = repair(col, encoder, drop=drop, progress=not no_progress and not as_json)
        if as_json:
            emit_json(doc)
        else:
            if not doc["quarantined"]:
                click.echo(f"{collection}: nothing to repair")
            else:
                click.echo(
                    f"{collection}: {len(doc['quarantined'])} quarantined segment(s); "
                    f"{doc['reindexed']} source(s) indexed again, "
                    f"{doc['already_committed']} already committed elsewhere, "
                    f"{len(doc['gone'])} gone; retired {len(doc['retired'])}"
                )
            for g in doc["gone"]:
                click.echo(f"  gone: {g['source']} (segment {g['segment_id']})")
            for u in doc["unrecoverable"]:
                click.echo(f"  unrecoverable: segment {u['segment_id']}: {u['reason']}")
            for sid in doc["kept"]:
                click.echo(f"  kept quarantined: segment {sid} (--drop retires it)")
        sys.exit(0 if doc["ok"] else 1)
