"""`lamina encoders`: the registered encoders and whether their weights are on this machine."""

from __future__ import annotations

import click

from lamina.api.cli import emit_json


def register(cli: click.Group) -> None:
    @cli.command("encoders")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    def encoders_command(as_json: bool) -> None:
        """Registered encoders: key, modality, dim, input size, um/px, whether the weights are on
        this machine (and where, or where to put them), licence."""
        from lamina.encoders import encoder_table, plugin_errors

        rows = encoder_table()
        failed = plugin_errors()
        for name, error in failed.items():
            click.echo(f"warning: encoder plugin {name} failed to load: {error}", err=True)
        if as_json:
            emit_json({"ok": True, "encoders": rows, "plugin_errors": failed})
            return
        header = f"{'key':34} {'modality':11} {'dim':>5} {'px':>4} {'um/px':>5}  weights  licence"
        click.echo(header)
        for r in rows:
            mpp = "-" if r["mpp"] is None else f"{r['mpp']:g}"
            avail = "yes" if r["weights_available"] else "no "
            click.echo(
                f"{r['key']:34} {r['modality']:11} {r['embed_dim']:>5} {r['input_px']:>4} "
                f"{mpp:>5}  {avail:7}  {r['licence'] or '-'}"
            )
            origin = "" if r["origin"] == "built-in" else f"[{r['origin']}] "
            click.echo(f"{'':34}   {origin}{r['weights']}")
