"""`lamina encoders`: the registered encoders and whether their weights are on this machine."""

from __future__ import annotations

import click

from api.cli import emit_json


def register(cli: click.Group) -> None:
    @cli.command("encoders")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    def encoders_command(as_json: bool) -> None:
        """Registered encoders: key, modality, dims, input size, mpp, weights availability."""
        from encoders import encoder_table

        rows = encoder_table()
        if as_json:
            emit_json({"ok": True, "encoders": rows})
            return
        header = f"{'key':38} {'modality':12} {'dim':>5} {'px':>4} {'mpp':>5}  weights"
        click.echo(header)
        for r in rows:
            mpp = "-" if r["mpp"] is None else f"{r['mpp']:g}"
            avail = "yes" if r["weights_available"] else "no"
            click.echo(
                f"{r['key']:38} {r['modality']:12} {r['embed_dim']:>5} {r['input_px']:>4} "
                f"{mpp:>5}  {avail}: {r['weights']}"
            )
