"""`lamina collection set|build|show`: a collection's ANN index and default search parameters.

``set`` stores the FAISS factory and/or the default ``nprobe``/``ef_search``/``refine``/
``strategy``/``exact_below`` in ``collection.json`` (``Collection.set_index``); vectors are never
touched. ``build`` trains the index when it has none (or ``--rebuild``) and indexes every
committed segment without one (``search.ann.update_index``), with a progress bar on stderr.
A server builds the same index in the background by itself; ``build`` is for CLI-only use and
for doing it ahead of time. ``show`` prints the settings and the index's state.

``set`` and ``show`` go through ``ctx.client()`` (GET|PUT /collections/{name}/index: a server
with ``--url``, else the in-process app). ``build`` is local by nature: it trains and writes
the index in this process, as ``lamina index`` does; a server builds its own.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from lamina.api.cli import CliContext, emit_json, handle_errors

_STAGES = {"train": "training", "index": "indexing", "cluster": "clustering"}


def build_index(col: Any, progress: bool, rebuild: bool = False) -> dict[str, Any]:
    """Run ``update_index`` on ``col``: the train stage is a line, the index stage a tqdm bar
    (in tiles) on stderr; then large IVF segments are rewritten in list order
    (``search.compaction.cluster``). Returns update_index's report plus ``clustered``."""
    from lamina.search.ann import update_index

    bar: Any = None
    bar_stage = ""

    def report(stage: str, done: int, total: int) -> None:
        nonlocal bar, bar_stage
        if stage == "train":
            click.echo(f"training {col.index_factory} index of {col.name}...", err=True)
            return
        if bar is not None and stage != bar_stage:
            bar.close()
            bar = None
        if bar is None:
            bar_stage = stage
            from tqdm import tqdm

            bar = tqdm(
                total=total,
                unit="tile",
                unit_scale=True,
                desc=f"{_STAGES.get(stage, stage)} {col.name} ({col.index_factory})",
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.2 if sys.stderr.isatty() else 5.0,
            )
        bar.update(done - bar.n)

    from lamina.search.compaction import cluster

    try:
        out = update_index(col, report if progress else None, rebuild=rebuild)
        out["clustered"] = cluster(col, progress=report if progress else None)["clustered"]
        return out
    finally:
        if bar is not None:
            bar.close()


def _print_state(doc: dict[str, Any]) -> None:
    idx = doc["index"]
    click.echo(
        f"{doc['name']}: {doc['tiles']} vectors ({doc['vector_dtype']}) in "
        f"{doc['segments']} segments; index {doc['index_factory']}"
    )
    if doc["index_factory"] != "Flat":
        click.echo(
            f"  index {idx['state']}: {idx['segments_indexed']}/{doc['segments']} segments, "
            f"{idx['tiles_indexed']} tiles, version {idx['version']}"
        )
        if idx.get("build"):
            b = idx["build"]
            click.echo(f"  building ({b['stage']}): {b['done']}/{b['total']} tiles")
    stored = ", ".join(f"{k}={v}" for k, v in doc["index_params"].items()) or "none"
    used = ", ".join(f"{k}={v}" for k, v in doc["effective_params"].items())
    click.echo(f"  search parameters stored: {stored}; in effect: {used}")


def register(cli: click.Group) -> None:
    @cli.group("collection")
    def collection_group() -> None:
        """A collection's ANN index and default search parameters."""

    @collection_group.command("set")
    @click.argument("name")
    @click.option(
        "--index-factory",
        default=None,
        help="FAISS factory: Flat, IVF1024, IVF4096,PQ48, HNSW32,SQ8... (never re-embeds).",
    )
    @click.option("--nprobe", type=click.IntRange(1, 1 << 20), default=None)
    @click.option("--ef-search", type=click.IntRange(1, 1 << 16), default=None)
    @click.option("--refine", type=click.IntRange(1, 1000), default=None)
    @click.option("--strategy", type=click.Choice(["auto", "exact", "ann"]), default=None)
    @click.option(
        "--exact-below",
        type=click.IntRange(0, 1 << 40),
        default=None,
        help="Rank a filter matching at most N tiles exactly.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the new settings as JSON.")
    @click.pass_obj
    @handle_errors
    def set_command(
        ctx: CliContext,
        name: str,
        index_factory: str | None,
        nprobe: int | None,
        ef_search: int | None,
        refine: int | None,
        strategy: str | None,
        exact_below: int | None,
        as_json: bool,
    ) -> None:
        """Store the index factory and/or default search parameters of collection NAME."""
        given = {
            "nprobe": nprobe,
            "ef_search": ef_search,
            "refine": refine,
            "strategy": strategy,
            "exact_below": exact_below,
        }
        params = {k: v for k, v in given.items() if v is not None}
        if index_factory is None and not params:
            raise click.UsageError("give --index-factory and/or a search parameter to set")
        doc = ctx.client().set_collection_index(name, index_factory, params or None)
        if as_json:
            emit_json({"ok": True, "collection": doc})
            return
        _print_state(doc)
        if doc["index"]["state"] in ("none", "partial"):
            click.echo(
                f"  run `lamina collection build {name}` (or let a server build it)", err=True
            )

    @collection_group.command("build")
    @click.argument("name")
    @click.option("--rebuild", is_flag=True, help="Train a new version even if one exists.")
    @click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
    @click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON.")
    @click.pass_obj
    @handle_errors
    def build_command(
        ctx: CliContext, name: str, rebuild: bool, no_progress: bool, as_json: bool
    ) -> None:
        """Build or bring up to date the ANN index of collection NAME."""
        ctx.require_local(
            "collection build",
            "a server builds indexes by itself; set them with `lamina --url ... collection set`",
        )
        col = ctx.store().collection(name)
        report = build_index(col, not no_progress, rebuild=rebuild)
        if as_json:
            from lamina.search.status import index_state

            emit_json({"ok": True, "build": report, "collection": index_state(col)})
            return
        if "skipped" in report:
            click.echo(f"{name}: nothing built: {report['skipped']}")
        else:
            click.echo(
                f"{name}: {report['factory']} version {report['version']}"
                f"{' (trained)' if report['trained'] else ''}: "
                f"{report['segments_indexed']} segments, {report['tiles_indexed']} tiles indexed"
            )

    @collection_group.command("show")
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def show_command(ctx: CliContext, name: str, as_json: bool) -> None:
        """Index factory, search parameters, vector dtype and index coverage of NAME."""
        doc = ctx.client().collection_index(name)
        if as_json:
            emit_json({"ok": True, "collection": doc})
        else:
            _print_state(doc)
