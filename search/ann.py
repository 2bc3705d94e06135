"""Approximate-nearest-neighbour indexes, per segment, over vectors that live once on disk.

Index families (the FAISS factory string stored with the collection):

- ``Flat``: no ANN index; every search is an exact scan of the memory-mapped vectors.
- ``IVF<nlist>`` / ``IVF<nlist>,Flat``: spherical k-means centroids trained once per collection
  (on a sample of at most 64 * nlist vectors, inside FAISS's guidance of 30-256 per list), plus one
  int32 list assignment per tile, stored per segment. Lists are scanned *from the segments'
  memory-mapped vectors*, so the index adds 4 bytes per vector, not a second copy of it.
- anything else FAISS builds (``IVF4096,PQ48``, ``IVF1024,SQ8``, ``HNSW32``...): a template
  trained once per collection (IVF/PQ on the same sample; HNSW needs no training) and one FAISS
  index per segment holding that segment's codes. Candidates are always re-ranked exactly from
  the segment's vectors, so code-only indexes (PQ/SQ) keep only codes in memory. ``HNSW..``
  and ``..,Flat`` storages hold a copy of the vectors (FAISS needs it for graph search): say
  ``HNSW32,SQ8`` to avoid it.

Layout under ``<collection>/index/``: ``<slug>.json`` names the current version directory
``<slug>-<version>/`` holding ``trained.faiss`` or ``centroids.npy`` and one ``seg-<id>.npy`` or
``seg-<id>.faiss`` per indexed segment. Builds write ``.build-<slug>-<version>/`` and rename
it into place, then swap the pointer with one atomic rename; sidecars are written to a temporary
name and renamed. A killed build leaves only a temporary directory (removed by the next build);
readers keep the previous version or, with none, search exactly. One builder per collection at
a time (an flock); progress is written to ``<slug>.build.json`` for ``lamina status``.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from lamina.search.errors import InvalidIndexFactoryError, StoreError, io_failure
from lamina.search.index_spec import IndexSpec, parse_factory
from lamina.search.integrity import (
    HASH,
    OPEN_HASH_BYTES,
    check_segment,
    digest_bytes,
    file_entry,
    meta_checksum,
)
from lamina.search.segments import VECTOR_DTYPES, SegmentInfo, fsync_dir, write_json_atomic
from lamina.search.store import Collection

_ASSIGN_CHUNK = 65_536
TRAIN_PER_LIST = 64  # training vectors per IVF list (FAISS: 30-256)
_FILTER_CACHE = 32
Progress = Callable[[str, int, int], None]


# -- in-memory structures -------------------------------------------------------------------------
class SegmentANN:
    """One segment's part of an index: IVF list assignment, or a FAISS index of its codes."""

    def __init__(self, assign: np.ndarray | None, index: Any | None, nlist: int) -> None:
        self.assign = assign
        self.index = index
        self.nlist = nlist
        self._filtered: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._counts: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.contiguous = False
        # a FAISS IVF code index (IVF-PQ/SQ) searched directly: probed lists are chosen here
        self.ivf: Any = None
        self.list_of_row: np.ndarray | None = None
        if index is not None and isinstance(faiss.downcast_index(index), faiss.IndexIVF):
            self.ivf = faiss.downcast_index(index)
            self.list_of_row = _rows_lists(self.ivf)
        if assign is not None:
            # a clustered segment (rows sorted by list): every list is one run of rows
            self.contiguous = bool(len(assign) < 2 or np.all(np.diff(assign) >= 0))
            self.order = (
                np.arange(len(assign), dtype=np.int64)
                if self.contiguous
                else np.argsort(assign, kind="stable").astype(np.int64)
            )
            counts = np.bincount(assign, minlength=nlist)
            self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @property
    def memory_bytes(self) -> int:
        if self.assign is not None:
            return int(self.assign.nbytes + self.order.nbytes + self.offsets.nbytes)
        if self.index is None:
            return 0
        extra = 0 if self.list_of_row is None else int(self.list_of_row.nbytes)
        return int(faiss.serialize_index(self.index).nbytes) + extra

    def list_counts(self, key: str | None, mask: np.ndarray | None) -> np.ndarray:
        """Tiles per IVF list, restricted to ``mask`` (cached per filter key)."""
        if self.assign is not None:
            return np.diff(self.lists(key, mask)[1])
        assert self.list_of_row is not None
        if mask is None or key is None:
            sel = self.list_of_row
        else:
            with self._lock:
                hit = self._counts.get(key)
            if hit is not None:
                return hit
            sel = self.list_of_row[mask]
        out = np.bincount(sel, minlength=self.nlist).astype(np.int64)
        if mask is not None and key is not None:
            with self._lock:
                self._counts[key] = out
                while len(self._counts) > _FILTER_CACHE:
                    self._counts.popitem(last=False)
        return out

    def lists(self, key: str | None, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(rows ordered by list, offsets per list) restricted to ``mask`` (cached per key)."""
        assert self.assign is not None
        if mask is None or key is None:
            return self.order, self.offsets
        with self._lock:
            hit = self._filtered.get(key)
            if hit is not None:
                self._filtered.move_to_end(key)
                return hit
        order = self.order[mask[self.order]]
        counts = np.bincount(self.assign[mask], minlength=self.nlist)
        out = (order, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        with self._lock:
            self._filtered[key] = out
            while len(self._filtered) > _FILTER_CACHE:
                self._filtered.popitem(last=False)
        return out


class AnnIndex:
    """The current version of a collection's ANN index, loaded lazily per segment."""

    def __init__(self, spec: IndexSpec, directory: Path, version: str, meta: dict[str, Any]):
        self.spec = spec
        self.dir = directory
        self.version = version
        self.meta = meta
        self.centroids: np.ndarray | None = None  # IVF families: coarse centroids
        trained = meta.get("trained") or {}
        self.trained_digest: str | None = trained.get(HASH)
        if self.trained_digest is not None:  # recorded: the trained file must match it
            data = (directory / str(trained.get("file"))).read_bytes()
            if len(data) != trained.get("size") or digest_bytes(data) != self.trained_digest:
                raise ValueError(f"{trained.get('file')} does not match its checksum")
        if spec.kind == "ivf":
            self.centroids = np.load(directory / "centroids.npy")
        elif spec.nlist:
            raw = faiss.read_index(str(directory / "trained.faiss"))  # owns what follows
            template = faiss.downcast_index(raw)
            if isinstance(template, faiss.IndexIVF):  # not behind a transform (OPQ, PCA...)
                coarse = faiss.downcast_index(template.quantizer)
                self.centroids = coarse.reconstruct_n(0, template.nlist)
            del raw
        if self.centroids is not None:
            self.quantizer = faiss.IndexFlatIP(self.centroids.shape[1])
            self.quantizer.add(self.centroids)
        self._segments: dict[str, SegmentANN | None] = {}
        self._bad: dict[str, tuple[int, int]] = {}  # sidecars that failed: (mtime_ns, size)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, col: Collection) -> AnnIndex | None:
        """The collection's current index for its factory, or None (not built / other factory)."""
        spec = parse_factory(col.index_factory, col.dim)
        if spec.kind == "flat":
            return None
        try:
            meta = json.loads((col.index_dir / f"{spec.slug}.json").read_text())
            if meta.get("factory") != spec.factory or meta.get("dim") != col.dim:
                return None
            if "checksum" in meta and meta_checksum(meta) != meta["checksum"]:
                return None  # a damaged pointer: search exactly until rebuilt
            directory = col.index_dir / f"{spec.slug}-{meta['version']}"
            return cls(spec, directory, str(meta["version"]), meta)
        except (OSError, ValueError, KeyError):
            return None

    def sidecar(self, segment_id: str) -> Path:
        ext = "npy" if self.spec.kind == "ivf" else "faiss"
        return self.dir / f"seg-{segment_id}.{ext}"

    def segment(self, segment_id: str) -> SegmentANN | None:
        """This segment's index part, or None when the segment is not indexed (scan exactly)."""
        with self._lock:
            if segment_id in self._segments and self._segments[segment_id] is not None:
                return self._segments[segment_id]
        path = self.sidecar(segment_id)
        try:
            st = path.stat()
            if self._bad.get(segment_id) == (st.st_mtime_ns, st.st_size):
                return None  # failed its check before and has not changed since
            data = path.read_bytes()
            if self.part_problem(segment_id, data) is not None:
                self._bad[segment_id] = (st.st_mtime_ns, st.st_size)
                return None
            if self.spec.kind == "ivf":
                assign = np.load(io.BytesIO(data)).astype(np.int32)
                part = SegmentANN(assign, None, self.spec.nlist)
            else:
                index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
                part = SegmentANN(None, index, self.spec.nlist)
        except (OSError, ValueError, RuntimeError):
            return None
        with self._lock:
            self._segments[segment_id] = part
        return part

    def part_problem(
        self, segment_id: str, data: bytes | None = None, hash_limit: int | None = None
    ) -> str | None:
        """Why this segment's sidecar must not be trusted, or None (sound, or written before
        checksums: unverified). Its ``.sum`` record must match its bytes, the trained file
        (centroids / template) of this version, and the vectors the segment records now.
        Without ``data``, a sidecar larger than ``hash_limit`` bytes (default: no limit) is
        checked by size only (its bytes are hashed when it is loaded)."""
        path = self.sidecar(segment_id)
        try:
            size = path.stat().st_size if data is None else len(data)
            if data is None and (hash_limit is None or size <= hash_limit):
                data = path.read_bytes()
        except FileNotFoundError:
            return "not indexed"
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc})"
        try:
            rec = json.loads(path.with_suffix(".sum").read_text())
        except FileNotFoundError:  # only sidecars of versions built before checksums lack it
            return None if self.trained_digest is None else "its checksum record is missing"
        except (OSError, ValueError):
            return "its checksum record is unreadable"
        if not isinstance(rec, dict):
            return "its checksum record is unreadable"
        if rec.get("size") != size or (data is not None and rec.get(HASH) != digest_bytes(data)):
            return "content does not match its checksum"
        built = rec.get("built_from") or {}
        if built.get("trained") != self.trained_digest:
            return "built with another trained index (centroids)"
        if built.get("vectors") != self._vectors_digest(segment_id):
            return "built from other vectors than the segment holds"
        return None

    def _vectors_digest(self, segment_id: str) -> str | None:
        try:
            info = SegmentInfo.load(self.dir.parent.parent / "segments" / segment_id)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return info.file_digest(VECTOR_DTYPES[info.dtype][1])

    def write_part(self, segment_id: str, data: bytes, vectors_digest: str | None) -> None:
        """Write a segment's sidecar with its checksum record (the record first: a sidecar
        never exists without it, except one written before checksums existed)."""
        path = self.sidecar(segment_id)
        record = {
            "size": len(data),
            HASH: digest_bytes(data),
            "built_from": {"vectors": vectors_digest, "trained": self.trained_digest},
        }
        write_json_atomic(path.with_suffix(".sum"), record)

        def write(p: Path) -> None:
            p.write_bytes(data)

        _write_atomic(path, write)

    def memory_bytes(self) -> int:
        with self._lock:
            parts = [p for p in self._segments.values() if p is not None]
        base = 0 if self.centroids is None else int(self.centroids.nbytes)
        return base + sum(p.memory_bytes for p in parts)

    def probe_orders(self, queries: np.ndarray, top: int | None) -> list[np.ndarray]:
        """Per query, list ids by decreasing centroid similarity (IVF only): the ``top`` first,
        or all lists when ``top`` is None. FAISS's own kernel (one thread per query, no BLAS
        thread pool to wake for a 4096 x 384 product)."""
        assert self.centroids is not None
        n = len(self.centroids) if top is None else min(top, len(self.centroids))
        _, lists = self.quantizer.search(np.ascontiguousarray(queries, dtype=np.float32), n)
        return [row[row >= 0].astype(np.int64) for row in lists]


