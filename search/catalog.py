"""The catalog: mutable state (cohorts and their members, export records) in one DuckDB file.

``<home>/catalog.duckdb`` is read and written through SQLAlchemy Core (the ``duckdb-engine``
dialect); bulk member rows go through the same DuckDB connection as Arrow tables. DuckDB lets one process hold a database file at a time, so the catalog has one
owner: the server while it runs (it opens the catalog once and keeps it for its life), the
CLI otherwise (one ``with Catalog(home) as catalog:`` per command). A second process that
tries to open it gets :class:`CatalogLockedError`, which tells the user to go through the
server (``--url`` / ``LAMINA_URL``).

Within the owning process the catalog is thread-safe: one connection, one lock.

Durability. A new catalog is created whole under a temporary name (tables created,
checkpointed, fsynced) and renamed into place, so a full disk never leaves a truncated,
unopenable ``catalog.duckdb``. Writes then go through DuckDB's write-ahead log: a transaction
that cannot be written (no space) is rolled back and reported as :class:`DiskFullError`; the
catalog keeps its previous content. A catalog file too short to hold any data (an interrupted
creation by an older version) with no write-ahead log is set aside as
``catalog.duckdb.broken-<time>`` and replaced by an empty one; any other unreadable catalog is
reported (:class:`CatalogDamagedError`), never silently replaced.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from search.errors import (
    CatalogDamagedError,
    CatalogLockedError,
    CohortNotFoundError,
    DiskFullError,
    StoreError,
    StoreIOError,
)

CATALOG_FILE = "catalog.duckdb"
EMPTY_MAX_BYTES = 3 * 4096  # DuckDB's headers: a file this short holds no data

metadata = sa.MetaData()

cohorts_table = sa.Table(
    "cohorts",
    metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("collection", sa.String, nullable=False),
    sa.Column("snapshot", sa.String, nullable=False),
    sa.Column("encoder", sa.String, nullable=False),
    sa.Column("definition", sa.String, nullable=False),  # JSON text (sorted keys)
    sa.Column("created_at", sa.String, nullable=False),
    sa.Column("n_tiles", sa.BigInteger, nullable=False),
    sa.Column("n_sources", sa.BigInteger, nullable=False),
    sa.Column("n_patients", sa.BigInteger, nullable=True),
)

members_table = sa.Table(
    "cohort_members",
    metadata,
    sa.Column("name", sa.String, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("tile_id", sa.BigInteger, nullable=False),
    sa.Column("score", sa.Float, nullable=True),
)

exports_table = sa.Table(
    "exports",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("collection", sa.String, nullable=False),
    sa.Column("cohort", sa.String, nullable=True),
    sa.Column("cohort_version", sa.Integer, nullable=True),
    sa.Column("args", sa.String, nullable=False),  # JSON text
    sa.Column("snapshot", sa.String, nullable=False),
    sa.Column("encoder", sa.String, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String, nullable=True),
    sa.Column("path", sa.String, nullable=True),
    sa.Column("created_at", sa.String, nullable=False),
)

_COHORT_FIELDS = (
    "name",
    "version",
    "collection",
    "snapshot",
    "encoder",
    "definition",
    "created_at",
    "n_tiles",
    "n_sources",
    "n_patients",
)


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


class Catalog:
    """Cohorts and export records of one Lamina home. Use as a context manager."""

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.home = Path(home)
        self.path = self.home / CATALOG_FILE
        self.home.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn: sa.Connection | None = None
        _create_if_missing(self.path)
        try:
            self._engine, self._conn = _connect(self.path)
        except CatalogDamagedError:
            if not _set_aside_if_empty(self.path):
                raise
            _create_if_missing(self.path)
            self._engine, self._conn = _connect(self.path)
        with self._tx() as conn:
            metadata.create_all(conn)

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                self._engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        """One transaction on the catalog's single connection, serialised by a lock."""
        with self._lock:
            if self._conn is None:
                raise StoreError(f"catalog {self.path} is closed")
            if self._conn.in_transaction():
                self._conn.rollback()
            try:
                with self._conn.begin():
                    yield self._conn
            except sa.exc.DBAPIError as exc:
                raise _write_error(self.path, exc) from None

    # -- cohorts ----------------------------------------------------------------------------
    def add_cohort(
        self,
        record: dict[str, Any],
        tile_ids: Sequence[int] | np.ndarray,
        scores: Sequence[float] | np.ndarray | None,
    ) -> dict[str, Any]:
        """Store a new version of cohort ``record['name']``; returns the stored record.

        Members go in with one columnar insert (an Arrow table scanned by DuckDB) in the same
        transaction as the cohort row."""
        name = record["name"]
        with self._tx() as conn:
            latest = conn.execute(
                sa.select(sa.func.max(cohorts_table.c.version)).where(cohorts_table.c.name == name)
            ).scalar()
            version = int(latest or 0) + 1
            row = {k: record.get(k) for k in _COHORT_FIELDS}
            row.update(
                version=version,
                created_at=record.get("created_at") or now_utc(),
                definition=json.dumps(record.get("definition") or {}, sort_keys=True),
            )
            conn.execute(sa.insert(cohorts_table), [row])
            if len(tile_ids):
                _bulk_insert_members(conn, name, version, tile_ids, scores)
        return self.cohort(name, version)

    def cohorts(self) -> list[dict[str, Any]]:
        """The latest version of every cohort, by name."""
        latest = (
            sa.select(cohorts_table.c.name, sa.func.max(cohorts_table.c.version).label("v"))
            .group_by(cohorts_table.c.name)
            .subquery()
        )
        q = (
            sa.select(cohorts_table)
            .join(
                latest,
                sa.and_(
                    cohorts_table.c.name == latest.c.name, cohorts_table.c.version == latest.c.v
                ),
            )
            .order_by(cohorts_table.c.name)
        )
        with self._tx() as conn:
            rows = conn.execute(q).mappings().all()
        out = [_cohort_dict(r) for r in rows]
        versions = self._version_counts()
        for c in out:
            c["n_versions"] = versions.get(c["name"], 1)
        return out

    def _version_counts(self) -> dict[str, int]:
        q = sa.select(cohorts_table.c.name, sa.func.count()).group_by(cohorts_table.c.name)
        with self._tx() as conn:
            return {str(n): int(c) for n, c in conn.execute(q).all()}

    def cohort(self, name: str, version: int | None = None) -> dict[str, Any]:
        """One version of a cohort (the latest by default)."""
        q = sa.select(cohorts_table).where(cohorts_table.c.name == name)
        q = (
            q.where(cohorts_table.c.version == version)
            if version is not None
            else q.order_by(cohorts_table.c.version.desc()).limit(1)
        )
        with self._tx() as conn:
            row = conn.execute(q).mappings().first()
        if row is None:
            known = ", ".join(c["name"] for c in self.cohorts()) or "none"
            which = f"{name!r}" + ("" if version is None else f" version {version}")
            raise CohortNotFoundError(f"no cohort {which} (cohorts: {known})")
        out = _cohort_dict(row)
        out["versions"] = self.versions(name)
        return out

    def versions(self, name: str) -> list[int]:
        q = (
            sa.select(cohorts_table.c.version)
            .where(cohorts_table.c.name == name)
            .order_by(cohorts_table.c.version)
        )
        with self._tx() as conn:
            return [int(v) for v in conn.execute(q).scalars()]

    def members(self, name: str, version: int) -> tuple[list[int], list[float | None]]:
        """Tile ids (ascending) and scores of one cohort version."""
        ids, scores = self.member_arrays(name, version)
        return ids.tolist(), [None if s != s else float(s) for s in scores.tolist()]

    def member_arrays(self, name: str, version: int) -> tuple[np.ndarray, np.ndarray]:
        """Tile ids (int64, ascending) and scores (float64, NaN for none) of one version."""
        with self._tx() as conn:
            raw = _duck(conn)
            table = raw.sql(
                "SELECT tile_id, score FROM cohort_members WHERE name = ? AND version = ? "
                "ORDER BY tile_id",
                params=[name, int(version)],
            ).to_arrow_table()
        ids = table.column("tile_id").to_numpy().astype(np.int64)
        scores = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
        return ids, scores

    def delete_cohort(self, name: str) -> int:
        """Delete every version of ``name``; returns how many versions there were."""
        with self._tx() as conn:
            n = conn.execute(sa.delete(cohorts_table).where(cohorts_table.c.name == name))
            conn.execute(sa.delete(members_table).where(members_table.c.name == name))
        if not n.rowcount:
            raise CohortNotFoundError(f"no cohort {name!r}")
        return int(n.rowcount)

    # -- exports ----------------------------------------------------------------------------
    def record_export(self, record: dict[str, Any]) -> dict[str, Any]:
        row = dict(record)
        row["args"] = json.dumps(row.get("args") or {}, sort_keys=True)
        row.setdefault("created_at", now_utc())
        with self._tx() as conn:
            conn.execute(sa.insert(exports_table), [row])
        return record

    def exports(self, collection: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(exports_table).order_by(exports_table.c.created_at, exports_table.c.id)
        if collection is not None:
            q = q.where(exports_table.c.collection == collection)
        with self._tx() as conn:
            rows = conn.execute(q).mappings().all()
        out = []
        for r in rows:
            d = dict(r)
            d["args"] = json.loads(d["args"])
            out.append(d)
        return out


def _connect(path: Path) -> tuple[sa.Engine, sa.Connection]:
    """An engine and its one connection on ``path``; lock and damage become clear errors."""
    engine = sa.create_engine(f"duckdb:///{path}", poolclass=sa.pool.StaticPool)
    try:
        return engine, engine.connect()
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        if _is_lock_error(exc):
            raise CatalogLockedError(
                f"the catalog {path} is held by another process (a running "
                "`lamina serve`, or another command). Talk to the server with "
                "--url http://HOST:PORT or LAMINA_URL instead of opening the store."
            ) from None
        text = _without_home(str(exc.orig), path)
        if "No space left" in text:
            raise DiskFullError(f"opening the catalog {path.name} failed: {text}") from None
        raise CatalogDamagedError(
            f"the catalog {path.name} cannot be opened ({text}). Cohorts and export records are "
            f"kept there; the collections are not affected. Move the file aside to start an "
            "empty catalog."
        ) from None


def _create_if_missing(path: Path) -> None:
    """Create an empty catalog at ``path`` atomically: tables made in a temporary file that is
    checkpointed, fsynced and renamed into place (under an flock, so two processes creating it
    at once make one). A failure (full disk) leaves no file at ``path``."""
    if path.exists():
        return
    import fcntl

    fd = os.open(path.with_name(f".{path.name}.create.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if path.exists():
            return
        engine = sa.create_engine(f"duckdb:///{tmp}", poolclass=sa.pool.StaticPool)
        try:
            with engine.begin() as conn:
                metadata.create_all(conn)
            with engine.connect() as conn:
                conn.exec_driver_sql("CHECKPOINT")
        finally:
            engine.dispose()
        for name in (tmp, tmp.with_name(tmp.name + ".wal")):
            if name.exists():
                wfd = os.open(name, os.O_RDONLY)
                try:
                    os.fsync(wfd)
                finally:
                    os.close(wfd)
        if tmp.with_name(tmp.name + ".wal").exists():  # the checkpoint emptied it
            tmp.with_name(tmp.name + ".wal").unlink()
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except sa.exc.DBAPIError as exc:
        raise _write_error(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)
        os.close(fd)


def _set_aside_if_empty(path: Path) -> bool:
    """Rename an unopenable catalog that cannot hold any data (shorter than DuckDB's headers,
    no write-ahead log) to ``<name>.broken-<time>``; True if done."""
    wal = path.with_name(path.name + ".wal")
    try:
        if path.stat().st_size > EMPTY_MAX_BYTES or (wal.exists() and wal.stat().st_size > 0):
            return False
        os.replace(path, path.with_name(f"{path.name}.broken-{int(time.time())}"))
        wal.unlink(missing_ok=True)
    except OSError:
        return False
    return True


def _write_error(path: Path, exc: sa.exc.DBAPIError) -> StoreError:
    """A catalog write that failed: the transaction was rolled back, nothing was saved."""
    text = _without_home(str(exc.orig), path)
    what = f"writing the catalog {path.name} failed; nothing was saved ({text.splitlines()[0]})"
    if "No space left" in text:
        return DiskFullError(what + "; free space and run it again")
    if "IO Error" in text or "Could not write" in text:
        return StoreIOError(what)
    return StoreError(what)


def _without_home(text: str, path: Path) -> str:
    """A DuckDB message with the home's location left out (errors never show server paths)."""
    return text.replace(str(path.parent) + os.sep, "")


def _duck(conn: sa.Connection) -> Any:
    """The DuckDB connection under a SQLAlchemy connection (same transaction)."""
    raw = conn.connection.driver_connection
    if raw is None:
        raise StoreError("the catalog connection is closed")
    return raw


def _bulk_insert_members(
    conn: sa.Connection,
    name: str,
    version: int,
    tile_ids: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray | None,
) -> None:
    """INSERT ... SELECT from an Arrow table on the catalog's own DuckDB connection (so it is
    part of the open transaction); 100k members take milliseconds, not an executemany."""
    ids = np.asarray(tile_ids, dtype=np.int64)
    n = len(ids)
    score_arr = (
        pa.nulls(n, pa.float64())
        if scores is None
        else pa.array(np.asarray(scores, dtype=np.float64), pa.float64())
    )
    table = pa.table(
        {
            "name": pa.repeat(pa.scalar(name, pa.string()), n),
            "version": pa.array(np.full(n, int(version), np.int32)),
            "tile_id": pa.array(ids),
            "score": score_arr,
        }
    )
    raw = _duck(conn)
    view_name = f"_members_{secrets.token_hex(4)}"
    raw.register(view_name, table)
    try:
        raw.execute(
            f"INSERT INTO cohort_members (name, version, tile_id, score) "
            f"SELECT name, version, tile_id, score FROM {view_name}"
        )
    finally:
        raw.unregister(view_name)


def _cohort_dict(row: Any) -> dict[str, Any]:
    d = {k: row[k] for k in _COHORT_FIELDS}
    d["definition"] = json.loads(d["definition"])
    for k in ("version", "n_tiles", "n_sources"):
        d[k] = int(d[k])
    if d["n_patients"] is not None:
        d["n_patients"] = int(d["n_patients"])
    return d
