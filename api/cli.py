"""The ``lamina`` command line. Commands live in api/commands/; this module wires them up.

Heavy libraries (torch, faiss, duckdb) are imported inside commands, so ``lamina --help``
and the client-backed commands stay fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any

import click

from lamina.api.errors import DOMAIN_ERRORS, error_body


@dataclass
class CliContext:
    home: Path
    url: str | None
    token: str | None = None

    def store(self) -> Any:
        from lamina.search import Store

        return Store(self.home)

    def require_local(self, command: str, hint: str) -> None:
        """Refuse ``--url`` (usage error, exit 2) for a command that works on local files."""
        if self.url:
            raise click.UsageError(
                f"lamina {command} works on the store at --home on this machine and does not "
                f"take --url ({hint})"
            )

    def client(self) -> Any:
        """The :class:`~lamina.api.client.Client` every store command talks through: over HTTP
        with ``--url``, else to an app in this process over the store at ``--home``."""
        from lamina.api.client import Client

        if self.url:
            return Client(self.url, token=self.token)
        from lamina.api.local import LOCAL_URL, inprocess_transport, local_app

        return Client(LOCAL_URL, token="", transport=inprocess_transport(local_app(self.home)))


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, default=str, allow_nan=False))


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn domain errors (local or a server's answer) into a clear message and exit 2.

    With ``--json`` the error document goes to stdout too, so scripts always get JSON.
    """
    from lamina.api.client import LaminaError

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return fn(*args, **kwargs)
            except OSError as exc:  # disk full, permissions, I/O: a clear error, not a traceback
                if os.environ.get("LAMINA_DEBUG"):
                    raise
                from lamina.search.errors import io_failure

                raise io_failure(f"lamina {_command_name()}", exc) from exc
            except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
                raise
            except (*DOMAIN_ERRORS, LaminaError):
                raise
            except Exception as exc:  # a bug or a damaged store: say so, exit 2
                if os.environ.get("LAMINA_DEBUG"):
                    raise
                raise _Unexpected(
                    f"lamina {_command_name()} failed unexpectedly ({type(exc).__name__}: "
                    f"{exc}); the store may be damaged. Set LAMINA_DEBUG=1 for the traceback."
                ) from exc
        except (*DOMAIN_ERRORS, LaminaError, _Unexpected) as exc:
            if isinstance(exc, LaminaError):
                body: dict[str, Any] = {
                    "ok": False,
                    "status": exc.status,
                    "code": exc.code,
                    "error": exc.message,
                }
                source = "from the server" if exc.status else "before reaching the server"
                message = f"{exc.message} ({exc.code} {source})"
                if exc.code == "INTERNAL":  # a bug or a damaged store: say where to look
                    message += _internal_hint()
            else:
                body, message = error_body(exc), str(exc)
                if isinstance(exc, _Unexpected):
                    body.update(code="INTERNAL", error=message)
                body.update(getattr(exc, "details", None) or {})
            if kwargs.get("as_json"):
                emit_json(body)
            click.echo(f"error: {message}", err=True)
            sys.exit(2)

    return wrapper


def _internal_hint() -> str:
    ctx = click.get_current_context(silent=True)
    if ctx is not None and isinstance(ctx.obj, CliContext) and ctx.obj.url:
        return "; the server's log has the traceback"
    return "; the store may be damaged. Set LAMINA_DEBUG=1 for the traceback"


def _command_name() -> str:
    ctx = click.get_current_context(silent=True)
    return ctx.command_path.split(" ", 1)[-1] if ctx is not None else "command"


class _Unexpected(Exception):
    """An exception no domain error describes, reported as ``error: ...`` with exit 2."""


class _Group(click.Group):
    """The root group: a usage error (unknown option, bad value, missing argument) of a
    command run with ``--json`` also prints the JSON error document on stdout, code
    ``USAGE_ERROR``; click still prints its usage message on stderr and exits 2."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            ctx = super().make_context(info_name, list(args), parent=parent, **extra)
        except click.UsageError as exc:
            _usage_json(exc, args)
            raise
        ctx.meta["lamina.args"] = list(args)
        return ctx

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            _usage_json(exc, ctx.meta.get("lamina.args", []))
            raise


def _usage_json(exc: click.UsageError, args: list[str]) -> None:
    options = args[: args.index("--")] if "--" in args else args
    if "--json" in options:
        emit_json(
            {"ok": False, "status": 400, "code": "USAGE_ERROR", "error": exc.format_message()}
        )


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Store location (default: $LAMINA_HOME or ./lamina-data).",
)
@click.option("--url", default=None, help="Talk to a running server (default: $LAMINA_URL).")
@click.option(
    "--token",
    default=None,
    help="API token sent with --url (default: $LAMINA_TOKEN, then ~/.config/lamina/config.toml).",
)
@click.version_option(package_name="lamina", prog_name="lamina")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, url: str | None, token: str | None) -> None:
    """Lamina: embedding search for pathology slides and dermatology photos."""
    home = home or Path(os.environ.get("LAMINA_HOME") or "lamina-data")
    ctx.obj = CliContext(home=home, url=url or os.environ.get("LAMINA_URL") or None, token=token)


def _register() -> None:
    from lamina.api.commands import collection as collection_cmd
    from lamina.api.commands import encoders as encoders_cmd
    from lamina.api.commands import extra_commands
    from lamina.api.commands import imports as imports_cmd
    from lamina.api.commands import index as index_cmd
    from lamina.api.commands import search as search_cmd
    from lamina.api.commands import status as status_cmd
    from lamina.api.commands import tokens as tokens_cmd

    modules = (encoders_cmd, index_cmd, imports_cmd, status_cmd, search_cmd, tokens_cmd)
    for module in (*modules, *extra_commands()):
        module.register(cli)
    collection_cmd.register(cli)
    from lamina.api.commands import columns as columns_cmd

    columns_cmd.register(cli)  # a subcommand of `collection`


_register()


def main() -> None:
    cli(prog_name="lamina")