def _rows_lists(ivf: Any) -> np.ndarray:
    """The IVF list of every row of a FAISS IVF index (its ids are the segment's rows)."""
    out = np.zeros(ivf.ntotal, np.int32)
    inv = ivf.invlists
    for lst in range(ivf.nlist):
        size = inv.list_size(lst)
        if size:
            ptr = inv.get_ids(lst)
            out[faiss.rev_swig_ptr(ptr, size)] = lst
            inv.release_ids(lst, ptr)
    return out


# -- building -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _builder_lock(col: Collection, spec: IndexSpec) -> Iterator[bool]:
    col.index_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(col.index_dir / f"{spec.slug}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _sample(segments: Sequence[SegmentInfo], size: int, seed: int = 1234) -> np.ndarray:
    """A uniform random sample of ``size`` vectors over the segments (float32, unit rows)."""
    sizes = np.array([s.n_tiles for s in segments], np.int64)
    total = int(sizes.sum())
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(total, size=min(size, total), replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    parts = []
    for i, seg in enumerate(segments):
        rows = picks[(picks >= starts[i]) & (picks < starts[i + 1])] - starts[i]
        if len(rows):
            parts.append(np.asarray(seg.vectors()[rows], dtype=np.float32))
    return np.ascontiguousarray(np.concatenate(parts))


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_progress(col: Collection, spec: IndexSpec, stage: str, done: int, total: int) -> None:
    write_json_atomic(
        col.index_dir / f"{spec.slug}.build.json",
        {
            "factory": spec.factory,
            "stage": stage,
            "done": done,
            "total": total,
            "pid": os.getpid(),
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def build_progress(col: Collection) -> dict[str, Any] | None:
    """The running build's progress record, or None when no build of the factory runs."""
    try:
        spec = parse_factory(col.index_factory, col.dim)
        rec = json.loads((col.index_dir / f"{spec.slug}.build.json").read_text())
    except (OSError, ValueError, InvalidIndexFactoryError):
        return None
    if rec.get("stage") == "done":
        return None
    try:
        os.kill(int(rec["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return None  # the builder died; the next build starts over
    return dict(rec)


def _train(spec: IndexSpec, dim: int, segments: Sequence[SegmentInfo], out_dir: Path) -> int:
    n = sum(s.n_tiles for s in segments)
    if spec.kind == "ivf":
        if n < spec.nlist:
            raise InvalidIndexFactoryError(
                f"{spec.factory} needs at least {spec.nlist} vectors to train; the collection "
                f"has {n}. Use fewer lists (about 4*sqrt(n)) or Flat."
            )
        sample = _sample(segments, TRAIN_PER_LIST * spec.nlist)
        km = faiss.Kmeans(dim, spec.nlist, niter=20, spherical=True, seed=1234, verbose=False)
        km.cp.max_points_per_centroid = TRAIN_PER_LIST
        km.cp.min_points_per_centroid = 1
        km.train(sample)
        cents = np.ascontiguousarray(km.centroids, dtype=np.float32)
        np.save(out_dir / "centroids.npy", cents)
        return len(sample)
    template = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    trained_on = 0
    if not template.is_trained:
        size = max(TRAIN_PER_LIST * max(spec.nlist, 1), 65_536)
        sample = _sample(segments, size) if n else np.zeros((0, dim), np.float32)
        try:
            template.train(sample)
        except RuntimeError as exc:
            raise InvalidIndexFactoryError(
                f"{spec.factory} cannot be trained on {len(sample)} vectors: {exc}"
            ) from None
        trained_on = len(sample)
    faiss.write_index(template, str(out_dir / "trained.faiss"))
    return trained_on


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _index_segment(ann: AnnIndex, seg: SegmentInfo) -> None:
    spec, directory, centroids = ann.spec, ann.dir, ann.centroids
    digest = seg.file_digest(VECTOR_DTYPES[seg.dtype][1])
    vectors = seg.vectors()
    if spec.kind == "ivf":
        assert centroids is not None
        quantizer = faiss.IndexFlatIP(centroids.shape[1])
        quantizer.add(centroids)
        assign = np.empty(seg.n_tiles, np.int32)
        for lo in range(0, seg.n_tiles, _ASSIGN_CHUNK):
            chunk = np.ascontiguousarray(vectors[lo : lo + _ASSIGN_CHUNK], dtype=np.float32)
            assign[lo : lo + len(chunk)] = quantizer.search(chunk, 1)[1][:, 0]
        ann.write_part(seg.segment_id, _npy_bytes(assign), digest)
        return
    index = faiss.read_index(str(directory / "trained.faiss"))
    for lo in range(0, seg.n_tiles, _ASSIGN_CHUNK):
        index.add(np.ascontiguousarray(vectors[lo : lo + _ASSIGN_CHUNK], dtype=np.float32))
    ann.write_part(seg.segment_id, faiss.serialize_index(index).tobytes(), digest)


def update_index(
    col: Collection, progress: Progress | None = None, *, rebuild: bool = False
) -> dict[str, Any]:
    """Bring the collection's index up to date: train a new version when there is none (or
    ``rebuild``), then index every committed segment that has no sidecar yet. Returns what was
    done; ``{"skipped": ...}`` when another process is building or the factory is Flat."""
    spec = parse_factory(col.index_factory, col.dim)
    if spec.kind == "flat":
        return {"skipped": "Flat needs no index"}
    with _builder_lock(col, spec) as mine:
        if not mine:
            return {"skipped": "another process is building this index"}
        try:
            return _build(col, spec, progress, rebuild)
        except OSError as exc:  # full disk: no partial version, searches keep the previous one
            for stale in col.index_dir.glob(f".build-{spec.slug}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            what = f"building the {spec.factory} index of collection {col.name!r}"
            raise io_failure(what, exc) from exc


def _build(
    col: Collection, spec: IndexSpec, progress: Progress | None, rebuild: bool
) -> dict[str, Any]:
    """:func:`update_index`'s work, under the builder lock."""
    for stale in col.index_dir.glob(f".build-{spec.slug}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    segments = [s for s in col.segments() if not check_segment(s, hash_limit=0)]
    current = None if rebuild else AnnIndex.load(col)
    trained = False
    if current is None:
        if not segments:
            return {"skipped": "the collection is empty"}
        version = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + secrets.token_hex(3)
        tmp = col.index_dir / f".build-{spec.slug}-{version}"
        tmp.mkdir()
        if progress:
            progress("train", 0, 1)
        _write_progress(col, spec, "train", 0, sum(s.n_tiles for s in segments))
        trained_on = _train(spec, col.dim, segments, tmp)
        final = col.index_dir / f"{spec.slug}-{version}"
        os.rename(tmp, final)
        fsync_dir(col.index_dir)
        meta = {
            "factory": spec.factory,
            "dim": col.dim,
            "kind": spec.kind,
            "nlist": spec.nlist,
            "version": version,
            "trained_on": trained_on,
            "trained_with_tiles": sum(s.n_tiles for s in segments),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        name = "centroids.npy" if spec.kind == "ivf" else "trained.faiss"
        meta["trained"] = {"file": name, **file_entry(final / name)}
        meta["checksum"] = meta_checksum(meta)
        current = AnnIndex(spec, final, version, meta)
        trained = True
    todo = [
        s
        for s in segments
        if current.part_problem(s.segment_id, hash_limit=OPEN_HASH_BYTES) is not None
    ]
    total = sum(s.n_tiles for s in todo)
    done = 0
    for seg in todo:
        _write_progress(col, spec, "index", done, total)
        if progress:
            progress("index", done, total)
        _index_segment(current, seg)
        done += seg.n_tiles
    if progress:
        progress("index", done, total)
    if trained:  # swap the pointer only once every segment is indexed
        write_json_atomic(col.index_dir / f"{spec.slug}.json", current.meta)
        for old in col.index_dir.glob(f"{spec.slug}-*"):
            if old.is_dir() and old != current.dir:
                shutil.rmtree(old, ignore_errors=True)
    _write_progress(col, spec, "done", done, total)
    return {
        "factory": spec.factory,
        "version": current.version,
        "trained": trained,
        "segments_indexed": len(todo),
        "tiles_indexed": total,
    }


def write_assignment(
    col: Collection, segment_id: str, assign: np.ndarray, vectors_digest: str | None = None
) -> None:
    """Write an IVF list assignment for a segment about to be committed (clustering), with
    the checksum of the vectors it will hold."""
    current = AnnIndex.load(col)
    if current is None or current.spec.kind != "ivf":
        raise StoreError("the collection has no IVF index to write an assignment for")
    current.write_part(segment_id, _npy_bytes(assign.astype(np.int32)), vectors_digest)


def copy_sidecars(
    col: Collection,
    sources: Sequence[SegmentInfo],
    target_id: str,
    n_tiles: int,
    vectors_digest: str | None = None,
    keep: Sequence[np.ndarray | None] | None = None,
) -> bool:
    """Give a compacted segment the concatenated IVF assignments of the segments it merges
    (rows keep their order; ``keep[i]``: the rows of segment i carried over, None = all), so
    compaction never forces re-assignment. False if not possible."""
    current = AnnIndex.load(col)
    if current is None or current.spec.kind != "ivf":
        return False
    parts: list[np.ndarray] = []
    for seg in sources:
        path = current.sidecar(seg.segment_id)
        if not path.exists() or current.part_problem(seg.segment_id) is not None:
            return False  # not indexed or not trusted: the merged segment is indexed afresh
        part = np.load(path)
        rows = keep[len(parts)] if keep is not None else None
        parts.append(part if rows is None else part[rows])
    assign = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
    if len(assign) != n_tiles:
        raise StoreError("compacted segment and its sources disagree on the number of tiles")
    current.write_part(target_id, _npy_bytes(assign), vectors_digest)
    return True
