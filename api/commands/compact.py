"""`lamina compact`: merge a collection's small segments into large ones (search/compaction.py).

Always compacts (``lamina index`` does so by itself past ``LAMINA_COMPACT_SEGMENTS`` small
segments); waits while an ingest writes to the collection. Searches, servers included, go on
meanwhile and see the merged segment on their next snapshot. Progress goes to stderr.

One path: each collection is compacted by a job of the API (POST /collections/{name}/compact)
through ``ctx.client()``: a server with ``--url``, else the in-process app on the home.
"""

from __future__ import annotations

import click

from lamina.api.cli import CliContext, emit_json, handle_errors


def register(cli: click.Group) -> None:
    @cli.command("compact")
    @click.option("--collection", default=None, help="Only this collection (default: all).")
    @click.option(
        "--target-rows",
        type=click.IntRange(2),
        default=None,
        help="Merge segments below this many tiles into segments of at most this many "
        "(default 1,000,000).",
    )
    @click.option(
        "--erase",
        is_flag=True,
        help="Remove replaced segment files now (no grace period): deleted data leaves the "
        "disk before this returns.",
    )
    @click.option(
        "--retrain-index",
        is_flag=True,
        help="With --erase: also train the ANN index again without the deleted vectors (its "
        "centroids are means over a sample that may hold them; costs a full index build).",
    )
    @click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def compact_command(
        ctx: CliContext,
        collection: str | None,
        target_rows: int | None,
        erase: bool,
        retrain_index: bool,
        no_progress: bool,
        as_json: bool,
    ) -> None:
        """Merge small segments: fewer files, faster searches; tile ids do not change."""
        from lamina.api.client_jobs import stderr_progress

        if retrain_index and not erase:
            raise click.UsageError("--retrain-index goes with --erase")
        client = ctx.client()
        names = [collection] if collection else [c["name"] for c in client.collections()]
        out = []
        for name in names:
            progress = None if no_progress else stderr_progress(f"compact {name}")
            summary = client.compact(
                name,
                target_rows=target_rows,
                progress=progress,
                erase=erase,
                retrain_index=retrain_index,
            )
            out.append(summary)
            if not as_json:
                merged = summary["merged"]
                click.echo(
                    f"{name}: {summary['segments_before']} -> {summary['segments_after']} "
                    f"segments ({sum(m['tiles'] for m in merged)} tiles merged into "
                    f"{len(merged)} new segments, {summary['seconds']}s)"
                )
                if summary.get("erased_tiles"):
                    where = (
                        "removed from disk"
                        if erase
                        else (
                            "replaced files removed after the grace period; --erase removes them now"
                        )
                    )
                    click.echo(f"{name}: {summary['erased_tiles']} deleted tiles erased ({where})")
        if as_json:
            emit_json({"ok": True, "collections": out})
