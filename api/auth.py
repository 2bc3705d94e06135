"""API tokens: validation of the operator's token, named scoped tokens stored hashed, the route
table of scopes, and the request check.

Method:

- ``LAMINA_API_TOKEN`` is read as the raw string of the environment variable, one way for
  ``lamina serve`` and :func:`api.app.create_app` (never JSON-decoded). A set but empty or
  placeholder value (``""``, ``null``, ``false``, ``0``, ``changeme``, fewer than
  :data:`MIN_TOKEN_CHARS` characters, whitespace inside, under 6 distinct characters...) is
  refused with :class:`AuthConfigError`: the server does not start. The token acts as one admin
  token named ``env``.
- Named tokens live in ``<home>/auth/tokens.json`` (mode 0600, folder 0700): name, scope,
  creation time and the sha256 of the secret, never the secret. Secrets are 256-bit random
  strings made by :meth:`TokenStore.add`, so a fast hash is as strong as a slow KDF against
  guessing and keeps every request's check in microseconds. The file is re-read when its
  (inode, size, mtime) changes: ``lamina token revoke`` takes effect on the next request.
- Auth is on when ``LAMINA_API_TOKEN`` is set or the tokens file exists (even with every
  token revoked: revoking the last token locks the API, it never opens it); a server that has
  seen the file keeps auth on if the file is then deleted. Off, every caller
  is ``anonymous`` with admin scope (``lamina serve`` allows that on loopback hosts only).
- Every route has one scope in :data:`ROUTES` (``public`` < ``read`` < ``write`` < ``admin``)
  and an audit action; a route missing from the table needs ``admin``. The presented secret's
  sha256 is compared with every stored hash by :func:`hmac.compare_digest`, without early exit.
  Missing or wrong token: 401; valid token of a lower scope: 403.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.api.errors import ApiError

ENV_VAR = "LAMINA_API_TOKEN"
ENV_TOKEN_NAME = "env"
MIN_TOKEN_CHARS = 16
MIN_DISTINCT_CHARS = 6
PLACEHOLDERS = frozenset(
    {
        "", "null", "none", "nil", "false", "true", "0", "1", "[]", "{}", '""', "''",
        "changeme", "change-me", "change_me", "token", "secret", "password", "default",
        "your-token", "your-token-here", "yourtokenhere", "<token>", "example", "test",
        "undefined",
    }
)  # fmt: skip
SCOPES = ("read", "write", "admin")
RANK = {"public": 0, "read": 1, "write": 2, "admin": 3}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TOKEN_PREFIX = "lam_"

# endpoint -> (scope, audit action). Every registered route must be here (tests enforce it).
ROUTES: dict[str, tuple[str, str]] = {
    "static": ("public", "page"),
    "index_page": ("public", "page"),
    "collections.health": ("public", "health"),
    "collections.openapi": ("read", "openapi"),
    "collections.encoders": ("read", "encoders"),
    "collections.collections": ("read", "collections"),
    "collections.collection": ("read", "collection"),
    "collections.tile": ("read", "tile"),
    "collections.tile_image": ("read", "tile image"),
    "collections.thumbnail": ("read", "thumbnail"),
    "qc.qc_png": ("read", "slide qc picture"),
    "qc.qc_geojson": ("read", "slide qc geojson"),
    "collections.facets": ("read", "facets"),
    "search.search": ("read", "search"),
    "search.search_batch": ("read", "search batch"),
    "cohorts.list_cohorts": ("read", "cohort list"),
    "cohorts.show_cohort": ("read", "cohort show"),
    "cohorts.create_cohort": ("write", "cohort create"),
    "cohorts.delete_cohort": ("write", "cohort delete"),
    "cohorts.create_export": ("write", "export"),
    "cohorts.create_probe": ("write", "probe"),
    "imports.import_files": ("write", "import"),
    "jobs.list_jobs": ("write", "job list"),
    "jobs.job_status": ("write", "job status"),
    "jobs.cancel_job": ("write", "job cancel"),
    "jobs.job_file": ("write", "job file"),
    "columns.column_roles": ("read", "column roles"),
    "columns.set_column_roles": ("admin", "column roles change"),
    "maintenance.index_settings": ("read", "index settings"),
    "maintenance.set_index_settings": ("admin", "index settings change"),
    "maintenance.compact_collection": ("write", "compact"),
    "edits.annotate_collection": ("write", "annotate"),
    "edits.delete_sources": ("write", "delete sources"),
    "edits.drop_collection": ("admin", "drop collection"),
    "roots.list_roots": ("admin", "roots"),
    "roots.relocate": ("admin", "relocate"),
    "slides.dzi": ("read", "deep zoom"),
    "slides.dz_tile": ("read", "deep zoom tile"),
    "viewer.page": ("public", "page"),
}
UNKNOWN_ROUTE = ("read", "unknown")  # 404/405 answers: any valid token, so routes are not mapped
UNLISTED_ROUTE = ("admin", "unlisted")  # a route missing from ROUTES: fail closed


class AuthConfigError(ApiError):
    """The token configuration is unusable (placeholder token, unreadable tokens file...)."""

    status = 503
    code = "AUTH_CONFIG"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name and scope (``anonymous`` when auth is off)."""

    name: str
    scope: str

    def allows(self, scope: str) -> bool:
        return RANK[self.scope] >= RANK[scope]


