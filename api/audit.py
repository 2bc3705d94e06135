"""The audit log: who (token name) did what (action) to which collection, when, with which
snapshot, and how it ended.

Format: JSON lines appended to ``<home>/audit/audit.jsonl`` (mode 0600), one per API request
(except ``/health``, the page and static files) and per ``lamina token`` change::

    {"time": "2026-12-04T21:40:01.123Z", "token": "alice", "remote": "10.0.0.7",
     "method": "POST", "path": "/api/v1/collections/derm/search", "action": "search",
     "collection": "derm", "snapshot": "3-1a2b3c4d5e6f", "status": 200, "ms": 12.4}

``token`` is the token's name (``anonymous`` when auth is off, ``-`` when no valid token was
given: a 401). Lines never hold request or answer bodies: no image bytes, no query vectors, no
filter values. Times are UTC; ``ms`` is wall milliseconds from the auth check to the answer.

Rotation: before a line would take the file over ``max_bytes`` (default 10 MB), the file is
renamed ``audit.jsonl.1`` (older ones shift up to ``.<backups>``, default 5; the oldest is
dropped). Writers of all threads and processes of one home serialise on an flock of
``audit/.lock``, so rotation never loses or splits a line. Lines are only ever appended;
a failed write (a full disk) is logged as an error and does not fail the request. A home
that does not exist (a server started before its first ingest) gets no log until it does.
``LAMINA_AUDIT=off`` disables the log.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any

log = logging.getLogger("lamina.audit")

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5
FIELDS = (
    "time", "token", "remote", "method", "path", "action", "target", "collection", "snapshot",
    "status", "ms",
)  # fmt: skip


def utc_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


class AuditLog:
    """Append-only, size-rotated JSON lines under ``<home>/audit``."""

    def __init__(
        self, home: Path, enabled: bool = True, max_bytes: int = MAX_BYTES, backups: int = BACKUPS
    ) -> None:
        self.dir = Path(home) / "audit"
        self.path = self.dir / "audit.jsonl"
        self.enabled = enabled
        self.max_bytes = max(int(max_bytes), 1024)
        self.backups = max(int(backups), 1)
        self._lock = threading.Lock()
        self._lock_fd: int | None = None  # the flock file, opened once per process

    def record(self, **fields: Any) -> None:
        """Append one line (fields outside :data:`FIELDS` are dropped; ``time`` is added)."""
        if not self.enabled:
            return
        doc = {"time": utc_now(), **{k: fields.get(k) for k in FIELDS if k != "time"}}
        line = (json.dumps(doc, default=str, allow_nan=False) + "\n").encode()
        try:
            self._append(line)
        except OSError as exc:
            log.error("audit log %s: cannot append (%s)", self.path, exc.strerror or exc)

    def _append(self, line: bytes) -> None:
        with self._lock:
            if self._lock_fd is None:
                if not self.dir.parent.is_dir():
                    return  # no store there (yet): nothing to protect, and no stray folders
                self.dir.mkdir(exist_ok=True)
                self._lock_fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
                weakref.finalize(self, os.close, self._lock_fd)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                try:
                    size = self.path.stat().st_size
                except FileNotFoundError:
                    size = 0
                if size and size + len(line) > self.max_bytes:
                    self._rotate()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    view = memoryview(line)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _rotate(self) -> None:
        oldest = self.dir / f"{self.path.name}.{self.backups}"
        oldest.unlink(missing_ok=True)
        for i in range(self.backups - 1, 0, -1):
            src = self.dir / f"{self.path.name}.{i}"
            if src.exists():
                os.replace(src, self.dir / f"{self.path.name}.{i + 1}")
        os.replace(self.path, self.dir / f"{self.path.name}.1")

    def files(self) -> list[Path]:
        """The current file and its rotated predecessors, newest first."""
        out = [self.path] if self.path.exists() else []
        out += [
            p
            for i in range(1, self.backups + 1)
            if (p := self.dir / f"{self.path.name}.{i}").exists()
        ]
        return out


def audit_enabled(setting: Any) -> bool:
    """``LAMINA_AUDIT``: on unless off/false/0/no/disabled."""
    if setting is None:
        return True
    return str(setting).strip().lower() not in ("off", "false", "0", "no", "disabled")
