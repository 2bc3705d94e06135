"""The catalog of earlier versions (``<home>/catalog.duckdb``), read once to move its content
into the file catalog (:mod:`search.catalog`).

That file was read through SQLAlchemy Core on the ``duckdb-engine`` dialect: tables
``cohorts`` (name, version, record columns), ``cohort_members`` (name, version, tile_id,
score) and ``exports``. :func:`migrate` copies every cohort version (same name, same version
number, same members and scores) and every export record into the file catalog, then renames
the DuckDB file ``catalog.duckdb.migrated-<time>``. It runs under an flock on
``catalog/locks/migrate.lock`` so that of several processes opening the home at once one
migrates and the others wait; a version or record already present (a migration interrupted
by a crash) is left as it is, so running it again finishes the job without duplicates.

Damage is handled as before: a ``catalog.duckdb`` too short to hold any data with no
write-ahead log (what a full disk left behind in versions that did not create it atomically)
is set aside as ``catalog.duckdb.broken-<time>``; any other unreadable file is reported
(:class:`CatalogDamagedError`) and left untouched. A DuckDB file still held by a running
server of an earlier version is :class:`CatalogLockedError`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lamina.search.errors import CatalogDamagedError, CatalogLockedError, DiskFullError

LEGACY_FILE = "catalog.duckdb"
EMPTY_MAX_BYTES = 3 * 4096  # DuckDB's headers: a file this short holds no data

# (name, version, record without name/version, tile ids, scores) -> whether it was written
PutCohort = Callable[[str, int, dict[str, Any], np.ndarray, np.ndarray | None], bool]
PutExport = Callable[[dict[str, Any]], bool]


def migrate(home: Path, put_cohort: PutCohort, put_export: PutExport) -> int:
    """Move ``home/catalog.duckdb`` into the file catalog; returns the cohort versions copied
    (0 when there is no legacy file). The caller holds the migration lock."""
    legacy = home / LEGACY_FILE
    if not legacy.exists():
        return 0
    import sqlalchemy as sa

    try:
        engine, conn = _connect(legacy)
    except CatalogDamagedError:
        if _set_aside_if_empty(legacy):
            return 0
        raise
    copied = 0
    try:
        tables = set(sa.inspect(conn).get_table_names())
        if "cohorts" in tables:
            rows = conn.exec_driver_sql(
                "SELECT name, version, collection, snapshot, encoder, definition, created_at, "
                "n_tiles, n_sources, n_patients FROM cohorts ORDER BY name, version"
            ).mappings()
            for row in list(rows):
                record = {k: row[k] for k in row if k not in ("name", "version")}
                record["definition"] = json.loads(record["definition"] or "{}")
                raw = conn.connection.driver_connection
                table = raw.sql(  # type: ignore[union-attr]
                    "SELECT tile_id, score FROM cohort_members WHERE name = ? AND version = ? "
                    "ORDER BY tile_id",
                    params=[row["name"], int(row["version"])],
                ).to_arrow_table()
                ids = table.column("tile_id").to_numpy().astype(np.int64)
                scores = table.column("score").to_numpy(zero_copy_only=False)
                scores = scores.astype(np.float64)  # NaN where none
                copied += put_cohort(str(row["name"]), int(row["version"]), record, ids, scores)
        if "exports" in tables:
            for row in list(conn.exec_driver_sql("SELECT * FROM exports").mappings()):
                rec = dict(row)
                rec["args"] = json.loads(rec.get("args") or "{}")
                put_export(rec)
    finally:
        conn.close()
        engine.dispose()
    stamp = int(time.time())
    wal = legacy.with_name(legacy.name + ".wal")
    os.replace(legacy, legacy.with_name(f"{legacy.name}.migrated-{stamp}"))
    if wal.exists():
        os.replace(wal, wal.with_name(f"{legacy.name}.migrated-{stamp}.wal"))
    return copied


def _connect(path: Path) -> tuple[Any, Any]:
    """An engine and its one connection on ``path``; lock and damage become clear errors."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"duckdb:///{path}", poolclass=sa.pool.StaticPool)
    try:
        return engine, engine.connect()
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        text = str(exc.orig).replace(str(path.parent) + os.sep, "")
        lowered = text.lower()
        if "lock" in lowered and ("conflicting" in lowered or "could not set" in lowered):
            raise CatalogLockedError(
                f"the catalog {path.name} of an earlier version is held by another process "
                "(a running `lamina serve` of that version); stop it once so its cohorts can "
                "move to the new catalog, which every process can use at once"
            ) from None
        if "No space left" in text:
            raise DiskFullError(f"opening the catalog {path.name} failed: {text}") from None
        raise CatalogDamagedError(
            f"the catalog {path.name} cannot be opened ({text}). Cohorts and export records are "
            f"kept there; the collections are not affected. Move the file aside to start an "
            "empty catalog."
        ) from None


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
