"""`lamina serve`: the HTTP API and the web page, on waitress (a production WSGI server)."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from typing import NoReturn

import click

from lamina.api.cli import CliContext


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _refuse(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def register(cli: click.Group) -> None:
    @cli.command("serve")
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
    @click.option(
        "--workers",
        type=click.IntRange(1, 256),
        default=8,
        show_default=True,
        help="Request threads.",
    )
    @click.option(
        "--insecure",
        is_flag=True,
        help="Allow a non-loopback host without tokens (LAMINA_API_TOKEN or `lamina token add`).",
    )
    @click.option(
        "--cluster",
        default=None,
        metavar="ADDRESS",
        help="Ray cluster address (host:port or 'auto'): searches fan out over shard actors.",
    )
    @click.option("--shards", type=click.IntRange(1, 256), default=2, show_default=True)
    @click.option("--replicas", type=click.IntRange(1, 16), default=1, show_default=True)
    @click.option(
        "--shard-cpus",
        type=click.FloatRange(0, 64),
        default=1.0,
        show_default=True,
        help="CPUs Ray reserves per shard replica.",
    )
    @click.pass_obj
    def serve_command(
        ctx: CliContext,
        host: str,
        port: int,
        workers: int,
        insecure: bool,
        cluster: str | None,
        shards: int,
        replicas: int,
        shard_cpus: float,
    ) -> None:
        """Serve the HTTP API (/api/v1) and the web page (/).

        With LAMINA_API_TOKEN set or tokens made by `lamina token add`, every route but
        /health needs `Authorization: Bearer <token>` of a sufficient scope. With --cluster,
        each collection's segments are spread over SHARDS shard actors (REPLICAS each) on
        that Ray cluster, which must see this home at the same path."""
        from lamina.api.auth import AuthConfigError, Authenticator, env_token
        from lamina.api.exposure import ExposureConfigError

        try:
            enabled = Authenticator(ctx.home, env_token()).enabled
        except AuthConfigError as exc:
            _refuse(str(exc))
        if not is_loopback(host) and not enabled and not insecure:
            _refuse(
                f"refusing to serve on {host} without a token; set LAMINA_API_TOKEN or create "
                "one with `lamina token add NAME --scope read` (clients send "
                "'Authorization: Bearer <token>'), or pass --insecure"
            )
        import waitress

        from lamina.api.app import create_app

        config: dict[str, object] = {"HOME": str(ctx.home)}
        if cluster:
            config.update(
                CLUSTER=cluster,
                SHARDS=shards,
                REPLICAS=replicas,
                SHARD_CPUS=shard_cpus,
                CLUSTER_TAG=f"serve{port}-{os.getpid()}",
            )
        try:
            app = create_app(config)
        except (AuthConfigError, ExposureConfigError) as exc:
            _refuse(str(exc))
        except (ConnectionError, TimeoutError, RuntimeError) as exc:  # Ray unreachable
            _refuse(f"cannot start the shards on the Ray cluster at {cluster}: {exc}")
        limit = int(app.config["MAX_CONTENT_LENGTH"] or 0)
        if "LAMINA_MAX_INFLIGHT" not in os.environ:  # keep threads free for cheap routes and 429s
            app.config["MAX_INFLIGHT"] = max(1, workers // 2)
        auth = "token required" if enabled else "no token"
        if cluster:
            auth += f", {shards} shards x {replicas} replicas on {cluster}"
        try:  # binds the socket now, so a busy port is refused before anything says "serving"
            server = waitress.create_server(
                app,
                host=host,
                port=port,
                threads=workers,
                ident="lamina",
                max_request_body_size=limit + 65_536 if limit else 1 << 30,
                clear_untrusted_proxy_headers=True,
            )
        except OSError as exc:
            _refuse(bind_error(host, port, exc))
        bound = getattr(server, "effective_port", port)  # the real port of --port 0
        click.echo(
            f"lamina: serving {ctx.home} on http://{host}:{bound} ({workers} threads, {auth})",
            err=True,
        )
        server.run()


def bind_error(host: str, port: int, exc: OSError) -> str:
    """One line saying why ``host:port`` cannot be listened on, and what to do."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use (another lamina serve or another "
            "program); stop it, or choose another port with --port N (--port 0 picks a free one)"
        )
    if exc.errno == errno.EACCES:
        return f"no permission to listen on {host}:{port} (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return f"cannot listen on {host}:{port}: {host} is not an address of this machine"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