ANONYMOUS = Principal("anonymous", "admin")
# The command line's in-process app (api/local.py): the caller already owns the store's files.
LOCAL_OWNER = Principal("local", "admin")
LOCAL_OWNER_KEY = "lamina.local_owner"


def route_rule(endpoint: str | None) -> tuple[str, str]:
    """(scope, action) of a Flask endpoint; unknown paths need read, unlisted routes admin."""
    if endpoint is None:
        return UNKNOWN_ROUTE
    return ROUTES.get(endpoint, UNLISTED_ROUTE)


def check_token_value(raw: str, what: str = ENV_VAR) -> str:
    """The token itself, or :class:`AuthConfigError` naming ``what`` and the reason."""
    if not isinstance(raw, str):
        raise AuthConfigError(f"{what} must be a string")
    if raw.strip().lower() in PLACEHOLDERS:
        shown = repr(raw) if len(raw) <= 20 else "(value)"
        raise AuthConfigError(
            f"{what} is set to a placeholder {shown}; set a random secret of at least "
            f"{MIN_TOKEN_CHARS} characters (e.g. `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`) or unset it"
        )
    if any(c.isspace() for c in raw) or not raw.isprintable() or not raw.isascii():
        raise AuthConfigError(f"{what} holds whitespace or non-ASCII characters; use a plain token")
    if len(raw) < MIN_TOKEN_CHARS:
        raise AuthConfigError(
            f"{what} is {len(raw)} characters long; use a random secret of at least "
            f"{MIN_TOKEN_CHARS} characters"
        )
    if len(set(raw)) < MIN_DISTINCT_CHARS:
        raise AuthConfigError(f"{what} looks like a placeholder (too few distinct characters)")
    return raw


def env_token(environ: Mapping[str, str] | None = None) -> str | None:
    """``LAMINA_API_TOKEN`` as a raw string, validated; None when unset."""
    env = os.environ if environ is None else environ
    if ENV_VAR not in env:
        return None
    return check_token_value(env[ENV_VAR])


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _check_private(path: Path) -> None:
    st = path.stat()
    if st.st_mode & 0o077:
        raise AuthConfigError(
            f"the tokens file {path.name} is readable or writable by others "
            f"(mode {st.st_mode & 0o777:04o}); run chmod 600 on it"
        )


class TokenStore:
    """``<home>/auth/tokens.json``: named, scoped tokens, stored as sha256 of the secret."""

    def __init__(self, home: Path) -> None:
        self.dir = Path(home) / "auth"
        self.path = self.dir / "tokens.json"

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> list[dict[str, Any]]:
        """The records (name, scope, created, sha256); [] when there is no file."""
        if not self.path.is_file():
            return []
        _check_private(self.path)
        try:
            doc = json.loads(self.path.read_text())
            tokens = doc["tokens"]
            for t in tokens:
                if not (
                    isinstance(t.get("name"), str)
                    and t.get("scope") in SCOPES
                    and isinstance(t.get("sha256"), str)
                ):
                    raise ValueError(f"bad record {t.get('name')!r}")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AuthConfigError(f"the tokens file {self.path.name} is damaged ({exc})") from None
        return list(tokens)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        fd = os.open(self.dir / ".tokens.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, tokens: list[dict[str, Any]]) -> None:
        tmp = self.dir / f".tokens.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": 1, "tokens": tokens}, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def add(self, name: str, scope: str) -> str:
        """Create token ``name``; returns its secret (shown once, stored only hashed)."""
        if not NAME_RE.match(name) or name == ENV_TOKEN_NAME:
            raise ApiError(
                f"token name {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
                f"(and not {ENV_TOKEN_NAME!r}, the name of {ENV_VAR})",
                422,
                "INVALID_TOKEN_NAME",
            )
        if scope not in SCOPES:
            raise ApiError(f"scope must be one of {', '.join(SCOPES)}", 422, "INVALID_SCOPE")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._locked():
            tokens = self.load()
            if any(t["name"] == name for t in tokens):
                raise ApiError(
                    f"a token named {name!r} exists; revoke it first", 409, "TOKEN_EXISTS"
                )
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            tokens.append(
                {"name": name, "scope": scope, "created": created, "sha256": digest(secret)}
            )
            self._write(tokens)
        return secret

    def revoke(self, name: str) -> None:
        with self._locked():
            tokens = self.load()
            kept = [t for t in tokens if t["name"] != name]
            if len(kept) == len(tokens):
                raise ApiError(f"no token named {name!r}", 404, "TOKEN_NOT_FOUND")
            self._write(kept)

    def listing(self) -> list[dict[str, str]]:
        """Names, scopes and creation times; never secrets or hashes."""
        return [{k: t[k] for k in ("name", "scope", "created")} for t in self.load()]


