"""`lamina export --format trident-h5 --out DIR`: one TRIDENT patch-feature .h5 per slide.

One path: the server (``ctx.client()``: ``--url``, else the in-process app) writes the files
as a job (api/routes/trident_export.py) and sends them zipped; the client unpacks them into
DIR. Each file is what TRIDENT writes (``features``, ``coords`` and their attributes, see
search/trident.py), so MIL code reads it unchanged and ``lamina import`` reads it back.
"""

from __future__ import annotations

from pathlib import Path

import click

from lamina.api.cli import CliContext, emit_json


def trident_export(
    ctx: CliContext,
    collection: str,
    cohort: str | None,
    label_column: str | None,
    split_by: str | None,
    neighbors: int | None,
    out: Path,
    as_json: bool,
) -> None:
    """Run the export and print what was written (``--json``: one document)."""
    from lamina.api.client_jobs import stderr_progress

    if split_by is not None or neighbors is not None:
        raise click.UsageError("--split-by and --neighbors do not apply to --format trident-h5")
    if out.exists() and not out.is_dir():
        raise click.UsageError(f"--out {out} is a file; --format trident-h5 writes into a folder")
    result = ctx.client().export_trident(
        collection,
        out,
        cohort=cohort,
        label_column=label_column,
        progress=stderr_progress("export"),
    )
    doc = {"ok": True, "out": str(out), **result}
    if as_json:
        emit_json(doc)
        return
    meta = result.get("meta") or {}
    click.echo(
        f"wrote {meta.get('n_slides', 0)} slide files ({meta.get('n_tiles', 0)} tiles) and "
        f"slides.csv to {out}"
        + (
            f"; {meta['skipped_rows']} rows that are not slide tiles left out"
            if meta.get("skipped_rows")
            else ""
        )
    )
    click.echo(f"snapshot {meta.get('snapshot')}  encoder {meta.get('encoder')}")
