"""`lamina collection columns NAME`: show or declare the collection's patient / case / lesion
columns (``search.columns``), through the client (``GET``/``PUT /collections/{c}/columns``).

Declaring stores a column name in ``collection.json``; nothing is re-embedded. The patient
column drives ``--group-by patient``, ``--exclude-same patient``, the default split of ``probe``
and ``export`` and the patient counts of cohorts.
"""

from __future__ import annotations

from typing import Any

import click

from lamina.api.cli import CliContext, emit_json, handle_errors

ROLES = ("patient", "case", "lesion")


def print_columns(doc: dict[str, Any]) -> None:
    """The roles as declared and as resolved, then the metadata columns."""
    click.echo(f"collection {doc['name']}")
    for role in ROLES:
        said = doc["declared"].get(f"{role}_column")
        used = doc.get(f"{role}_column")
        if said is None and used is not None:
            note = f"{used} (not declared; the collection has a {used!r} column)"
        elif said is not None and used is None:
            note = f"{said} (declared, but the collection has no such column yet)"
        else:
            note = str(used) if used is not None else "none"
        click.echo(f"  {role} column: {note}")
    cols = ", ".join(f"{c} ({t})" for c, t in doc["metadata_columns"].items()) or "none"
    click.echo(f"  metadata columns: {cols}")


def register(cli: click.Group) -> None:
    group = cli.commands["collection"]
    assert isinstance(group, click.Group)

    @group.command("columns")
    @click.argument("name")
    @click.option("--patient-column", default=None, help="Column naming the patient.")
    @click.option("--case-column", default=None, help="Column naming the case (specimen).")
    @click.option("--lesion-column", default=None, help="Column naming the lesion.")
    @click.option(
        "--clear",
        "clear",
        type=click.Choice(ROLES),
        multiple=True,
        help="Forget a role's declared column (repeatable).",
    )
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def columns_command(
        ctx: CliContext,
        name: str,
        patient_column: str | None,
        case_column: str | None,
        lesion_column: str | None,
        clear: tuple[str, ...],
        as_json: bool,
    ) -> None:
        """Show, or declare, which columns of NAME name the patient, the case and the lesion."""
        given = {"patient": patient_column, "case": case_column, "lesion": lesion_column}
        roles: dict[str, str | None] = {f"{r}_column": c for r, c in given.items() if c}
        for role in clear:
            if given[role]:
                raise click.UsageError(f"--{role}-column and --clear {role} contradict each other")
            roles[f"{role}_column"] = None
        client = ctx.client()
        if roles:
            doc = client.set_collection_columns(name, **roles)
        else:
            doc = client.collection_columns(name)
        if as_json:
            emit_json({"ok": True, "collection": doc})
        else:
            print_columns(doc)