class Authenticator:
    """Checks bearer tokens against the env token and the tokens file (re-read on change)."""

    def __init__(self, home: Path, api_token: str | None) -> None:
        self.store = TokenStore(home)
        self.env_digest = digest(api_token) if api_token else None
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._tokens: list[tuple[str, str, bytes]] = []
        self._seen_file = False  # once a tokens file was seen, auth stays on (even if deleted)
        self._reload()  # a damaged or public tokens file stops the app from starting

    @property
    def enabled(self) -> bool:
        if self.env_digest is not None or self._seen_file:
            return True
        self._seen_file = self.store.exists()
        return self._seen_file

    def _reload(self) -> None:
        try:
            st = self.store.path.stat()
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and (stamp is not None or not self._tokens):
            return
        with self._lock:
            records = self.store.load()
            self._tokens = [(t["name"], t["scope"], bytes.fromhex(t["sha256"])) for t in records]
            self._stamp = stamp
            self._seen_file = self._seen_file or stamp is not None

    def authenticate(self, header: str) -> Principal | None:
        """The principal of an ``Authorization`` header, or None (missing or wrong token)."""
        scheme, _, given = header.partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            return None
        self._reload()
        presented = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
        found: Principal | None = None
        if self.env_digest is not None and hmac.compare_digest(
            presented, bytes.fromhex(self.env_digest)
        ):
            found = Principal(ENV_TOKEN_NAME, "admin")
        for name, scope, stored in self._tokens:  # no early exit: time does not tell which
            if hmac.compare_digest(presented, stored) and found is None:
                found = Principal(name, scope)
        return found


def install(app: Any) -> None:
    """The request check (before every request) and the audit line (after it) of ``app``."""
    from flask import Response, g, request

    from lamina.api.app import API_PREFIX, error_response, state

    def _deny(status: int, code: str, message: str) -> Response:
        resp = error_response(status, code, message)
        if status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="lamina"'
        return resp

    @app.before_request
    def _authorize() -> Response | None:
        g.started = time.perf_counter()
        if not request.path.startswith(API_PREFIX + "/"):
            return None  # the page and static files carry no data
        scope, action = route_rule(request.endpoint)
        g.action = action
        if scope == "public":
            return None
        if app.extensions.get(LOCAL_OWNER_KEY):  # set in code only, never by config or env
            g.principal = LOCAL_OWNER
            return None
        auth = state().auth
        if not auth.enabled:
            g.principal = ANONYMOUS
            return None
        try:
            principal = auth.authenticate(request.headers.get("Authorization", ""))
        except AuthConfigError:
            return _deny(503, "AUTH_UNAVAILABLE", "the server's token store is unreadable")
        if principal is None:
            return _deny(401, "UNAUTHORIZED", "missing or wrong bearer token")
        g.principal = principal
        if not principal.allows(scope):
            return _deny(
                403,
                "FORBIDDEN",
                f"token {principal.name!r} has scope {principal.scope}; this needs {scope}",
            )
        return None

    @app.after_request
    def _audit(resp: Response) -> Response:
        action = g.get("action")
        if action is None or action == "health":
            return resp
        principal = g.get("principal")
        answer = g.get("answer_fields") or {}
        st = state()
        st.audit.record(
            token=principal.name if principal else "-",
            remote=request.remote_addr,
            method=request.method,
            path=st.exposure.scrub_text(request.path)[:512],
            action=action,
            collection=answer.get("collection")
            or _request_collection(
                request, parsed=principal is not None and resp.status_code < 400
            ),
            snapshot=answer.get("snapshot") or resp.headers.get("X-Lamina-Snapshot"),
            status=resp.status_code,
            ms=round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2),
        )
        return resp


def _request_collection(request: Any, parsed: bool) -> str | None:
    """The collection a request names: in the route, ``?collection=`` or the body's field
    (read only when ``parsed``: the route has read the body already, so it is cached)."""
    endpoint = request.endpoint or ""
    view_args = request.view_args or {}
    in_route = ("search", "imports", "slides", "maintenance", "edits")
    if endpoint.split(".")[0] in in_route or endpoint in (
        "collections.collection",
        "collections.facets",
    ):
        name = view_args.get("name")
        return str(name)[:128] if name else None
    name = request.args.get("collection")
    if not parsed:
        pass
    elif not name and request.mimetype == "application/json":
        body = request.get_json(silent=True)
        name = body.get("collection") if isinstance(body, dict) else None
    elif not name and request.mimetype == "multipart/form-data":
        name = request.form.get("collection")
    return str(name)[:128] if isinstance(name, str) and name else None
