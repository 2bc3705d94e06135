"""FAISS indexes: derived, rebuildable artifacts built from committed segments.

Each index is described by a FAISS factory string (``Flat``, ``HNSW32``, ``IVF1024,PQ64``)
and saved atomically with a manifest naming the segments it covers, in order. Positions in
the index follow that order; :class:`VectorIndex` maps positions back to tile ids.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from search.errors import InvalidIndexFactoryError, InvalidQueryError, StoreError
from search.segments import SegmentInfo, fsync_dir, write_json_atomic

_FACTORY_RE = re.compile(r"^[A-Za-z0-9_,.=+/-]{1,64}$")


def check_factory(factory: str, dim: int = 64) -> str:
    """Refuse factory strings FAISS cannot build for ``dim``-dimensional vectors."""
    if not _FACTORY_RE.match(factory):
        raise InvalidIndexFactoryError(f"invalid FAISS factory string {factory!r}")
    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InvalidIndexFactoryError(f"FAISS cannot build {factory!r}: {exc}") from None
    return factory


def _slug(factory: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", factory).strip("_")


def needs_training(factory: str) -> bool:
    return any(part in factory for part in ("IVF", "PQ", "SQ", "LSH", "PCA", "OPQ"))


class VectorIndex:
    """A FAISS index over a snapshot's vectors plus the position -> tile_id map."""

    def __init__(
        self,
        factory: str,
        dim: int,
        index: faiss.Index,
        segment_ids: list[str],
        tile_ids: np.ndarray,
    ) -> None:
        self.factory = factory
        self.dim = dim
        self.index = index
        self.segment_ids = segment_ids
        self.tile_ids = tile_ids.astype(np.int64, copy=False)
        self._frozen = False

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(
        cls,
        factory: str,
        dim: int,
        segments: Sequence[SegmentInfo],
        vectors: np.ndarray,
        tile_ids: np.ndarray,
    ) -> VectorIndex:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            if len(vectors) == 0:
                raise StoreError(f"{factory} needs training vectors; the collection is empty")
            try:
                index.train(np.ascontiguousarray(vectors, dtype=np.float32))
            except RuntimeError as exc:
                raise InvalidIndexFactoryError(
                    f"{factory} cannot be trained on {len(vectors)} vectors: {exc}"
                ) from None
        if len(vectors):
            index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return cls(factory, dim, index, [s.segment_id for s in segments], tile_ids)

    def flat_vectors(self) -> np.ndarray | None:
        """The vectors a Flat index stores, as a read-only numpy view (no copy), else None.

        Taking the view freezes the index: growing it could move its storage under the view.
        """
        if not isinstance(self.index, faiss.IndexFlat) or self.ntotal == 0:
            return None
        self._frozen = True
        n, d = self.ntotal, self.index.d
        view = faiss.rev_swig_ptr(self.index.get_xb(), n * d).reshape(n, d)
        view.flags.writeable = False
        return view

    def extend(
        self, segments: Sequence[SegmentInfo], vectors: np.ndarray, tile_ids: np.ndarray
    ) -> None:
        if self._frozen:
            raise StoreError("this index is shared with a live view; extend a clone of it")
        if len(vectors):
            self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.segment_ids = self.segment_ids + [s.segment_id for s in segments]
        self.tile_ids = np.concatenate([self.tile_ids, tile_ids.astype(np.int64)])

    def search(
        self, queries: np.ndarray, k: int, positions: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) for each query; restricted to ``positions`` when given."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InvalidQueryError(f"query vectors must have shape (n, {self.dim}), got {q.shape}")
        k = min(k, self.ntotal)
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if positions is None:
            return self.index.search(q, k)
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(positions, dtype=np.int64))
        params = _search_params(self.index, sel)
        return self.index.search(q, k, params=params)

    # -- persistence -------------------------------------------------------------------------
    def save(self, index_dir: Path) -> None:
        """Write ``<slug>.faiss`` + ``<slug>.json`` atomically (rename after fsync)."""
        index_dir.mkdir(parents=True, exist_ok=True)
        slug = _slug(self.factory)
        tmp = index_dir / f".{slug}.{os.getpid()}.{secrets.token_hex(3)}.tmp"
        faiss.write_index(self.index, str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        np.save(index_dir / f".{slug}.ids.tmp.npy", self.tile_ids)
        os.replace(tmp, index_dir / f"{slug}.faiss")
        os.replace(index_dir / f".{slug}.ids.tmp.npy", index_dir / f"{slug}.ids.npy")
        fsync_dir(index_dir)
        write_json_atomic(
            index_dir / f"{slug}.json",
            {
                "factory": self.factory,
                "dim": self.dim,
                "ntotal": self.ntotal,
                "segments": self.segment_ids,
                "format": 1,
            },
        )

    @classmethod
    def load(cls, index_dir: Path, factory: str, dim: int) -> VectorIndex | None:
        """Load a saved index if its manifest, ids and index agree; None if absent or stale."""
        slug = _slug(factory)
        try:
            manifest = json.loads((index_dir / f"{slug}.json").read_text())
            if manifest.get("factory") != factory or manifest.get("dim") != dim:
                return None
            index = faiss.read_index(str(index_dir / f"{slug}.faiss"))
            ids = np.load(index_dir / f"{slug}.ids.npy")
        except (OSError, ValueError, RuntimeError, json.JSONDecodeError):
            return None
        if index.ntotal != manifest["ntotal"] or len(ids) != index.ntotal or index.d != dim:
            return None
        return cls(factory, dim, index, list(manifest["segments"]), ids)


def _search_params(index: faiss.Index, sel: faiss.IDSelector) -> faiss.SearchParameters:
    inner = index
    if isinstance(index, faiss.IndexHNSW) or "HNSW" in type(index).__name__:
        p = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # (not in faiss's stubs)
        p.sel = sel
        return p
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        p = faiss.SearchParametersIVF()
        p.sel = sel
        p.nprobe = ivf.nprobe
        return p
    p = faiss.SearchParameters()
    p.sel = sel
    return p
