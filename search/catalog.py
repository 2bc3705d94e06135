"""The catalog: cohorts (versioned tile sets) and export records, as immutable files in the home.

Every process on the home -- any number of servers (replicas on several machines sharing the
home), and CLI commands while they run -- reads and writes it at once; no process owns it.

Layout under ``<home>/catalog/``:

- ``cohorts/<name>/v<N>.parquet``: version N of a cohort. Its members (``tile_id`` int64,
  ascending; ``score`` float32, null for none) and, in the Parquet file's key-value metadata
  under ``lamina.cohort``, its record as JSON (collection, snapshot, encoder fingerprint,
  definition, created_at, n_tiles, n_sources, n_patients). Name and version come from the path.
- ``exports/<id>.json``: one export record.
- ``locks/cohort-<name>.lock``: the flock that numbers the versions of one name and deletes it.
- ``tmp/``: files being written; ``trash/``: deleted cohorts on their way out.

Method and invariants.

- Publication: a file is written whole under ``tmp/`` and fsynced, then hard-linked to its
  final name with ``os.link``, which fails when the name exists (the exclusive create that
  holds on NFS as on local filesystems), then the directory is fsynced. So a version number or
  an export id is taken by exactly one writer, and no reader ever sees a partial file. Files
  are never changed after publication, so readers take no lock.
- Versions are dense: a writer takes the name's flock, lists the versions, links
  ``v<max+1>`` and lets go (milliseconds; the members were computed and written before).
  Without working locks the link still refuses a number already taken.
- Delete: under the name's flock the cohort's directory is renamed into ``trash/`` (readers
  see every version or none), then removed; the next cohort of that name starts at version 1.
- Failures: a full disk is :class:`DiskFullError` and another write failure
  :class:`StoreIOError`, with nothing published and the temporary file removed. A published
  file that cannot be read is :class:`CatalogDamagedError` naming it (relative to the home);
  the other cohorts and versions stay usable. Temporary files older than an hour (a writer
  killed mid-write) and leftover trash are removed when a catalog is opened.
- An earlier version's ``catalog.duckdb`` is moved in on first open
  (:mod:`search.catalog_legacy`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lamina.search.catalog_legacy import LEGACY_FILE, migrate
from lamina.search.errors import (
    CatalogDamagedError,
    CohortNotFoundError,
    InvalidQueryError,
    StoreError,
    io_failure,
)
from lamina.search.segments import fsync_dir
from lamina.search.store import NAME_RE

CATALOG_DIR = "catalog"
RECORD_KEY = b"lamina.cohort"
STALE_TMP_S = 3600.0
_VERSION_RE = re.compile(r"^v([1-9][0-9]{0,8})\.parquet$")
_EXPORT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_RECORD_FIELDS = (
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


class Catalog:
    """Cohorts and export records of one Lamina home. Use as a context manager (it holds no
    resources; ``close`` exists for symmetry with callers that keep one for their life)."""

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.home = Path(home)
        self.root = self.home / CATALOG_DIR
        try:
            for sub in ("cohorts", "exports", "locks", "tmp", "trash"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise io_failure("creating the catalog", exc) from None
        self._sweep()
        if (self.home / LEGACY_FILE).exists():
            with self._flock("migrate"):
                migrate(self.home, self._put_cohort_version, self._put_export)

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- cohorts ----------------------------------------------------------------------------
    def add_cohort(
        self,
        record: dict[str, Any],
        tile_ids: Sequence[int] | np.ndarray,
        scores: Sequence[float] | np.ndarray | None,
    ) -> dict[str, Any]:
        """Store a new version of cohort ``record['name']``; returns the stored record."""
        name = str(record["name"])
        if not NAME_RE.match(name):
            raise InvalidQueryError(f"invalid cohort name {name!r}: letters, digits, '_', '.', '-'")
        body = {k: record.get(k) for k in _RECORD_FIELDS}
        body["created_at"] = record.get("created_at") or now_utc()
        body["definition"] = record.get("definition") or {}
        tmp = self._stage(_members_file(body, tile_ids, scores), f"cohort {name!r}")
        try:
            with self._flock(f"cohort-{name}"):
                folder = self.root / "cohorts" / name
                self._mkdir(folder, f"cohort {name!r}")
                version = max(self._versions(name), default=0) + 1
                while not self._link(tmp, folder / f"v{version}.parquet", f"cohort {name!r}"):
                    version += 1  # only when the lock did not hold (a filesystem without flock)
                versions = self._versions(name)
        finally:
            tmp.unlink(missing_ok=True)
        return _record(name, version, json.loads(json.dumps(body, default=_plain)), versions)

    def cohorts(self) -> list[dict[str, Any]]:
        """The latest version of every cohort, by name (with ``n_versions``)."""
        out = []
        for name in sorted(self._listdir(self.root / "cohorts")):
            if not NAME_RE.match(name):
                continue
            versions = self._versions(name)
            if not versions:
                continue
            try:
                rec = self._read_record(name, versions[-1], versions)
            except CohortNotFoundError:  # deleted while we listed
                continue
            rec.pop("versions")
            rec["n_versions"] = len(versions)
            out.append(rec)
        return out

    def cohort(self, name: str, version: int | None = None) -> dict[str, Any]:
        """One version of a cohort (the latest by default), with ``versions``."""
        versions = self._versions(name)
        if not versions or (version is not None and int(version) not in versions):
            raise self._not_found(name, version)
        return self._read_record(name, versions[-1] if version is None else int(version), versions)

    def versions(self, name: str) -> list[int]:
        return self._versions(name)

    def members(self, name: str, version: int) -> tuple[list[int], list[float | None]]:
        """Tile ids (ascending) and scores of one cohort version."""
        ids, scores = self.member_arrays(name, version)
        return ids.tolist(), [None if s != s else float(s) for s in scores.tolist()]

    def member_arrays(self, name: str, version: int) -> tuple[np.ndarray, np.ndarray]:
        """Tile ids (int64, ascending) and scores (float64, NaN for none) of one version."""
        path = self._version_path(name, int(version))
        try:
            with open(path, "rb") as f:
                table = pq.read_table(f)
            ids = table.column("tile_id").to_numpy().astype(np.int64)
            scores = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
        except FileNotFoundError:
            raise self._not_found(name, version) from None
        except (OSError, pa.ArrowException, KeyError) as exc:
            raise self._damaged(path, exc) from None
        return ids, scores

    def delete_cohort(self, name: str) -> int:
        """Delete every version of ``name``; returns how many versions there were."""
        if not NAME_RE.match(name):
            raise CohortNotFoundError(f"no cohort {name!r}")
        with self._flock(f"cohort-{name}"):
            n = len(self._versions(name))
            if not n:
                raise CohortNotFoundError(f"no cohort {name!r}")
            gone = self.root / "trash" / f"{name}.{os.getpid()}.{secrets.token_hex(4)}"
            try:
                os.rename(self.root / "cohorts" / name, gone)
                fsync_dir(self.root / "cohorts")
            except OSError as exc:
                raise io_failure(f"deleting cohort {name!r} from the catalog", exc) from None
        shutil.rmtree(gone, ignore_errors=True)
        return n

    # -- exports ----------------------------------------------------------------------------
    def record_export(self, record: dict[str, Any]) -> dict[str, Any]:
        """Store one export record (its ``id`` is its file name); returns ``record``."""
        row = dict(record)
        row.setdefault("created_at", now_utc())
        if not self._put_export(row):
            raise StoreError(f"an export record with id {row['id']!r} exists already")
        return record

    def exports(self, collection: str | None = None) -> list[dict[str, Any]]:
        """Export records (of one collection, given), oldest first."""
        out = []
        for entry in self._listdir(self.root / "exports"):
            if not entry.endswith(".json"):
                continue
            path = self.root / "exports" / entry
            try:
                rec = json.loads(path.read_bytes())
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                raise self._damaged(path, exc) from None
            if collection is None or rec.get("collection") == collection:
                out.append(rec)
        out.sort(key=lambda r: (str(r.get("created_at")), str(r.get("id"))))
        return out

    # -- files ------------------------------------------------------------------------------
    def _versions(self, name: str) -> list[int]:
        if not NAME_RE.match(name):
            return []
        found = (_VERSION_RE.match(e) for e in self._listdir(self.root / "cohorts" / name))
        return sorted(int(m.group(1)) for m in found if m)

    def _version_path(self, name: str, version: int) -> Path:
        if not NAME_RE.match(name):
            raise self._not_found(name, version)
        return self.root / "cohorts" / name / f"v{version}.parquet"

    def _read_record(self, name: str, version: int, versions: list[int]) -> dict[str, Any]:
        path = self._version_path(name, version)
        try:
            with open(path, "rb") as f:
                meta = pq.read_schema(f).metadata or {}
            body = json.loads(meta[RECORD_KEY])
            if not isinstance(body, dict):
                raise ValueError("the record is not a JSON object")
        except FileNotFoundError:
            raise self._not_found(name, version) from None
        except (OSError, pa.ArrowException, KeyError, ValueError) as exc:
            raise self._damaged(path, exc) from None
        return _record(name, version, body, versions)

    def _put_cohort_version(
        self,
        name: str,
        version: int,
        body: dict[str, Any],
        tile_ids: np.ndarray,
        scores: np.ndarray | None,
    ) -> bool:
        """Publish exactly version ``version`` of ``name`` (migration); False if it exists."""
        folder = self.root / "cohorts" / name
        if (folder / f"v{version}.parquet").exists():
            return False
        tmp = self._stage(_members_file(body, tile_ids, scores), f"cohort {name!r}")
        try:
            with self._flock(f"cohort-{name}"):
                self._mkdir(folder, f"cohort {name!r}")
                return self._link(tmp, folder / f"v{version}.parquet", f"cohort {name!r}")
        finally:
            tmp.unlink(missing_ok=True)

    def _put_export(self, row: dict[str, Any]) -> bool:
        rid = str(row.get("id") or "")
        if not _EXPORT_ID_RE.match(rid):
            raise StoreError(f"invalid export id {rid!r}")
        data = json.dumps(row, sort_keys=True, indent=1, default=_plain).encode()
        tmp = self._stage(data, "an export record")
        try:
            return self._link(tmp, self.root / "exports" / f"{rid}.json", "an export record")
        finally:
            tmp.unlink(missing_ok=True)

    def _stage(self, data: bytes, what: str) -> Path:
        """``data`` written whole and fsynced under ``tmp/``; returns the temporary path."""
        tmp = self.root / "tmp" / f".{os.getpid()}.{secrets.token_hex(6)}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise io_failure(f"writing the catalog ({what})", exc) from None
        return tmp

    def _link(self, tmp: Path, final: Path, what: str) -> bool:
        """Publish ``tmp`` as ``final`` unless ``final`` exists (then False)."""
        try:
            os.link(tmp, final)
            fsync_dir(final.parent)
        except FileExistsError:
            return False
        except OSError as exc:
            raise io_failure(f"writing the catalog ({what})", exc) from None
        return True

    def _mkdir(self, folder: Path, what: str) -> None:
        try:
            folder.mkdir(exist_ok=True)
        except OSError as exc:
            raise io_failure(f"writing the catalog ({what})", exc) from None

    def _listdir(self, folder: Path) -> list[str]:
        try:
            return os.listdir(folder)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise io_failure("reading the catalog", exc) from None

    @contextmanager
    def _flock(self, key: str) -> Iterator[None]:
        import fcntl

        try:
            fd = os.open(self.root / "locks" / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise io_failure("locking the catalog", exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _sweep(self) -> None:
        """Remove what killed writers left: old temporary files, trash."""
        cutoff = time.time() - STALE_TMP_S
        for entry in self._listdir(self.root / "tmp"):
            path = self.root / "tmp" / entry
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass
        for entry in self._listdir(self.root / "trash"):
            shutil.rmtree(self.root / "trash" / entry, ignore_errors=True)

    def _not_found(self, name: str, version: int | None) -> CohortNotFoundError:
        names = (n for n in self._listdir(self.root / "cohorts") if self._versions(n))
        known = ", ".join(sorted(names)) or "none"
        which = f"{name!r}" + ("" if version is None else f" version {version}")
        return CohortNotFoundError(f"no cohort {which} (cohorts: {known})")

    def _damaged(self, path: Path, exc: BaseException) -> CatalogDamagedError:
        where = path.relative_to(self.home).as_posix()
        reason = str(exc).replace(str(self.home) + os.sep, "").splitlines()[0] if str(exc) else ""
        return CatalogDamagedError(
            f"the catalog file {where} cannot be read ({reason or type(exc).__name__}); move it "
            "aside: the other cohorts, versions and export records stay usable"
        )


def _members_file(
    body: dict[str, Any],
    tile_ids: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray | None,
) -> bytes:
    """One version as Parquet bytes: members sorted by tile id, the record in the metadata."""
    ids = np.asarray(tile_ids, dtype=np.int64).reshape(-1)
    order = np.argsort(ids, kind="stable")
    if scores is None:
        score_col = pa.nulls(len(ids), pa.float32())
    else:
        sc = np.asarray(scores, dtype=np.float64).reshape(-1)[order]
        score_col = pa.array(sc.astype(np.float32), pa.float32(), mask=np.isnan(sc))
    table = pa.table({"tile_id": pa.array(ids[order], pa.int64()), "score": score_col})
    meta = json.dumps(body, sort_keys=True, default=_plain).encode()
    table = table.replace_schema_metadata({RECORD_KEY: meta})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue())


def _record(name: str, version: int, body: dict[str, Any], versions: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "version": int(version)}
    for k in _RECORD_FIELDS:
        out[k] = body.get(k)
    out["definition"] = out["definition"] or {}
    for k in ("n_tiles", "n_sources"):
        out[k] = int(out[k] or 0)
    if out["n_patients"] is not None:
        out["n_patients"] = int(out["n_patients"])
    out["versions"] = list(versions) or [int(version)]
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")
