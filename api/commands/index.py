"""`lamina index`: slides and photos -> tiles -> vectors -> committed segments.

When the collection's index factory is not Flat, the run ends by bringing the ANN index up to
date (``search.ann.update_index``: train it when there is none, index the new segments), so a
CLI-only user gets an index without a server. ``--vector-dtype`` applies only when the
collection is created; asking an existing collection for another dtype is refused.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from lamina.api.cli import CliContext, emit_json, handle_errors
from lamina.api.commands.index_plan import manifest_type_options

DEFAULT_ENCODER = "classic/stain-texture"


def load_encoder_for(
    ctx: CliContext,
    collection: str,
    encoder_key: str | None,
    weights: str | None,
    device: str,
    allow_test: bool,
    batch_size: int | None = None,
):  # noqa: ANN201
    """The encoder of an existing collection (or ``encoder_key`` for a new one)."""
    from lamina.encoders import create_encoder
    from lamina.search import CollectionNotFoundError, EncoderMismatchError

    try:
        col = ctx.store().collection(collection)
    except CollectionNotFoundError:
        col = None
    if col is not None:
        if encoder_key and encoder_key != col.encoder_key:
            raise EncoderMismatchError(
                f"collection {collection!r} uses {col.encoder_key}, not {encoder_key}; "
                "index into another collection to use another encoder"
            )
        encoder_key = col.encoder_key
        weights = weights or col.info.get("encoder_weights")
    return create_encoder(
        encoder_key or DEFAULT_ENCODER,
        weights=weights,
        device=device,
        batch_size=batch_size,
        allow_test=allow_test,
    )


def register(cli: click.Group) -> None:
    @cli.command("index")
    @click.argument("paths", nargs=-1, required=True)
    @click.option("--collection", required=True, help="Collection to index into (created if new).")
    @click.option(
        "--encoder",
        "encoder_key",
        default=None,
        help=f"Encoder key (default {DEFAULT_ENCODER}; an existing collection keeps its own).",
    )
    @click.option(
        "--weights",
        type=click.Path(),
        default=None,
        help="Local weights file, or model folder (SavedModel), for the encoder.",
    )
    @click.option(
        "--manifest",
        type=click.Path(dir_okay=False),
        default=None,
        help="Metadata table joined to the files: CSV (any of , ; tab), TSV or Parquet.",
    )
    @manifest_type_options
    @click.option(
        "--dry-run",
        is_flag=True,
        help="Show the files, the manifest's column types and how files match its rows; "
        "write nothing.",
    )
    @click.option(
        "--root",
        "root_spec",
        default=None,
        metavar="NAME=PATH",
        help="Store the files relative to root NAME at folder PATH (which holds them), so a "
        "moved folder is `lamina relocate NAME NEWPATH` (default: each indexed folder is a root "
        "named after it).",
    )
    @click.option(
        "--allow-unmatched",
        is_flag=True,
        help="Index even when most files (over half) match no manifest row.",
    )
    @click.option(
        "--patient-column",
        default=None,
        metavar="COL",
        help="Manifest column naming the patient: group-by patient, exclude-same patient, "
        "the default split of probe and export, cohort patient counts.",
    )
    @click.option("--case-column", default=None, metavar="COL", help="Column naming the case.")
    @click.option("--lesion-column", default=None, metavar="COL", help="Column naming the lesion.")
    @click.option(
        "--source-column",
        default="file",
        show_default=True,
        help="Manifest column naming the file (file name or trailing path).",
    )
    @click.option(
        "--tile-px",
        type=click.IntRange(16, 4096),
        default=224,
        show_default=True,
        help="Tile size in pixels. Given explicitly, photos are tiled too (besides their vector).",
    )
    @click.option(
        "--mpp",
        type=click.FloatRange(min=0.01, max=100),
        default=0.5,
        show_default=True,
        help="Target microns per pixel of slide tiles.",
    )
    @click.option(
        "--mpp-override",
        type=click.FloatRange(min=0.01, max=100),
        default=None,
        help="Microns per pixel of slides that lack it in their properties.",
    )
    @click.option(
        "--min-tissue",
        type=click.FloatRange(0, 1),
        default=0.5,
        show_default=True,
        help="Minimum tissue fraction of a slide tile.",
    )
    @click.option("--batch-size", type=click.IntRange(1, 4096), default=64, show_default=True)
    @click.option(
        "--workers",
        type=click.IntRange(1, 64),
        default=None,
        help="Reader threads (default: number of cores, at most 8).",
    )
    @click.option(
        "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
    )
    @click.option(
        "--index-factory",
        default=None,
        help="FAISS index of the collection (Flat, HNSW32, IVF1024,PQ64...); "
        "changing it never re-embeds.",
    )
    @click.option(
        "--nprobe",
        type=click.IntRange(1, 1 << 20),
        default=None,
        help="Default IVF lists probed per query, stored with the collection.",
    )
    @click.option(
        "--vector-dtype",
        type=click.Choice(["float32", "float16"]),
        default=None,
        help="How a new collection stores vectors (float16 halves disk and memory; "
        "scores are computed in float32). Default float32.",
    )
    @click.option(
        "--cluster",
        default=None,
        metavar="ADDRESS",
        help="Read and embed on a Ray cluster (host:port, ray://host:10001, auto; default "
        "$RAY_ADDRESS; 'local': this process). Needs the cluster extra.",
    )
    @click.option(
        "--encoders",
        type=click.IntRange(1, 1024),
        default=None,
        help="Encoder actors on the cluster (default one per GPU, else half the CPUs).",
    )
    @click.option("--allow-test-encoder", is_flag=True, help="Permit test/* encoders.")
    @click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
    @click.option("--json", "as_json", is_flag=True, help="Print the run report as JSON.")
    @click.pass_obj
    @handle_errors
    def index_command(
        ctx: CliContext,
        paths: tuple[str, ...],
        collection: str,
        encoder_key: str | None,
        weights: str | None,
        manifest: str | None,
        column_types: tuple[str, ...],
        na_values: str | None,
        dry_run: bool,
        allow_unmatched: bool,
        root_spec: str | None,
        patient_column: str | None,
        case_column: str | None,
        lesion_column: str | None,
        source_column: str,
        tile_px: int,
        mpp: float,
        mpp_override: float | None,
        min_tissue: float,
        batch_size: int,
        workers: int | None,
        device: str,
        index_factory: str | None,
        nprobe: int | None,
        vector_dtype: str | None,
        cluster: str | None,
        encoders: int | None,
        allow_test_encoder: bool,
        no_progress: bool,
        as_json: bool,
    ) -> None:
        """Index files or folders (recursively) into a collection.

        Exit code 0 when everything indexed, 1 when some inputs failed, 2 for usage errors
        (a missing path, a manifest that cannot be read, most files matching no manifest row).
        """
        ctx.require_local(
            "index",
            "it reads the files on this machine; run it where the store is, or use "
            "`lamina index --cluster` to spread an ingest",
        )
        from lamina.api.commands.index_plan import (
            check_paths,
            check_root,
            declare_roots,
            fail,
            make_plan,
            mostly_unmatched,
            print_plan,
        )
        from lamina.api.exposure import record_roots
        from lamina.indexer import IngestOptions, Manifest
        from lamina.indexer.pipeline import open_collection_for
        from lamina.search.columns import declare, roles_for_ingest
        from lamina.search.manifests import parse_column_types, parse_na_values

        options = IngestOptions(
            tile_px=tile_px,
            mpp=mpp,
            mpp_override=mpp_override,
            min_tissue=min_tissue,
            batch_size=batch_size,
            progress=not no_progress,
        )
        if workers:
            options.workers = workers
        tile_px_source = click.get_current_context().get_parameter_source("tile_px")
        options.photo_tiles = tile_px_source == click.core.ParameterSource.COMMANDLINE
        check_paths(paths, as_json)
        check_root(paths, root_spec)
        if column_types and not manifest:
            raise click.UsageError("--column-type needs --manifest")
        table = (
            Manifest.load(
                manifest,
                source_column,
                parse_column_types(column_types),
                parse_na_values(na_values),
            )
            if manifest
            else None
        )
        plan = make_plan(list(paths), table)
        if dry_run:
            if as_json:
                emit_json({"ok": True, "dry_run": True, "collection": collection, **plan})
            else:
                print_plan(plan)
            sys.exit(0)
        if mostly_unmatched(plan) and not allow_unmatched:
            match = plan["match"]
            if not as_json:
                print_plan(plan, sys.stderr)
            fail(
                as_json,
                "MANIFEST_UNMATCHED",
                f"{len(match['unmatched_files'])} of {match['files']} files match no row of "
                f"{Path(manifest or '').name} (column {source_column!r}); nothing was indexed. "
                "Check --source-column and the manifest, or pass --allow-unmatched",
                **plan,
            )
        roles = roles_for_ingest(
            ctx.store(),
            collection,
            {"patient": patient_column, "case": case_column, "lesion": lesion_column},
            table.columns if table is not None else (),
        )
        encoder = load_encoder_for(
            ctx, collection, encoder_key, weights, device, allow_test_encoder, batch_size
        )
        store = ctx.store()
        if vector_dtype is not None:
            _create_with_dtype(store, collection, encoder, options, weights, vector_dtype)
        col = open_collection_for(store, collection, encoder, options, weights)
        if roles:
            declare(col, roles, roles.values())
        if index_factory and index_factory != col.info.get("index_factory"):
            col.set_index_factory(index_factory)
        if nprobe is not None:
            col.set_index(params={"nprobe": nprobe})
        record_roots(store.home, paths)  # answers show paths relative to these folders
        roots = declare_roots(store.home, paths, root_spec)
        report = _ingest(
            col, encoder, options, table, list(paths), cluster, encoders, workers, device
        )
        doc = report.to_dict()
        doc["roots"] = roots
        if table is not None:
            doc["manifest"] = plan["manifest"]
            doc["match"] = plan["match"]
        if col.index_factory != "Flat":
            doc["ann_index"] = _update_index(col, progress=not no_progress)
        if as_json:
            emit_json(doc)
        else:
            _print_summary(report)
            if table is not None:
                _print_manifest(plan)
            if "ann_index" in doc:
                _print_index(col.name, doc["ann_index"])
        sys.exit(0 if report.ok else 1)


def _ingest(
    col: Any,
    encoder: Any,
    options: Any,
    table: Any,
    paths: list[str],
    cluster: str | None,
    encoders: int | None,
    workers: int | None,
    device: str,
) -> Any:
    """A local run, or one on the Ray cluster of ``--cluster`` / ``$RAY_ADDRESS``."""
    from lamina.indexer.distributed import ClusterOptions, cluster_address

    address = cluster_address(cluster)
    if address is None:
        if encoders is not None:
            raise click.UsageError("--encoders needs --cluster (or RAY_ADDRESS)")
        from lamina.indexer.pipeline import Ingest

        return Ingest(col, encoder, options, table).run(paths)
    from lamina.indexer.distributed import ClusterIngest

    spec = ClusterOptions(address=address, encoders=encoders)
    if workers:
        spec = replace(spec, reader_threads=workers)
    return ClusterIngest(col, encoder, spec, options, table, device).run(paths)


def _update_index(col: Any, progress: bool) -> dict[str, Any]:
    """Bring the ANN index up to date after a run. A factory that cannot be trained yet (too few
    vectors for its lists) is reported, not fatal: the run is committed and search is exact."""
    from lamina.api.commands.collection import build_index
    from lamina.search.errors import InvalidIndexFactoryError

    try:
        return build_index(col, progress)
    except InvalidIndexFactoryError as exc:
        click.echo(f"warning: {exc}", err=True)
        return {"factory": col.index_factory, "error": str(exc)}


def _create_with_dtype(
    store: Any, name: str, encoder: Any, options: Any, weights: str | None, vector_dtype: str
) -> None:
    """Create ``name`` storing ``vector_dtype`` vectors; refuse another dtype on an existing one."""
    from lamina.search import CollectionExistsError, CollectionNotFoundError

    try:
        existing = store.collection(name)
    except CollectionNotFoundError:
        store.open_or_create(
            name,
            encoder=encoder.key,
            fingerprint=encoder.fingerprint,
            embed_dim=encoder.embed_dim,
            tile_px=options.tile_px,
            mpp=options.mpp,
            extra={"encoder_weights": encoder.weights_path or weights},
            vector_dtype=vector_dtype,
        )
        return
    if existing.vector_dtype != vector_dtype:
        raise CollectionExistsError(
            f"collection {name!r} stores {existing.vector_dtype} vectors; --vector-dtype "
            f"{vector_dtype} applies only when a collection is created (index into a new one)"
        )


def _print_index(name: str, report: dict[str, Any]) -> None:
    if "skipped" in report or "error" in report:
        print(f"index of {name}: {report.get('skipped') or report['error']}", file=sys.stdout)
        return
    print(
        f"index of {name}: {report['factory']} version {report['version']}, "
        f"{report['segments_indexed']} new segments ({report['tiles_indexed']} tiles) indexed",
        file=sys.stdout,
    )


def _print_summary(report) -> None:  # noqa: ANN001
    err = sys.stdout
    print(
        f"collection {report.collection}: {report.indexed} indexed ({report.tiles} vectors), "
        f"{report.unchanged} unchanged ({len(getattr(report, 'updated', []))} with new "
        f"metadata), {len(report.moved)} moved, "
        f"{len(report.duplicates)} duplicates, "
        f"{len(report.failed)} failed in {report.seconds:.1f}s; snapshot {report.snapshot}",
        file=err,
    )
    for m in report.moved[:5]:
        print(f"  moved: {m['file']} (was {m['from']}; nothing re-embedded)", file=err)
    if len(report.moved) > 5:
        print(f"  ... and {len(report.moved) - 5} more moved (all in --json)", file=err)
    updated = getattr(report, "updated", [])
    for u in updated[:20]:  # a changed manifest row: metadata rewritten, nothing re-embedded
        for column, ov in sorted(u["changes"].items()):
            print(f"  updated: {u['source']}: {column} {ov['old']!r} -> {ov['new']!r}", file=err)
    if len(updated) > 20:
        print(f"  ... and {len(updated) - 20} more updated (all in --json)", file=err)
    from lamina.indexer.progress import slide_table

    for line in slide_table(getattr(report, "slides", [])):
        print(f"  {line}", file=err)
    for d in report.duplicates[:5]:
        print(f"  duplicate: {d['file']} has the same content as {d['same_as']}", file=err)
    if len(report.duplicates) > 5:
        print(
            f"  ... and {len(report.duplicates) - 5} more duplicates (all in --json and the run "
            "record)",
            file=err,
        )
    for e in report.empty:
        print(f"  no tiles: {e['file']}: {e['reason']}", file=err)
    for f in report.failed:
        print(f"  failed: {f['file']}: {f['reason']}", file=err)
    if report.unmatched_manifest:
        n = len(report.unmatched_manifest)
        print(
            f"  {n} files had no manifest row (indexed without metadata), e.g. "
            f"{Path(report.unmatched_manifest[0]).name}",
            file=err,
        )


def _print_manifest(plan: dict[str, Any]) -> None:
    """One line of the manifest's column types and one of the match (details: --dry-run)."""
    m, match = plan["manifest"], plan["match"]
    types = ", ".join(f"{c['name']} {c['type']}" for c in m["columns"])
    print(f"  manifest {m['file']}: {types}", file=sys.stdout)
    print(
        f"  {match['matched']} of {match['files']} files matched a row; "
        f"{len(match['unmatched_rows'])} rows matched no file",
        file=sys.stdout,
    )
