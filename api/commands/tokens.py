"""`lamina token add|list|revoke`: named API tokens with a scope (read, write, admin).

Tokens live hashed in ``<home>/auth/tokens.json`` (see api/auth.py); ``add`` prints the secret
once. A running server sees changes on its next request. Every change is audited.
"""

from __future__ import annotations

import getpass
import os

import click

from lamina.api.cli import CliContext, emit_json, handle_errors


def _audit(ctx: CliContext, action: str, name: str) -> None:
    from lamina.api.audit import AuditLog, audit_enabled

    AuditLog(ctx.home, enabled=audit_enabled(os.environ.get("LAMINA_AUDIT"))).record(
        token=f"local:{getpass.getuser()}", remote="local", action=action, target=name, status=0
    )


def register(cli: click.Group) -> None:
    @cli.group("token")
    def token_group() -> None:
        """Named API tokens with a scope: read (search, status, images, cohort reads), write
        (+ cohorts, exports, probes, imports), admin (everything)."""

    @token_group.command("add")
    @click.argument("name")
    @click.option(
        "--scope",
        type=click.Choice(["read", "write", "admin"]),
        default="read",
        show_default=True,
        help="What the token may do.",
    )
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def add_command(ctx: CliContext, name: str, scope: str, as_json: bool) -> None:
        """Create token NAME and print its secret (shown once; only its hash is stored)."""
        from lamina.api.auth import TokenStore
        from lamina.api.errors import ApiError

        if not ctx.home.is_dir():
            raise ApiError(
                f"no store at {ctx.home}: give --home or set LAMINA_HOME", 404, "NO_STORE"
            )
        secret = TokenStore(ctx.home).add(name, scope)
        _audit(ctx, "token add", name)
        if as_json:
            emit_json({"ok": True, "name": name, "scope": scope, "token": secret})
            return
        click.echo(secret)
        click.echo(
            f"token {name!r} ({scope}) created; it is shown once: store it now "
            "(clients: --token, LAMINA_TOKEN or ~/.config/lamina/config.toml)",
            err=True,
        )

    @token_group.command("list")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def list_command(ctx: CliContext, as_json: bool) -> None:
        """Names, scopes and creation times (never secrets)."""
        from lamina.api.auth import ENV_TOKEN_NAME, ENV_VAR, TokenStore

        tokens = TokenStore(ctx.home).listing()
        if as_json:
            emit_json({"ok": True, "tokens": tokens, "env_token": ENV_VAR in os.environ})
            return
        if ENV_VAR in os.environ:
            click.echo(f"{ENV_TOKEN_NAME:<24} admin   (from {ENV_VAR})")
        if not tokens and ENV_VAR not in os.environ:
            click.echo("no tokens")
        for t in tokens:
            click.echo(f"{t['name']:<24} {t['scope']:<7} created {t['created']}")

    @token_group.command("revoke")
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    @click.pass_obj
    @handle_errors
    def revoke_command(ctx: CliContext, name: str, as_json: bool) -> None:
        """Delete token NAME; a running server refuses it from its next request."""
        from lamina.api.auth import TokenStore

        TokenStore(ctx.home).revoke(name)
        _audit(ctx, "token revoke", name)
        if as_json:
            emit_json({"ok": True, "revoked": name})
            return
        click.echo(f"token {name!r} revoked")
