"""The Flask application factory: HTTP API under /api/v1 and the web page at /.

``create_app(config)``: defaults, then ``LAMINA_*`` environment variables, then ``config``;
``API_TOKEN`` is the raw string of ``LAMINA_API_TOKEN`` (never JSON-decoded) unless ``config``
gives one, and a placeholder value stops the app (:func:`api.auth.check_token_value`).
Per-app state lives in ``app.extensions["lamina"]`` (a :class:`LaminaState`); nothing global.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from lamina.api.errors import DOMAIN_ERRORS, error_body

API_PREFIX = "/api/v1"
log = logging.getLogger("lamina.api")

DEFAULTS: dict[str, Any] = {
    "HOME": None,  # None -> $LAMINA_HOME or ./lamina-data
    "API_TOKEN": None,
    "SOURCE_PATHS": "relative",  # relative | name | hash | none, or per scope (api/exposure.py)
    "AUDIT": "on",
    "AUDIT_MAX_BYTES": 10 * 1024 * 1024,
    "AUDIT_BACKUPS": 5,
    "MAX_CONTENT_LENGTH": 32 * 1024 * 1024,
    "MAX_IMAGE_PIXELS": 50_000_000,
    "DEVICE": "auto",  # auto -> CUDA when present
    "MAX_INFLIGHT": 6,  # searches/renders at once; more -> 429 (see api/limits.py)
    "SEARCH_TIMEOUT_S": 30,
    "JOB_WORKERS": 1,  # background jobs (see api/jobs.py)
    "JOB_QUEUE": 16,
    "JOB_KEEP_S": 3600,
    "JSON_SORT_KEYS": False,
    "CLUSTER": None,  # a Ray address: searches fan out over shard actors (search/sharded.py)
    "SHARDS": 2,
    "REPLICAS": 1,
    "SHARD_CPUS": 1.0,
    "CLUSTER_TAG": None,  # names the shard actors (lamina status --cluster lists them)
    "DZ_MAX_SLIDES": 8,  # slide viewer: slides held open at once (api/routes/viewer.py)
    "DZ_CACHE_BYTES": 64 * 1024 * 1024,  # slide viewer: encoded deep-zoom tiles kept
}

HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    411: "LENGTH_REQUIRED",
    413: "PAYLOAD_TOO_LARGE",
    414: "URI_TOO_LONG",
    415: "UNSUPPORTED_MEDIA_TYPE",
    416: "RANGE_NOT_SATISFIABLE",
    422: "UNPROCESSABLE",
    429: "TOO_MANY_REQUESTS",
    431: "HEADERS_TOO_LARGE",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
}


class LaminaState:
    """What one app instance owns: the store, the search service, the catalog (lazily)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        from lamina.api.audit import AuditLog, audit_enabled
        from lamina.api.auth import Authenticator
        from lamina.api.exposure import Exposure
        from lamina.search import SearchService, Store

        self.config = config
        self.home = Path(config.get("HOME") or os.environ.get("LAMINA_HOME") or "lamina-data")
        self.auth = Authenticator(self.home, config.get("API_TOKEN"))
        self.exposure = Exposure(self.home, config.get("SOURCE_PATHS"))
        self.audit = AuditLog(
            self.home,
            enabled=audit_enabled(config.get("AUDIT")),
            max_bytes=int(config.get("AUDIT_MAX_BYTES") or 10 * 1024 * 1024),
            backups=int(config.get("AUDIT_BACKUPS") or 5),
        )
        self.store = Store(self.home)
        # background: new snapshots are prepared, and ANN indexes built, off the request path
        self.service = SearchService(self.store, background=True)
        # the service that answers searches: this one, or shard actors on a Ray cluster
        self.searcher: SearchService = self.service
        if config.get("CLUSTER"):
            from lamina.search.sharded import ShardedSearchService

            self.searcher = ShardedSearchService(
                self.store,
                str(config["CLUSTER"]),
                shards=int(config.get("SHARDS") or 2),
                replicas=int(config.get("REPLICAS") or 1),
                cpus_per_shard=float(config.get("SHARD_CPUS") or 0),
                tag=config.get("CLUSTER_TAG"),
            )
        self.embed_lock = threading.Lock()  # one embedding at a time per app (CPU-bound anyway)
        self._catalog: Any = None
        self._catalog_lock = threading.Lock()

    def catalog(self) -> Any:
        """The home's catalog (cohorts, exports...), created on first use and cached."""
        if self._catalog is None:
            with self._catalog_lock:
                if self._catalog is None:
                    from lamina.search.catalog import Catalog

                    self._catalog = Catalog(self.home)
        return self._catalog


def state() -> LaminaState:
    return current_app.extensions["lamina"]  # type: ignore[no-any-return]


def error_response(status: int, code: str, message: str) -> Response:
    resp = jsonify({"ok": False, "status": status, "code": code, "error": message})
    resp.status_code = status
    return resp


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    from lamina.api.limits import BoundedRequest

    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.request_class = BoundedRequest
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("LAMINA")
    if config:
        app.config.from_mapping(config)
    from lamina.api import auth, exposure

    if config and "API_TOKEN" in config:
        token = config["API_TOKEN"]
        app.config["API_TOKEN"] = (
            None if token is None else auth.check_token_value(token, "API_TOKEN")
        )
    else:
        app.config["API_TOKEN"] = auth.env_token()
    app.extensions["lamina"] = LaminaState(app.config)
    exposure.install(app)

    from lamina.api.routes import cohorts, collections, imports, jobs, search

    app.register_blueprint(collections.bp, url_prefix=API_PREFIX)
    app.register_blueprint(search.bp, url_prefix=API_PREFIX)
    app.register_blueprint(cohorts.bp, url_prefix=API_PREFIX)
    app.register_blueprint(imports.bp, url_prefix=API_PREFIX)
    app.register_blueprint(jobs.bp, url_prefix=API_PREFIX)
    from lamina.api.routes import columns, maintenance

    app.register_blueprint(columns.bp, url_prefix=API_PREFIX)

    app.register_blueprint(maintenance.bp, url_prefix=API_PREFIX)
    from lamina.api.routes import viewer

    app.register_blueprint(viewer.bp, url_prefix=API_PREFIX)
    from lamina.api.routes import qc

    app.register_blueprint(qc.bp, url_prefix=API_PREFIX)
    from lamina.api.routes import edits

    app.register_blueprint(edits.bp, url_prefix=API_PREFIX)
    from lamina.api.routes import roots

    app.register_blueprint(roots.bp, url_prefix=API_PREFIX)
    app.register_blueprint(viewer.pages)

    auth.install(app)

    @app.get("/")
    def index_page() -> str:
        return render_template("index.html", api_prefix=API_PREFIX, auth=state().auth.enabled)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = HTTP_CODES.get(status, "HTTP_ERROR")
        resp = error_response(status, code, exc.description or code)
        if status == 405 and exc.get_response().headers.get("Allow"):
            resp.headers["Allow"] = exc.get_response().headers["Allow"]
        return resp

    @app.errorhandler(Exception)
    def _any_error(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return _http_error(exc)
        body = error_body(exc)
        if not isinstance(exc, DOMAIN_ERRORS) or int(body["status"]) >= 500:  # type: ignore[call-overload]
            log.exception("error answering %s %s", request.method, request.path)
        resp = jsonify(body)
        resp.status_code = int(body["status"])  # type: ignore[call-overload]
        return resp

    return app
