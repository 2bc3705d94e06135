"""`lamina annotate`, `lamina delete`, `lamina drop`: correct and remove data, through the client.

Each goes through ``ctx.client()`` (HTTP with ``--url``, the in-process app otherwise), so the
result and its JSON are the same both ways. Confirmation rule for the two destructive commands:
``--yes`` deletes at once; without it, an interactive terminal shows what would go and asks;
a run without a terminal (a script, CI) refuses with exit 2 and says what would be deleted.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from lamina.api.cli import CliContext, emit_json, handle_errors
from lamina.api.commands.index_plan import manifest_type_options


def _value(v: Any) -> str:
    return "null" if v is None else repr(v) if isinstance(v, str) else str(v)


def _confirm(question: str, as_json: bool, plan: dict[str, Any]) -> None:
    """Ask on a terminal; refuse (exit 2) without one."""
    if sys.stdin.isatty() and not as_json:
        if not click.confirm(question, default=False):
            click.echo("nothing was deleted", err=True)
            sys.exit(2)
        return
    message = f"{question} -- refusing without --yes (no terminal to ask); nothing was deleted"
    if as_json:
        emit_json({"ok": False, "code": "CONFIRMATION_REQUIRED", "error": message, **plan})
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def register(cli: click.Group) -> None:
    @cli.command("annotate")
    @click.option("--collection", required=True, help="The collection to update.")
    @click.option(
        "--manifest",
        required=True,
        type=click.Path(exists=True, dir_okay=False),
        help="Metadata table (CSV, TSV or Parquet) whose rows name indexed files.",
    )
    @click.option(
        "--source-column", default="file", show_default=True, help="Column naming the files."
    )
    @manifest_type_options
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def annotate_command(
        ctx: CliContext,
        collection: str,
        manifest: str,
        source_column: str,
        column_types: tuple[str, ...],
        na_values: str | None,
        as_json: bool,
    ) -> None:
        """Update indexed sources' metadata from a manifest, without re-embedding.

        A new snapshot shares the vectors; searches running on the old one finish on it.
        Every changed value is reported per source (old -> new); sources whose row did not
        change, and sources without a row, are left as they are."""
        doc = ctx.client().annotate(
            collection,
            manifest,
            source_column=source_column,
            column_types=list(column_types),
            na_values=na_values,
        )
        if as_json:
            emit_json(doc)
            return
        for change in doc["changed"]:
            for column, ov in sorted(change["changes"].items()):
                click.echo(
                    f"{change['source']}: {column} {_value(ov['old'])} -> {_value(ov['new'])}"
                )
        click.echo(
            f"{collection}: {len(doc['changed'])} sources changed, "
            f"{doc['unchanged_sources']} unchanged, {doc['unmatched_sources']} without a "
            f"manifest row (left as they are); snapshot {doc['snapshot']}"
        )

    @cli.command("delete")
    @click.option("--collection", required=True, help="The collection to delete from.")
    @click.argument("sources", nargs=-1)
    @click.option(
        "--filter",
        "filters",
        multiple=True,
        metavar="EXPR",
        help="Delete every source with a tile matching EXPR (e.g. patient_id=PAT_9); "
        "repeatable (AND).",
    )
    @click.option("--yes", is_flag=True, help="Delete without asking.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def delete_command(
        ctx: CliContext,
        collection: str,
        sources: tuple[str, ...],
        filters: tuple[str, ...],
        yes: bool,
        as_json: bool,
    ) -> None:
        """Delete whole SOURCES (file names, paths or source ids) from a collection.

        Gone from searches, cohort counts and exports at once; erased from disk (vectors, rows,
        index entries) by the next `lamina compact` (`--erase`: at once)."""
        if not sources and not filters:
            raise click.UsageError("name SOURCES or give --filter")
        client = ctx.client()
        spec = "\n".join(filters) if filters else None
        if not yes:
            plan = client.delete_sources(collection, sources, spec, dry_run=True)
            names = ", ".join(str(d["source"]) for d in plan["deleted"][:10])
            more = len(plan["deleted"]) - 10
            _confirm(
                f"delete {plan['sources']} sources ({plan['tiles']} tiles) from "
                f"{collection!r}: {names}{f' and {more} more' if more > 0 else ''}?",
                as_json,
                plan,
            )
        doc = client.delete_sources(collection, sources, spec)
        if as_json:
            emit_json(doc)
            return
        for d in doc["deleted"]:
            click.echo(f"deleted {d['source']} ({d['tiles']} tiles)")
        click.echo(
            f"{collection}: {doc['sources']} sources, {doc['tiles']} tiles deleted; snapshot "
            f"{doc['snapshot']}. Erased from disk by the next `lamina compact` (--erase: now)."
        )

    @cli.command("drop")
    @click.argument("collection")
    @click.option("--yes", is_flag=True, help="Drop without asking.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def drop_command(ctx: CliContext, collection: str, yes: bool, as_json: bool) -> None:
        """Remove COLLECTION whole: its segments, index, runs, and its cohorts and export
        records in the catalog."""
        client = ctx.client()
        if not yes:
            info = client.collection(collection)  # 404 before asking
            tiles = info.get("tiles", info.get("n_tiles", "?"))
            _confirm(
                f"drop collection {collection!r} ({tiles} tiles) and its cohorts?",
                as_json,
                {"collection": collection},
            )
        doc = client.drop_collection(collection)
        if as_json:
            emit_json(doc)
            return
        cohorts = doc["cohorts_deleted"]
        click.echo(
            f"dropped {collection!r} ({doc['tiles']} tiles"
            + (f"; cohorts deleted: {', '.join(cohorts)}" if cohorts else "")
            + ")"
        )
