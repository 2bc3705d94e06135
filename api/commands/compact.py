"""`lamina compact`: merge a collection's small segments into large ones (search/compaction.py).

Always compacts (``lamina index`` does so by itself past ``LAMINA_COMPACT_SEGMENTS`` small
segments); waits while an ingest writes to the collection. Searches, servers included, go on
meanwhile and see the merged segment on their next snapshot. Progress goes to stderr.
"""

from __future__ import annotations

import sys
from typing import Any

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
    @click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def compact_command(
        ctx: CliContext,
        collection: str | None,
        target_rows: int | None,
        no_progress: bool,
        as_json: bool,
    ) -> None:
        """Merge small segments: fewer files, faster searches; tile ids do not change."""
        from lamina.search.compaction import DEFAULT_TARGET_ROWS, compact

        store = ctx.store()
        names = [collection] if collection else store.names()
        out = []
        for name in names:
            col = store.collection(name)
            bar: Any = None

            def progress(stage: str, done: int, total: int, name: str = name) -> None:
                nonlocal bar
                if no_progress:
                    return
                if bar is None:
                    from tqdm import tqdm

                    bar = tqdm(
                        total=total,
                        unit="tile",
                        unit_scale=True,
                        desc=f"compacting {name}",
                        file=sys.stderr,
                        dynamic_ncols=True,
                        mininterval=0.2 if sys.stderr.isatty() else 5.0,
                    )
                if total != bar.total:  # the next group
                    bar.reset(total=total)
                bar.update(done - bar.n)

            def waiting(holder: str, name: str = name) -> None:
                click.echo(
                    f"lamina: an ingest ({holder}) is writing to {name!r}; waiting for it",
                    err=True,
                )

            try:
                summary = compact(
                    col,
                    target_rows=target_rows or DEFAULT_TARGET_ROWS,
                    progress=progress,
                    on_wait=waiting,
                )
            finally:
                if bar is not None:
                    bar.close()
            out.append(summary)
            if not as_json:
                merged = summary["merged"]
                click.echo(
                    f"{name}: {summary['segments_before']} -> {summary['segments_after']} "
                    f"segments ({sum(m['tiles'] for m in merged)} tiles merged into "
                    f"{len(merged)} new segments, {summary['seconds']}s)"
                )
        if as_json:
            emit_json({"ok": True, "collections": out})
