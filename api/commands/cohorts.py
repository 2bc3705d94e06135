"""`lamina cohort create|list|show|delete`: saved, versioned tile sets (see search/cohorts.py).

Every subcommand goes through ``ctx.client()`` and the cohort routes: with ``--url`` a server,
else the in-process app over the home's catalog (shared with every server on the home). The
printed text and the ``--json`` document are the route's answer either way.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from lamina.api.cli import CliContext, emit_json, handle_errors


def as_doc(obj: Any) -> Any:
    """A client result (dataclass, object with to_dict, or dict) as a JSON-able document."""
    if isinstance(obj, list | tuple):
        return [as_doc(o) for o in obj]
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return obj


def _print_cohort(c: dict[str, Any]) -> None:
    patients = "" if c.get("n_patients") is None else f", {c['n_patients']} patients"
    click.echo(
        f"cohort {c['name']} v{c['version']}  collection {c['collection']}  "
        f"snapshot {c['snapshot']}  created {c['created_at']}"
    )
    click.echo(f"  {c['n_tiles']} tiles, {c['n_sources']} slides/photos{patients}")
    if c.get("deleted_members"):
        click.echo(
            f"  {c['deleted_members']} members deleted from the collection since "
            "(left out of counts and exports)"
        )
    click.echo(f"  definition: {c['definition']}")
    counts = c.get("counts")
    if not counts:
        return
    if counts.get("per_patient"):
        top = ", ".join(f"{r['value']}={r['n']}" for r in counts["per_patient"][:10])
        click.echo(f"  per patient ({counts.get('patient_column')}, top 10): {top}")
    top = ", ".join(f"{Path(str(r['source'])).name}={r['n']}" for r in counts["per_slide"][:5])
    click.echo(f"  per slide (top 5): {top}")
    for col, rows in counts.get("per_label", {}).items():
        click.echo(f"  per {col}: " + ", ".join(f"{r['value']}={r['n']}" for r in rows))


def register(cli: click.Group) -> None:
    @cli.group("cohort")
    def cohort_group() -> None:
        """Saved, versioned sets of tiles: by metadata filters and/or similarity."""

    @cohort_group.command("create")
    @click.argument("name")
    @click.option("--collection", required=True)
    @click.option(
        "--filter",
        "filters",
        multiple=True,
        help="COL=V1[,V2], COL!=V, COL>=N, ... (repeat to AND); applied first.",
    )
    @click.option(
        "--near",
        "near",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False),
        help="Example image (repeat: union of the neighbours of each example).",
    )
    @click.option(
        "--near-tile",
        "near_tiles",
        multiple=True,
        type=int,
        help="Example stored tile id (repeatable).",
    )
    @click.option(
        "--k",
        "k",
        type=click.IntRange(1),
        default=None,
        help="Nearest tiles per example (default 100 when examples are given).",
    )
    @click.option(
        "--min-score",
        type=float,
        default=None,
        help="Instead of --k: every tile scoring at least this against an example.",
    )
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def create_command(
        ctx: CliContext,
        name: str,
        collection: str,
        filters: tuple[str, ...],
        near: tuple[str, ...],
        near_tiles: tuple[int, ...],
        k: int | None,
        min_score: float | None,
        as_json: bool,
    ) -> None:
        """Create cohort NAME (a new version if it exists) and save it in the catalog."""
        if k is not None and min_score is not None:
            raise click.UsageError("give --k or --min-score, not both")
        if (k is not None or min_score is not None) and not (near or near_tiles):
            raise click.UsageError("--k / --min-score need --near or --near-tile")
        res = ctx.client().create_cohort(  # the expressions go as typed: the server parses them
            name,
            collection,
            filters=list(filters) or None,
            near=list(near) or None,
            near_tiles=list(near_tiles) or None,
            k=k,
            min_score=min_score,
        )
        cohort = res.data
        for warning in cohort.get("warnings") or []:  # filter values that match nothing
            click.echo(f"warning: {warning}", err=True)
        if as_json:
            emit_json({"ok": True, "cohort": cohort})
        else:
            _print_cohort(cohort)

    @cohort_group.command("list")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def list_command(ctx: CliContext, as_json: bool) -> None:
        """Cohorts (latest version of each)."""
        cohorts = [c.data for c in ctx.client().cohorts()]
        if as_json:
            emit_json({"ok": True, "cohorts": cohorts})
            return
        if not cohorts:
            click.echo("no cohorts")
        for c in cohorts:
            click.echo(
                f"{c['name']:<24} v{c['version']:<3} {c['collection']:<16} "
                f"{c['n_tiles']:>7} tiles  snapshot {c['snapshot']}  {c['created_at']}"
            )

    @cohort_group.command("show")
    @click.argument("name")
    @click.option(
        "--label-column",
        default=None,
        help="Count per this column only (default: every low-cardinality column).",
    )
    @click.option(
        "--version",
        "version",
        type=click.IntRange(1),
        default=None,
        help="An older version (default: the latest).",
    )
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def show_command(
        ctx: CliContext, name: str, label_column: str | None, version: int | None, as_json: bool
    ) -> None:
        """One cohort with counts per slide, per patient and per label."""
        cohort = ctx.client().cohort(name, version=version, label_column=label_column).data
        if as_json:
            emit_json({"ok": True, "cohort": cohort})
        else:
            _print_cohort(cohort)

    @cohort_group.command("delete")
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def delete_command(ctx: CliContext, name: str, as_json: bool) -> None:
        """Delete cohort NAME (all its versions)."""
        name = ctx.client().delete_cohort(name)
        if as_json:
            emit_json({"ok": True, "deleted": name})
        else:
            click.echo(f"deleted cohort {name}")
