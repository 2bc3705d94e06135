"""The command line's local mode: the HTTP API answered by an app inside this process.

Every CLI command that reads or changes a store talks to it through :class:`lamina.api.client.
Client`; without ``--url`` the client's transport is :func:`inprocess_transport` over
:func:`local_app`, so local and remote runs share one code path, one result and one JSON shape.
The in-process app calls its caller the local owner (admin scope, no token): whoever can run
this process can already read and write the store's files. That flag is set here in code,
never from configuration or the environment, so no server can be started with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lamina.api.auth import LOCAL_OWNER_KEY
from lamina.api.client_http import Transport

LOCAL_URL = "http://lamina.local"
"""The base URL the in-process client is given (never resolved; no socket is opened)."""


def local_app(home: Path, config: dict[str, Any] | None = None) -> Any:
    """A Flask app over the store at ``home`` whose every caller is the local owner."""
    from lamina.api.app import create_app

    app = create_app({"HOME": str(home), "API_TOKEN": None, **(config or {})})
    app.extensions[LOCAL_OWNER_KEY] = True
    # a command lives for one answer: views are prepared before answering (never on a thread
    # the exit would cut short), and no ANN index is built behind it (`lamina collection build`
    # and servers do that)
    app.extensions["lamina"].service.background = False
    _quiet_server_log()
    return app


def _quiet_server_log() -> None:
    """The command reports every failure itself (``error: ...``, exit 2): the tracebacks the
    app and its jobs log for a server's operator stay out of its stderr, unless
    ``LAMINA_DEBUG=1`` asks for them (or logging is configured: they then go there)."""
    import logging
    import os

    logger = logging.getLogger("lamina.api")
    if os.environ.get("LAMINA_DEBUG") or any(
        isinstance(h, logging.NullHandler) for h in logger.handlers
    ):
        return
    logger.addHandler(logging.NullHandler())  # only stops the last-resort print to stderr


def inprocess_transport(app: Any) -> Transport:
    """A client transport that hands each request to ``app`` directly (Werkzeug's test client)."""
    http = app.test_client()

    def send(
        method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(url)
        resp = http.open(
            parts.path, method=method, query_string=parts.query, headers=headers, data=body
        )
        try:
            return resp.status_code, dict(resp.headers), resp.get_data()
        finally:
            resp.close()

    return send
