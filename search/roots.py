"""Roots: named folders that sources live under, so a moved data folder is one metadata change.

Layout: ``<home>/roots.json`` (one per home, shared by its collections)::

    {"version": 3,
     "roots": {"derm": {"path": "/data/derm", "was": ["/old/derm"]}},
     "history": [{"at": "...Z", "root": "derm", "from": "/old/derm", "to": "/data/derm"}]}

Method. Segments are immutable and keep each source's path as it was when indexed (absolute).
A root names a folder (``path``, where it is now) and the folders it was at before (``was``).
A stored path under a root's current or former folder is *relative to that root*: its current
location is the root's ``path`` joined with the part below the folder it was indexed under
(the longest matching folder wins). A stored path under no root is used as it is (stores
written before roots existed keep working).

- ``lamina index DIR`` declares the root of DIR: ``--root NAME=PATH`` (PATH holds DIR), else
  DIR itself, named after its last part (``-2``, ``-3``... when that name is taken by another
  folder). A folder already under a root's current folder needs no new root.
- ``relocate(NAME, NEW)`` makes NEW the root's folder (the old one joins ``was``);
  ``relocate_prefix(OLD, NEW)`` does the same for the root whose folder is OLD, or declares a
  root for OLD (a store indexed before roots existed). No segment changes, nothing is
  re-embedded; the version grows by one and every process of the home sees the new place at
  its next read (the file is re-read when it was replaced: inode, modification time, size).

Invariants: writes hold ``<home>/roots.lock`` and replace the file atomically; a root's
``path`` is never also in its ``was``; names follow the collection-name rule.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.search.errors import RootError, RootNotFoundError

ROOT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FILE_NAME = "roots.json"


def _norm(path: str | os.PathLike[str]) -> str:
    """An absolute, normalised folder path without a trailing slash."""
    return os.path.normpath(os.path.abspath(os.fspath(path)))


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


@dataclass
class Root:
    name: str
    path: str
    was: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "was": list(self.was)}


@dataclass
class RootsTable:
    """One read of ``roots.json``: its version, roots and history."""

    version: int = 0
    roots: dict[str, Root] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    _prefixes: list[tuple[str, Root]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        pairs = [(p, r, p == r.path) for r in self.roots.values() for p in (r.path, *r.was)]
        # the longest folder first; of equal folders a root's current one before a former one
        pairs.sort(key=lambda prc: (len(prc[0]), prc[2]), reverse=True)
        self._prefixes = [(p, r) for p, r, _ in pairs]

    def resolve(self, stored: str) -> str:
        """The current location of a stored source path (itself when under no root)."""
        if not self._prefixes or not stored.startswith("/"):
            return stored
        for prefix, root in self._prefixes:
            if _under(stored, prefix):
                return root.path + stored[len(prefix) :]
        return stored

    def root_of(self, stored: str) -> str | None:
        """The name of the root a stored path is under (None: under none)."""
        for prefix, root in self._prefixes:
            if _under(stored, prefix):
                return root.name
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "roots": {n: r.to_dict() for n, r in sorted(self.roots.items())},
            "history": self.history,
        }


def _parse(doc: Any) -> RootsTable:
    if not isinstance(doc, dict):
        return RootsTable()
    roots = {}
    for name, entry in (doc.get("roots") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            was = [w for w in entry.get("was") or [] if isinstance(w, str)]
            roots[str(name)] = Root(str(name), entry["path"], was)
    history = [h for h in doc.get("history") or [] if isinstance(h, dict)]
    return RootsTable(int(doc.get("version") or 0), roots, history)


class Roots:
    """The roots of one home (``Roots.of(home)``: one cached instance per home and process)."""

    _instances: dict[str, Roots] = {}
    _class_lock = threading.Lock()

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.home = Path(home)
        self.file = self.home / FILE_NAME
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._table = RootsTable()

    @classmethod
    def of(cls, home: str | os.PathLike[str]) -> Roots:
        key = _norm(home)
        with cls._class_lock:
            found = cls._instances.get(key)
            if found is None:
                found = cls._instances[key] = Roots(key)
            return found

    # -- reading -----------------------------------------------------------------------------
    def table(self) -> RootsTable:
        """The current table (re-read when the file changed since the last read)."""
        try:
            st = self.file.stat()
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            with self._lock:
                try:
                    table = _parse(json.loads(self.file.read_text()))
                except FileNotFoundError:
                    table = RootsTable()
                except (OSError, ValueError):  # damaged: paths are used as stored
                    table = RootsTable()
                self._table, self._stamp = table, stamp
        return self._table

    def resolve(self, stored: str) -> str:
        return self.table().resolve(stored)

    def located(self, row: dict[str, Any]) -> dict[str, Any]:
        """A copy of a tile or source row whose ``source`` is where the file is now."""
        src = row.get("source")
        if not isinstance(src, str):
            return dict(row)
        return {**row, "source": self.resolve(src)}

    # -- writing -----------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[RootsTable]:
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.home / "roots.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                table = _parse(json.loads(self.file.read_text()))
            except FileNotFoundError:
                table = RootsTable()
            yield table
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _write(self, table: RootsTable) -> None:
        from lamina.search.segments import write_json_atomic

        table.version += 1
        write_json_atomic(self.file, table.to_dict())
        self._stamp = None  # re-read on the next use

    def declare(self, folder: str | os.PathLike[str], name: str | None = None) -> str:
        """The root holding ``folder``: ``name`` at ``folder`` (declared or checked), else the
        root whose current folder holds it, else a new root named after the folder."""
        path = _norm(folder)
        if name is not None and not ROOT_NAME_RE.match(name):
            raise RootError(f"invalid root name {name!r}: letters, digits, '_', '.', '-' (max 64)")
        with self._locked() as table:
            if name is not None:
                root = table.roots.get(name)
                if root is not None:
                    if root.path != path:
                        raise RootError(
                            f"root {name!r} is another folder; `lamina relocate {name} PATH` "
                            "moves a root"
                        )
                    return name
            else:
                holders = [r for r in table.roots.values() if _under(path, r.path)]
                if holders:
                    return max(holders, key=lambda r: len(r.path)).name
                base = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).name or "root").lstrip("._-")
                base = (base or "root")[:56]
                name, n = base, 1
                while name in table.roots:
                    n += 1
                    name = f"{base}-{n}"
            table.roots[name] = Root(name, path, [])
            table.history.append({"at": _now(), "root": name, "declared": path})
            self._write(table)
            return name

    def relocate(self, name: str, new_path: str | os.PathLike[str]) -> dict[str, Any]:
        """Root ``name`` now lives at ``new_path`` (a folder that exists)."""
        new = _check_folder(new_path)
        with self._locked() as table:
            root = table.roots.get(name)
            if root is None:
                known = ", ".join(sorted(table.roots)) or "none"
                raise RootNotFoundError(f"no root named {name!r} (roots: {known})")
            return self._move(table, root, new)

    def relocate_prefix(
        self, old_path: str | os.PathLike[str], new_path: str | os.PathLike[str]
    ) -> dict[str, Any]:
        """The folder ``old_path`` (a root's folder, or one of a store indexed before roots)
        now lives at ``new_path``."""
        old, new = _norm(old_path), _check_folder(new_path)
        with self._locked() as table:
            for root in table.roots.values():
                if root.path == old or old in root.was:
                    return self._move(table, root, new)
            base = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(old).name or "root").lstrip("._-")
            base = (base or "root")[:56]
            name, n = base, 1
            while name in table.roots:
                n += 1
                name = f"{base}-{n}"
            root = Root(name, old, [])
            table.roots[name] = root
            return self._move(table, root, new)

    def _move(self, table: RootsTable, root: Root, new: str) -> dict[str, Any]:
        old = root.path
        if new != old:
            root.was = [w for w in [*root.was, old] if w != new]
            root.path = new
        table.history.append({"at": _now(), "root": root.name, "from": old, "to": new})
        self._write(table)
        return {"root": root.name, "from": old, "to": new, "version": table.version}


def _check_folder(path: str | os.PathLike[str]) -> str:
    new = _norm(path)
    if not Path(new).is_dir():
        raise RootError(f"{new} is not a folder on the server")
    return new


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


CHECK_LIMIT = 2000
"""How many relocated sources :func:`relocate_sources` looks for at the new place."""


def relocate_sources(
    home: str | os.PathLike[str],
    to: str | os.PathLike[str],
    *,
    root: str | None = None,
    old: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Move root ``root`` (or the folder ``old``) to the folder ``to``, for every collection
    of the home; a metadata change: no segment is written, nothing re-embedded.

    Returns the root's name, version, how many stored sources are under it, and of up to
    :data:`CHECK_LIMIT` of them how many are at the new place (``found``) with a few that are
    not (``missing``, relative to the root). Raises :class:`RootNotFoundError` for an unknown
    root, or a folder no root and no stored source is under; :class:`RootError` when ``to``
    is not a folder."""
    from lamina.search.store import Store

    if (root is None) == (old is None):
        raise RootError("give a root name or the old folder (--from), not both")
    roots = Roots.of(home)
    table = roots.table()
    if root is not None:
        entry = table.roots.get(root)
        if entry is None:
            known = ", ".join(sorted(table.roots)) or "none"
            raise RootNotFoundError(f"no root named {root!r} (roots: {known})")
        prefixes = [entry.path, *entry.was]
    else:
        prefix = _norm(old or "")
        entry = next((r for r in table.roots.values() if r.path == prefix or prefix in r.was), None)
        prefixes = [entry.path, *entry.was] if entry is not None else [prefix]
    _check_folder(to)
    store = Store(home)
    stored: list[str] = []
    for name in store.names():
        for paths in store.collection(name).committed_sources().values():
            stored.extend(p for p in paths if any(_under(p, f) for f in prefixes))
    if not stored and entry is None:
        raise RootNotFoundError(
            f"no root is at {prefixes[0]} and no indexed source is under it; "
            "`lamina relocate --list` shows the roots"
        )
    done = roots.relocate(root, to) if root is not None else roots.relocate_prefix(prefixes[0], to)
    now = roots.table()
    checked = sorted(set(stored))[:CHECK_LIMIT]
    missing = [p for p in checked if not os.path.isfile(now.resolve(p))]
    new_root = now.roots[done["root"]].path
    return {
        "root": done["root"],
        "version": done["version"],
        "sources": len(stored),
        "checked": len(checked),
        "found": len(checked) - len(missing),
        "missing": [os.path.relpath(now.resolve(p), new_root) for p in missing[:10]],
    }


def list_roots(home: str | os.PathLike[str]) -> dict[str, Any]:
    """The home's roots: name, whether its folder exists, how many folders it was at before,
    and the version of the table."""
    table = Roots.of(home).table()
    return {
        "version": table.version,
        "roots": [
            {
                "name": r.name,
                "present": Path(r.path).is_dir(),
                "moves": len(r.was),
            }
            for r in sorted(table.roots.values(), key=lambda r: r.name)
        ],
    }
