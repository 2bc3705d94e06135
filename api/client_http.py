"""Transport, errors, request encoding and token lookup of the Python client. Standard library
only (no Flask, torch, faiss, duckdb or numpy).

Token lookup (:func:`resolve_token`), first found wins: the ``token`` argument, ``$LAMINA_TOKEN``,
then the config file (``$LAMINA_CONFIG``, else ``$XDG_CONFIG_HOME/lamina/config.toml``, else
``~/.config/lamina/config.toml``): ``[servers."<url>"] token`` for that server, else the
top-level ``token``. The file must not be readable by group or others (mode 0600); one that
is raises :class:`ConfigError` rather than being used.
"""

from __future__ import annotations

import json
import mimetypes
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

# transport(method, url, headers, body, timeout) -> (status, headers, body bytes)
Transport = Callable[
    [str, str, dict[str, str], bytes | None, float], tuple[int, dict[str, str], bytes]
]


class LaminaError(Exception):
    """An error answer of the server (or a failure to reach it: status 0, code UNREACHABLE)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class InvalidRequest(LaminaError):
    """400/415/422: the request is malformed (bad filter, bad k, unreadable image...)."""


class Unauthorized(LaminaError):
    """401: missing or wrong token."""


class NotFound(LaminaError):
    """404: no such collection, tile, source, cohort..."""


class Conflict(LaminaError):
    """409."""


class EncoderMismatch(Conflict):
    """409 ENCODER_MISMATCH: the query was embedded with another encoder."""


class PayloadTooLarge(LaminaError):
    """413: upload over the server's size or pixel limit."""


class ServerError(LaminaError):
    """5xx, or the server could not be reached."""


def _error_class(status: int, code: str) -> type[LaminaError]:
    if code == "ENCODER_MISMATCH":
        return EncoderMismatch
    by_status: dict[int, type[LaminaError]] = {
        401: Unauthorized,
        403: Forbidden,
        404: NotFound,
        409: Conflict,
        413: PayloadTooLarge,
    }
    if status in by_status:
        return by_status[status]
    if 400 <= status < 500:
        return InvalidRequest
    return ServerError


class Forbidden(LaminaError):
    """403: the token is valid but its scope does not allow this."""


class ConfigError(LaminaError):
    """The client's config file is unusable (readable by others, not TOML...)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "BAD_CONFIG", message)


def urllib_transport(
    method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - user-given URL
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise ServerError(0, "UNREACHABLE", f"cannot reach {url}: {exc}") from None


def _multipart(
    fields: Mapping[str, Any], files: Sequence[tuple[str, str, bytes]]
) -> tuple[bytes, str]:
    boundary = "lamina-" + secrets.token_hex(12)
    out = bytearray()
    for name, value in fields.items():
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, dict | list) else str(value)
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{text}\r\n'
        ).encode()
    for name, filename, data in files:
        ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        safe = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{safe}"\r\nContent-Type: {ctype}\r\n\r\n'
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _file(path_or_bytes: str | Path | bytes, default_name: str = "image") -> tuple[str, bytes]:
    if isinstance(path_or_bytes, bytes | bytearray):
        return default_name, bytes(path_or_bytes)
    p = Path(path_or_bytes)
    return p.name, p.read_bytes()


def _q(segment: str) -> str:
    from urllib.parse import quote

    return quote(str(segment), safe="")


def config_path() -> Path:
    env = os.environ.get("LAMINA_CONFIG")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "lamina" / "config.toml"


def read_config(path: Path | None = None) -> dict[str, Any]:
    """The config file as a dict ({} when absent); refuses a file others may read."""
    import tomllib

    path = path or config_path()
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{path} is readable or writable by group or others (mode {st.st_mode & 0o777:04o}); "
            f"it holds tokens: run chmod 600 {path}"
        )
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML file ({exc})") from None


def resolve_token(url: str | None, token: str | None = None) -> str | None:
    """The token to send to ``url``: the argument, $LAMINA_TOKEN, then the config file."""
    if token:
        return token
    env = os.environ.get("LAMINA_TOKEN", "").strip()
    if env:
        return env
    conf = read_config()
    servers = conf.get("servers")
    if url and isinstance(servers, dict):
        entry = servers.get(url.rstrip("/")) or servers.get(url.rstrip("/") + "/")
        if isinstance(entry, dict) and isinstance(entry.get("token"), str) and entry["token"]:
            return str(entry["token"])
    found = conf.get("token")
    if found is not None and not isinstance(found, str):
        raise ConfigError(f"{config_path()}: token must be a string")
    return found or None
