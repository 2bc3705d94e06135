"""What JSON answers may say about the server's files: source paths and error messages.

Method: every JSON answer of the API goes through :class:`ExposingJSONProvider`, which copies
the document while rewriting, in one place:

- source paths (any string value that is an absolute path, and the values of ``source`` /
  ``file`` / ``path`` keys) per the server setting ``SOURCE_PATHS``
  (``LAMINA_SOURCE_PATHS``): ``relative`` (default) the path relative to the folder given to
  ``lamina index`` (recorded in ``<home>/roots/``; the longest recorded folder holding the
  file wins), else the file name; ``name`` the file name; ``hash`` ``h-`` and 24 hex digits of
  HMAC-SHA256 of the absolute path under a per-home key (``<home>/auth/path.key``), stable for
  one server; ``none`` null. The setting may differ per scope: ``read:hash,write:relative``.
- error messages (``error``, ``reason``, ``message`` values): the home path becomes
  ``the store``, any other absolute path its file name, and lists of collection or cohort names
  are dropped; every other string has the home path replaced too.

Invariants: no answer but ``openapi.json`` (a static document) carries an absolute path or the
home; the caller's document is never mutated (a new one is built).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MODES = ("relative", "name", "hash", "none")
PATH_KEYS = frozenset({"source", "file", "path", "source_path", "slide"})
MESSAGE_KEYS = frozenset({"error", "reason", "message"})
_ABS_IN_TEXT = re.compile(r"(?<![\w.~:/-])/(?:[^\s/'\"(),;]+/)+([^\s/'\"(),;]*)")
_NAME_LISTS = re.compile(r"\s*\((?:collections|cohorts): [^)]*\)")


class ExposureConfigError(ValueError):
    """A bad ``SOURCE_PATHS`` setting."""


def parse_modes(setting: str | None) -> dict[str, str]:
    """``relative`` or ``read:hash,write:relative,admin:relative`` -> {scope: mode}."""
    text = (setting or "relative").strip().lower()
    out = dict.fromkeys(("read", "write", "admin"), "relative")
    if ":" not in text:
        if text not in MODES:
            raise ExposureConfigError(
                f"LAMINA_SOURCE_PATHS={setting!r}: use one of {', '.join(MODES)}"
            )
        return dict.fromkeys(out, text)
    for part in text.split(","):
        scope, _, mode = part.strip().partition(":")
        if scope not in out or mode not in MODES:
            raise ExposureConfigError(
                f"LAMINA_SOURCE_PATHS={setting!r}: write SCOPE:MODE pairs with scopes "
                f"read, write, admin and modes {', '.join(MODES)}"
            )
        out[scope] = mode
    return out


def roots_dir(home: Path) -> Path:
    return Path(home) / "roots"


def record_roots(home: Path, paths: Iterable[str | os.PathLike[str]]) -> None:
    """Remember the folders given to ``lamina index`` (one small file per folder, so
    concurrent runs never lose one); files need none (their relative path is their name)."""
    folders = {Path(p).resolve() for p in paths if Path(p).is_dir()}
    if not folders:
        return
    d = roots_dir(home)
    d.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        text = str(folder)
        target = d / hashlib.sha256(text.encode()).hexdigest()[:20]
        if target.exists():
            continue
        tmp = d / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}"
        tmp.write_text(text)
        os.replace(tmp, target)


class Exposure:
    """The rewriting rules of one server (home, modes, recorded roots, hash key)."""

    def __init__(self, home: Path, setting: str | None = None) -> None:
        self.home = Path(home)
        self.modes = parse_modes(setting)
        absolute = str(self.home.resolve())
        self.home_forms = sorted({absolute, str(self.home)} - {".", ""}, key=len, reverse=True)
        self._lock = threading.Lock()
        self._roots: list[str] = []
        self._roots_stamp: int | None = None
        self._key: bytes | None = None

    # -- paths -------------------------------------------------------------------------------
    def _recorded_roots(self) -> list[str]:
        d = roots_dir(self.home)
        try:
            stamp = d.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        if stamp != self._roots_stamp:
            with self._lock:
                roots = []
                for f in d.iterdir():
                    if not f.name.startswith("."):
                        try:
                            roots.append(f.read_text().strip())
                        except OSError:
                            continue
                self._roots = sorted((r for r in roots if r), key=len, reverse=True)
                self._roots_stamp = stamp
        return self._roots

    def _hash_key(self) -> bytes:
        if self._key is None:
            with self._lock:
                path = self.home / "auth" / "path.key"
                try:
                    self._key = path.read_bytes()
                except FileNotFoundError:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    key = secrets.token_bytes(32)
                    try:
                        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                        with os.fdopen(fd, "wb") as f:
                            f.write(key)
                        self._key = key
                    except FileExistsError:  # another process made it first
                        self._key = path.read_bytes()
        return self._key

    def relative(self, path: str) -> str:
        """The path relative to its recorded indexing root, else the file name."""
        for root in self._recorded_roots():
            if path.startswith(root.rstrip("/") + "/"):
                return path[len(root.rstrip("/")) + 1 :]
        return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]

    def public_path(self, path: str, scope: str = "read") -> str | None:
        """What a caller of ``scope`` is shown for the server path ``path``."""
        mode = self.modes.get(scope, "relative")
        if mode == "none":
            return None
        if mode == "hash":
            mac = hmac.new(self._hash_key(), path.encode("utf-8", "surrogatepass"), "sha256")
            return "h-" + mac.hexdigest()[:24]
        name = path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        if mode == "name":
            return name
        if any(path.startswith(h) for h in self.home_forms):  # never a path inside the home
            return name
        return self.relative(path)

    # -- text --------------------------------------------------------------------------------
    def scrub_text(self, text: str) -> str:
        for form in self.home_forms:
            text = text.replace(form + "/", "").replace(form, "the store")
        return text

    def scrub_message(self, text: str) -> str:
        text = self.scrub_text(text)
        text = _ABS_IN_TEXT.sub(lambda m: m.group(1) or "(path)", text)
        return _NAME_LISTS.sub("", text)

    # -- documents ---------------------------------------------------------------------------
    def expose(self, obj: Any, scope: str = "read") -> Any:
        """A copy of ``obj`` with paths and messages rewritten for a caller of ``scope``."""
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if isinstance(v, str):
                    if k in PATH_KEYS and _is_path(v):
                        out[k] = self.public_path(v, scope)
                    elif k in MESSAGE_KEYS:
                        out[k] = self.scrub_message(v)
                    else:
                        out[k] = self._string(v, scope)
                else:
                    out[k] = self.expose(v, scope)
            return out
        if isinstance(obj, list | tuple):
            return [self.expose(v, scope) for v in obj]
        if isinstance(obj, str):
            return self._string(obj, scope)
        return obj

    def _string(self, value: str, scope: str) -> str | None:
        if value[:1] == "/" and len(value) > 1 and "\n" not in value:
            return self.public_path(value, scope)
        if "/" in value:
            return self.scrub_text(value)
        return value


def _is_path(value: str) -> bool:
    return value[:1] == "/" or "/" in value or "\\" in value


def install(app: Any) -> None:
    """Route every JSON answer of ``app`` through :meth:`Exposure.expose`."""
    from flask import g, has_request_context, request
    from flask.json.provider import DefaultJSONProvider

    class ExposingJSONProvider(DefaultJSONProvider):
        def dumps(self, obj: Any, **kwargs: Any) -> str:
            if has_request_context() and request.endpoint != "collections.openapi":
                exposure: Exposure = app.extensions["lamina"].exposure
                principal = g.get("principal")
                obj = exposure.expose(obj, principal.scope if principal else "read")
                if isinstance(obj, dict):
                    g.answer_fields = {
                        k: obj[k] for k in ("collection", "snapshot") if isinstance(obj.get(k), str)
                    }
                    cohort = obj.get("cohort")
                    if isinstance(cohort, dict):
                        for k in ("collection", "snapshot"):
                            if isinstance(cohort.get(k), str):
                                g.answer_fields.setdefault(k, cohort[k])
            return super().dumps(obj, **kwargs)

    provider = ExposingJSONProvider(app)
    provider.sort_keys = False
    app.json = provider


def source_namer() -> Any:
    """``public_path`` bound to the current request's caller: for files the server writes
    (exports) with a source column. Call inside a request; the result works in any thread."""
    from functools import partial

    from flask import current_app, g

    exposure: Exposure = current_app.extensions["lamina"].exposure
    principal = g.get("principal")
    return partial(exposure.public_path, scope=principal.scope if principal else "read")
