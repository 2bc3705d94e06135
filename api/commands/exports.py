"""`lamina export`: labeled embedding sets for linear probes (see search/exports.py).

One path: the export runs as a job of the API (``ctx.client()``: a server with ``--url``, else
the in-process app) and the file is downloaded to ``--out``; a CSV's provenance goes to
``FILE.csv.meta.json`` beside it in both modes. Sources in the file are shown as answers show
them (the server's ``SOURCE_PATHS`` policy), never as the server's absolute paths.
"""

from __future__ import annotations

from pathlib import Path

import click

from lamina.api.cli import CliContext, emit_json, handle_errors


def register(cli: click.Group) -> None:
    @cli.command("export")
    @click.option("--collection", required=True)
    @click.option(
        "--cohort", default=None, help="Only the members of this cohort (latest version)."
    )
    @click.option(
        "--label-column",
        default=None,
        help="Metadata column used as the label (required, except with --format trident-h5: "
        "there it adds a label column to slides.csv).",
    )
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(["parquet", "csv", "npz", "trident-h5"]),
        default=None,
        help="Default: --out's suffix. trident-h5: --out is a folder that gets one TRIDENT "
        ".h5 per slide (features + coords, level-0 px) and slides.csv.",
    )
    @click.option(
        "--neighbors",
        type=click.IntRange(1, 1000),
        default=None,
        help="Add the K nearest labeled tiles of each row (nn_tile_id/nn_score/nn_label).",
    )
    @click.option(
        "--split-by",
        default=None,
        help="Column whose groups go wholly to train or to test (default: the patient column "
        "when there is one); 'image' splits by image (scores may be inflated).",
    )
    @click.option(
        "--test-fraction",
        type=click.FloatRange(0, 1, max_open=True),
        default=0.2,
        show_default=True,
    )
    @click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
    @click.option(
        "--out",
        required=True,
        type=click.Path(path_type=Path),
        help="FILE.parquet, FILE.csv (+ FILE.csv.meta.json) or FILE.npz; a folder for "
        "--format trident-h5",
    )
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def export_command(
        ctx: CliContext,
        collection: str,
        cohort: str | None,
        label_column: str | None,
        fmt: str | None,
        neighbors: int | None,
        split_by: str | None,
        test_fraction: float,
        seed: int,
        out: Path,
        as_json: bool,
    ) -> None:
        """Write one row per labeled tile (tile_id, source, patient, label, split, x, y, level,
        size_px, mpp, embedding), or with --format trident-h5 one TRIDENT .h5 per slide."""
        if fmt == "trident-h5":
            from lamina.api.commands.export_trident import trident_export

            trident_export(ctx, collection, cohort, label_column, split_by, neighbors, out, as_json)
            return
        if label_column is None:
            raise click.UsageError("--label-column is required (except with --format trident-h5)")
        if fmt is not None and out.suffix.lower().lstrip(".") != fmt:
            raise click.UsageError(f"--format {fmt} writes FILE.{fmt}; --out is {out}")
        from lamina.api.client_jobs import stderr_progress
        from lamina.search.exports import format_of

        format_of(out)  # a bad suffix is a usage error before any work
        doc = (
            ctx.client()
            .export(
                collection,
                cohort=cohort,
                label_column=label_column,
                split_by=split_by,
                neighbors=neighbors,
                test_fraction=test_fraction,
                seed=seed,
                out=str(out),
                progress=stderr_progress("export"),
            )
            .to_dict()
        )
        for warning in doc["meta"].get("warnings") or []:
            click.echo(f"warning: {warning}", err=True)
        if as_json:
            emit_json(doc)
            return
        meta = doc["meta"]
        click.echo(
            f"wrote {meta['n_rows']} rows to {out} (train {meta['n_train']}, "
            f"test {meta['n_test']}; {meta['n_dropped_null_label']} rows without "
            f"{label_column} dropped)"
        )
        click.echo(f"snapshot {meta['snapshot']}  encoder {meta['encoder']}")
