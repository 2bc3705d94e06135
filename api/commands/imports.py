"""`lamina import`: embeddings computed elsewhere (TRIDENT/CLAM .h5, Parquet/NPZ tables, Google
embedding-API JSON) -> a collection bound to a declared encoder. See indexer/importer.py.

Local by nature, like `lamina index`: it reads embedding files (often gigabytes of .h5), the
slides they describe (``--slides``) and encoder weights from this machine's disk and writes the
store at ``--home`` in this process, without copying the files through an upload. With
``--url`` it refuses (exit 2): a server takes embeddings as uploads through the Python client's
``import_embeddings`` (POST /collections/{name}/import), which never reads server paths.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lamina.api.cli import CliContext, emit_json, handle_errors


def register(cli: click.Group) -> None:
    @cli.command("import")
    @click.argument("paths", nargs=-1, required=True)
    @click.option("--collection", required=True, help="Collection to import into (created if new).")
    @click.option(
        "--encoder-name",
        required=True,
        help="Encoder that made the vectors: a registered key (its fingerprint, so image queries "
        "work) or external/<name> with --dim.",
    )
    @click.option("--dim", type=click.IntRange(1, 65536), default=None, help="Vector dimension.")
    @click.option(
        "--weights",
        type=click.Path(),
        default=None,
        help="Weights of a registered --encoder-name (file or model folder).",
    )
    @click.option(
        "--slides",
        "slides",
        multiple=True,
        type=click.Path(exists=True, path_type=Path),
        help="Folder (searched recursively) or file of the slides the .h5 files describe; "
        "repeatable. Joined slides give tile images and region reads.",
    )
    @click.option(
        "--manifest",
        type=click.Path(dir_okay=False),
        default=None,
        help="Metadata CSV joined to the sources (by file or source name).",
    )
    @click.option(
        "--source-column",
        default="file",
        show_default=True,
        help="Manifest column naming the source.",
    )
    @click.option(
        "--table-source-column",
        default="source",
        show_default=True,
        help="Parquet/NPZ column naming each vector's source.",
    )
    @click.option("--vector-column", default=None, help="Parquet/NPZ column of the vectors.")
    @click.option(
        "--patch-px-level0",
        type=click.IntRange(1, 1 << 20),
        default=None,
        help="Patch side in level-0 pixels, for .h5 files that do not record it (CLAM).",
    )
    @click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
    @click.option("--json", "as_json", is_flag=True, help="Print the run report as JSON.")
    @click.pass_obj
    @handle_errors
    def import_command(
        ctx: CliContext,
        paths: tuple[str, ...],
        collection: str,
        encoder_name: str,
        dim: int | None,
        weights: str | None,
        slides: tuple[Path, ...],
        manifest: str | None,
        source_column: str,
        table_source_column: str,
        vector_column: str | None,
        patch_px_level0: int | None,
        no_progress: bool,
        as_json: bool,
    ) -> None:
        """Import precomputed embeddings into a collection.

        Exit code 0 when everything imported, 1 when some files failed (each named with the
        row at fault), 2 for usage errors. Re-running imports nothing twice.
        """
        ctx.require_local(
            "import",
            "it reads embedding files, slides and weights here; to send embeddings to a server "
            "use the Python client's import_embeddings (POST /collections/{name}/import)",
        )
        from lamina.indexer import Manifest
        from lamina.indexer.importer import (
            Import,
            ImportOptions,
            declare_encoder,
            open_import_collection,
        )

        declared = declare_encoder(encoder_name, dim, weights)
        options = ImportOptions(
            slides=list(slides),
            manifest=Manifest.load(manifest, source_column) if manifest else None,
            source_column=table_source_column,
            vector_column=vector_column,
            patch_px_level0=patch_px_level0,
            progress=not no_progress,
        )
        col = open_import_collection(ctx.store(), collection, declared)
        report = Import(col, declared, options).run(list(paths))
        if as_json:
            emit_json(report.to_dict())
        else:
            out = sys.stdout
            print(
                f"collection {report.collection}: {report.indexed} sources imported "
                f"({report.tiles} vectors), {report.unchanged} unchanged, {len(report.failed)} "
                f"failed in {report.seconds:.1f}s; snapshot {report.snapshot}",
                file=out,
            )
            for f in report.failed:
                print(f"  failed: {f['file']}: {f['reason']}", file=out)
        sys.exit(0 if report.ok else 1)
