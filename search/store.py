"""A Lamina home: collections, each bound to one encoder fingerprint, made of segments.

Layout::

    <home>/collections/<name>/collection.json    encoder key + fingerprint, dim, tile_px, mpp
    <home>/collections/<name>/segments/<id>/     committed, immutable segments
    <home>/collections/<name>/runs/<run>.json    one record per ingest run (counts, failures)
    <home>/collections/<name>/index/             derived FAISS indexes (rebuildable)
    <home>/collections/<name>/next_tile_id       tile id counter (updated under ids.lock)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from lamina.search import segments as segments_mod
from lamina.search.errors import (
    CollectionDamagedError,
    CollectionExistsError,
    CollectionNotFoundError,
    EncoderMismatchError,
)
from lamina.search.segments import (
    SegmentInfo,
    SegmentWriter,
    committed_source_ids,
    list_segments,
    list_segments_checked,
    remove_stale,
    write_json_atomic,
)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HOME_ENV = "LAMINA_HOME"
DEFAULT_HOME = "lamina-data"


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME)


def snapshot_id_of(segment_ids: list[str]) -> str:
    """A snapshot is the set of committed segments; its id is a short hash of their ids."""
    if not segment_ids:
        return "empty"
    h = hashlib.sha256("\n".join(sorted(segment_ids)).encode()).hexdigest()[:12]
    return f"{len(segment_ids)}-{h}"


_MAX_ID_CACHE: dict[Path, int] = {}


def _max_tile_id(path: Path, info: SegmentInfo | None) -> int:
    """Largest tile id of a segment directory (-1 if none or unreadable): recorded in
    ``segment.json``, else read once from ``tiles.parquet``."""
    if info is not None and info.tile_id_range is not None:
        return info.tile_id_range[1]
    hit = _MAX_ID_CACHE.get(path)
    if hit is not None:
        return hit
    try:
        ids = pq.read_table(path / "tiles.parquet", columns=["tile_id"]).column("tile_id")
        top = pc.max(ids).as_py()
        out = -1 if top is None else int(top)
    except Exception:  # noqa: BLE001 - a damaged file: its ids are unknown
        return -1
    _MAX_ID_CACHE[path] = out
    return out


def next_free_tile_id(segments_dir: Path) -> int:
    """1 + the largest tile id of every committed segment directory, damaged ones included
    (replaced and retired ones hold no id that a visible segment does not)."""
    if not segments_dir.is_dir():
        return 0
    top = -1
    for entry in os.listdir(segments_dir):
        if entry.startswith("."):
            continue
        path = segments_dir / entry
        info = segments_mod._INFO_CACHE.get(path)
        if info is None:
            try:
                info = segments_mod._INFO_CACHE[path] = SegmentInfo.load(path)
            except (OSError, ValueError, KeyError, TypeError):
                info = None
        top = max(top, _max_tile_id(path, info))
    return top + 1


@dataclass(frozen=True)
class Snapshot:
    id: str
    segments: tuple[SegmentInfo, ...]
    damaged: tuple[tuple[str, str], ...] = ()
    """(directory, reason) of entries under ``segments/`` that are not loadable segments."""

    @property
    def n_tiles(self) -> int:
        return sum(s.n_tiles for s in self.segments)

    @property
    def n_sources(self) -> int:
        return sum(s.n_sources for s in self.segments)


_REQUIRED = ("encoder", "fingerprint", "embed_dim")


def seal(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` with its ``checksum`` (``lamina verify`` compares it with the content)."""
    from lamina.search.integrity import meta_checksum

    info["checksum"] = meta_checksum(info)
    return info


