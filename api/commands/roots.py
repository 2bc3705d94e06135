"""`lamina relocate`: a data folder moved; tell the store where it lives now (search/roots.py).

``lamina relocate NAME NEWPATH`` moves root NAME; ``lamina relocate --from OLD --to NEW``
moves the folder that was indexed at OLD (a store indexed before roots existed, or a root
known by its folder); ``lamina relocate --list`` lists the roots. A metadata change for every
collection of the home: no segment is written and nothing is re-embedded. One path: through
``ctx.client()`` (POST /roots/relocate, admin scope): a server with ``--url``, else the
in-process app on the home. Without ``--url`` relative paths are taken from the current
folder; with ``--url`` they must be absolute paths on the server.
"""

from __future__ import annotations

import os

import click

from lamina.api.cli import CliContext, emit_json, handle_errors


def register(cli: click.Group) -> None:
    @cli.command("relocate")
    @click.argument("name", required=False)
    @click.argument("new_path", required=False)
    @click.option(
        "--from", "from_path", default=None, metavar="OLD", help="The folder as it was indexed."
    )
    @click.option(
        "--to", "to_path", default=None, metavar="NEW", help="Where it is now (with --from)."
    )
    @click.option("--list", "list_roots", is_flag=True, help="List the roots and exit.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def relocate_command(
        ctx: CliContext,
        name: str | None,
        new_path: str | None,
        from_path: str | None,
        to_path: str | None,
        list_roots: bool,
        as_json: bool,
    ) -> None:
        """A root's folder moved: NAME NEWPATH, or --from OLD --to NEW. Nothing re-embedded.

        Exit code 0 when moved (even when some sources are not at the new place: they are
        listed), 2 for an unknown root or folder, or a new path that is not a folder.
        """
        client = ctx.client()
        if list_roots:
            doc = client.roots()
            if as_json:
                emit_json(doc)
                return
            for r in doc["roots"]:
                where = "present" if r["present"] else "folder missing"
                click.echo(f"{r['name']}: {where}, earlier folders: {r['moves']}")
            if not doc["roots"]:
                click.echo("no roots (lamina index declares one per indexed folder)")
            return
        if from_path is not None or to_path is not None:
            if name or new_path or not (from_path and to_path):
                raise click.UsageError("give --from OLD --to NEW, or NAME NEWPATH")
        elif not (name and new_path):
            raise click.UsageError("give NAME NEWPATH (or --from OLD --to NEW, or --list)")

        def server_path(p: str) -> str:
            return p if ctx.url else os.path.abspath(p)

        to = server_path(str(to_path or new_path))
        out = client.relocate(
            to, root=name, from_path=server_path(from_path) if from_path else None
        )
        if as_json:
            emit_json(out)
            return
        click.echo(
            f"root {out['root']} now at {to} (version {out['version']}): {out['sources']} "
            f"sources under it; {out['found']} of {out['checked']} checked are there"
        )
        for rel in out["missing"]:
            click.echo(f"  not found at the new place: {rel}")
