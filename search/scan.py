"""Exact scoring kernels: full scans and candidate scans of one segment's vectors.

Inner products in float32 (float16 storage is converted block by block, never as a whole),
over blocks of :data:`BLOCK` rows so temporary memory stays bounded (``BLOCK * dim * 4`` bytes
plus ``BLOCK * n_queries`` scores). A filtered scan either gathers the matching rows (sparse
masks) or scans everything and drops the rest (dense masks, above :data:`DENSE` of the rows),
whichever reads less memory. Each call returns, per query, up to k (scores, rows), best first.

:class:`NumpyBackend` runs on the CPU (BLAS). A GPU backend with the same contract lives in
``search.gpu`` and is chosen by :func:`default_backend` when ``LAMINA_SEARCH_DEVICE`` asks
for it (or ``auto`` finds CUDA).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

BLOCK = 32_768
DENSE = 0.25

Found = tuple[np.ndarray, np.ndarray]


class Backend(Protocol):
    name: str

    def exact(
        self, reader: Any, queries: np.ndarray, k: int, mask: np.ndarray | None
    ) -> list[Found]: ...

    def rows(self, reader: Any, rows: np.ndarray, q: np.ndarray, k: int) -> Found: ...


def topk(scores: np.ndarray, rows: np.ndarray, k: int) -> Found:
    """The k best (scores, rows), best first; ties to the lower row."""
    if len(scores) > k:
        kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
        keep = scores >= kth  # every row tied with the k-th competes on the row rule
        scores, rows = scores[keep], rows[keep]
    order = np.lexsort((rows, -scores))[:k]
    return scores[order].astype(np.float32), rows[order].astype(np.int64)


class NumpyBackend:
    name = "numpy"

    def exact(
        self, reader: Any, queries: np.ndarray, k: int, mask: np.ndarray | None
    ) -> list[Found]:
        vectors = reader.vectors
        n = reader.n
        qt = np.ascontiguousarray(queries, dtype=np.float32).T
        keep: list[list[Found]] = [[] for _ in range(qt.shape[1])]
        sparse = mask is not None and mask.sum() < DENSE * n
        if sparse:
            assert mask is not None
            selected = np.flatnonzero(mask)
            for lo in range(0, len(selected), BLOCK):
                rows = selected[lo : lo + BLOCK]
                block = np.asarray(vectors[rows], dtype=np.float32)
                _collect(keep, block @ qt, rows, k)
        else:
            for lo in range(0, n, BLOCK):
                hi = min(n, lo + BLOCK)
                block = vectors[lo:hi]
                if block.dtype != np.float32:
                    block = block.astype(np.float32)
                scores = block @ qt
                rows = np.arange(lo, hi, dtype=np.int64)
                if mask is not None:
                    m = mask[lo:hi]
                    scores, rows = scores[m], rows[m]
                _collect(keep, scores, rows, k)
        out = []
        for parts in keep:
            if not parts:
                out.append((np.zeros(0, np.float32), np.zeros(0, np.int64)))
                continue
            s = np.concatenate([p[0] for p in parts])
            r = np.concatenate([p[1] for p in parts])
            out.append(topk(s, r, k))
        return out

    def rows(self, reader: Any, rows: np.ndarray, q: np.ndarray, k: int) -> Found:
        block = reader.gather(rows)
        return topk(block @ np.asarray(q, dtype=np.float32), np.asarray(rows, np.int64), k)


def _collect(keep: list[list[Found]], scores: np.ndarray, rows: np.ndarray, k: int) -> None:
    for j in range(scores.shape[1]):
        keep[j].append(topk(scores[:, j], rows, k))


_BACKEND: Backend | None = None


def default_backend() -> Backend:
    """The process's scoring backend: ``LAMINA_SEARCH_DEVICE`` = cpu (default) | cuda | auto."""
    global _BACKEND
    if _BACKEND is None:
        want = os.environ.get("LAMINA_SEARCH_DEVICE", "cpu").lower()
        if want in ("cuda", "auto", "torch-cpu"):
            from search.gpu import torch_backend

            _BACKEND = torch_backend(want)
        else:
            _BACKEND = NumpyBackend()
    return _BACKEND