class Collection:
    """One vector space: one encoder fingerprint, one dimension, inner product on unit vectors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        info_path = path / "collection.json"
        if not info_path.is_file():
            raise CollectionNotFoundError(
                f"collection {self.name!r} does not exist in {path.parent}"
            )
        try:
            info = json.loads(info_path.read_text())
            if not isinstance(info, dict) or any(k not in info for k in _REQUIRED):
                raise ValueError("fields missing")
            int(info["embed_dim"])
        except (OSError, ValueError, TypeError) as exc:
            raise CollectionDamagedError(
                f"collection {self.name!r}: collection.json is damaged ({type(exc).__name__}: "
                f"{exc}); `lamina verify {self.name}` checks the rest"
            ) from None
        self.info: dict[str, Any] = info

    @property
    def segments_dir(self) -> Path:
        return self.path / "segments"

    @property
    def runs_dir(self) -> Path:
        return self.path / "runs"

    @property
    def index_dir(self) -> Path:
        return self.path / "index"

    @property
    def encoder_key(self) -> str:
        return str(self.info["encoder"])

    @property
    def fingerprint(self) -> str:
        return str(self.info["fingerprint"])

    @property
    def dim(self) -> int:
        return int(self.info["embed_dim"])

    def segments(self) -> list[SegmentInfo]:
        return list_segments(self.segments_dir)

    def snapshot(self) -> Snapshot:
        listed, broken = list_segments_checked(self.segments_dir)
        segs = tuple(listed)
        ids = [s.segment_id for s in segs] + [f"!{d}" for d in sorted(broken)]
        return Snapshot(
            id=snapshot_id_of(ids), segments=segs, damaged=tuple(sorted(broken.items()))
        )

    @property
    def uuid(self) -> str:
        """Identity of this collection (recorded at creation): a collection deleted and created
        again under the same name has another one. Collections created before it was recorded
        get a stable one derived from their name and creation time."""
        recorded = self.info.get("uuid")
        if recorded:
            return str(recorded)
        seed = f"{self.name}\n{self.info.get('created_at', '')}".encode()
        return "legacy-" + hashlib.sha256(seed).hexdigest()[:16]

    def check_fingerprint(self, fingerprint: str) -> None:
        if fingerprint != self.fingerprint:
            raise EncoderMismatchError(
                f"collection {self.name!r} holds vectors of {self.fingerprint}; "
                f"this encoder is {fingerprint}. Use the same encoder and weights, "
                "or index into another collection."
            )

    def cleanup(self) -> list[str]:
        """Remove what interrupted runs left behind (temporary segment directories)."""
        return remove_stale(self.segments_dir)

    def committed_sources(self) -> dict[str, list[str]]:
        return committed_source_ids(self.segments())

    @contextmanager
    def _ids_lock(self) -> Iterator[None]:
        fd = os.open(self.path / "ids.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextmanager
    def ingest_lock(self, on_wait: Any = None) -> Iterator[None]:
        """Hold the collection's ingest lock: one ``lamina index`` writes to a collection at a time.

        A second ingest waits (``on_wait(holder)`` is called once with the holder's description)
        and then sees everything the first committed, so the same file is never indexed twice.
        Searches and servers never take this lock. The kernel releases it if the holder dies.
        """
        path = self.path / "ingest.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                    on_wait(holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode(), 0)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def allocate_tile_ids(self, n: int) -> range:
        """Reserve ``n`` consecutive tile ids (safe across processes; gaps after crashes are fine).

        The first id is ``max(counter, 1 + the largest id of any committed segment)``, read
        under the ids lock, so a lost, stale or garbage ``next_tile_id`` never reuses an id (a
        garbage counter is rewritten)."""
        counter = self.path / "next_tile_id"
        with self._ids_lock():
            try:
                start = int(counter.read_text().strip() or "-1")
            except (OSError, ValueError):
                start = -1  # missing or garbage: derived from the segments alone
            start = max(start, next_free_tile_id(self.segments_dir))
            tmp = counter.with_suffix(f".{os.getpid()}.tmp")
            try:
                tmp.write_text(str(start + n))
                os.replace(tmp, counter)
            except BaseException:  # a full disk leaves the old counter and no temporary file
                tmp.unlink(missing_ok=True)
                raise
        return range(start, start + n)

    @property
    def vector_dtype(self) -> str:
        return str(self.info.get("vector_dtype") or "float32")

    @property
    def index_factory(self) -> str:
        return str(self.info.get("index_factory") or "Flat")

    @property
    def index_params(self) -> dict[str, Any]:
        """Search parameters stored with the collection (``nprobe``, ``ef_search``, ...)."""
        return dict(self.info.get("index_params") or {})

    def writer(self, run_id: str) -> SegmentWriter:
        return SegmentWriter(
            self.segments_dir,
            self.dim,
            self.fingerprint,
            run_id,
            self.allocate_tile_ids,
            dtype=self.vector_dtype,
        )

    def set_index(self, factory: str | None = None, params: dict[str, Any] | None = None) -> None:
        """Store the ANN index factory and/or default search parameters with the collection.

        Vectors are not touched; a changed factory is built from them in the background (by a
        server) or by ``lamina index`` / ``lamina collection build``.
        """
        from lamina.search.index_spec import check_factory
        from lamina.search.params import check_params

        info_path = self.path / "collection.json"
        info = json.loads(info_path.read_text())
        if factory is not None:
            info["index_factory"] = check_factory(factory, self.dim)
        if params:
            merged = dict(info.get("index_params") or {})
            merged.update(check_params(params))
            info["index_params"] = {k: v for k, v in merged.items() if v is not None}
        write_json_atomic(info_path, seal(info))
        self.info = info

    def set_index_factory(self, factory: str) -> None:
        """Search this collection through an index built with ``factory`` from now on."""
        self.set_index(factory=factory)

    def write_run(self, record: dict[str, Any]) -> None:
        self.runs_dir.mkdir(exist_ok=True)
        write_json_atomic(self.runs_dir / f"{record['run_id']}.json", record)

    def runs(self, limit: int = 5) -> list[dict[str, Any]]:
        if not self.runs_dir.is_dir():
            return []
        files = sorted(p for p in self.runs_dir.glob("*.json") if not p.name.startswith("."))
        out = []
        for p in files[-limit:]:
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):  # a damaged run record is skipped
                continue
        return out


class Store:
    """The collections under one home directory."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()

    @property
    def collections_dir(self) -> Path:
        return self.home / "collections"

    def damaged_names(self) -> list[str]:
        """Collection directories with segments but no ``collection.json`` (damaged)."""
        if not self.collections_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.collections_dir.iterdir()
            if (p / "segments").is_dir() and not (p / "collection.json").is_file()
        )

    def names(self) -> list[str]:
        if not self.collections_dir.is_dir():
            return []
        return sorted(
            p.name for p in self.collections_dir.iterdir() if (p / "collection.json").is_file()
        )

    def collection(self, name: str) -> Collection:
        if not NAME_RE.match(name):
            raise CollectionNotFoundError(f"invalid collection name {name!r}")
        path = self.collections_dir / name
        if not (path / "collection.json").is_file() and (path / "segments").is_dir():
            raise CollectionDamagedError(
                f"collection {name!r}: collection.json is missing (its segments are there); "
                f"`lamina verify {name}` reports what else is damaged"
            )
        if not (path / "collection.json").is_file():
            known = ", ".join(self.names()) or "none"
            raise CollectionNotFoundError(
                f"collection {name!r} does not exist in {self.home} (collections: {known})"
            )
        return Collection(path)

    def open_or_create(
        self,
        name: str,
        *,
        encoder: str,
        fingerprint: str,
        embed_dim: int,
        tile_px: int | None,
        mpp: float | None,
        extra: dict[str, Any] | None = None,
        vector_dtype: str = "float32",
    ) -> Collection:
        """Open ``name`` if it exists with the same encoder fingerprint, else create it."""
        if not NAME_RE.match(name):
            raise CollectionExistsError(
                f"invalid collection name {name!r}: letters, digits, '_', '.', '-' (max 64)"
            )
        path = self.collections_dir / name
        if (path / "collection.json").is_file():
            col = Collection(path)
            col.check_fingerprint(fingerprint)
            return col
        if (path / "segments").is_dir():
            raise CollectionDamagedError(
                f"collection {name!r}: collection.json is missing but its segments are there; "
                "restore collection.json (or move the directory away) before indexing into it"
            )
        if vector_dtype not in ("float32", "float16"):
            raise CollectionExistsError(
                f"vector dtype must be float32 or float16, not {vector_dtype!r}"
            )
        path.mkdir(parents=True, exist_ok=True)
        info = {
            "name": name,
            "encoder": encoder,
            "fingerprint": fingerprint,
            "embed_dim": int(embed_dim),
            "metric": "inner_product",
            "tile_px": tile_px,
            "mpp": mpp,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "index_factory": "Flat",
            "vector_dtype": vector_dtype,
            "uuid": uuid.uuid4().hex,
        }
        info.update(extra or {})
        info_path = path / "collection.json"
        # Creation is exclusive: of two processes creating the collection at once (say with
        # different encoders) exactly one writes collection.json; the other opens that one
        # and is refused by the fingerprint check below.
        fd = os.open(path / "create.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not info_path.exists():
                write_json_atomic(info_path, seal(info))
        finally:
            os.close(fd)
        col = Collection(path)
        col.check_fingerprint(fingerprint)
        return col
