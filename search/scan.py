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

import faiss
import numpy as np

BLOCK = 32_768
DENSE = 0.25
FEW_QUERIES = 20  # below this, FAISS's per-query kernels; from it on, BLAS matrix products

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
        q = np.ascontiguousarray(queries, dtype=np.float32)
        nq = len(q)
        best_s = np.full((nq, 0), -np.inf, np.float32)
        best_r = np.zeros((nq, 0), np.int64)
        sparse = mask is not None and np.count_nonzero(mask) < DENSE * n
        selected = np.flatnonzero(mask) if sparse and mask is not None else None
        if vectors.dtype == np.float32 and nq < FEW_QUERIES:
            # a few queries: FAISS's one-thread-per-query kernels, reading the mapped rows in
            # place (like a raw FAISS search); concurrent requests then share the cores instead
            # of each waking a BLAS thread pool
            if mask is not None:
                return _by_rows(vectors, q, np.flatnonzero(mask), k)
            return _knn_blocks(vectors, q, k)
        if selected is not None and vectors.dtype == np.float32:
            return _by_rows(vectors, q, selected, k)
        total = len(selected) if selected is not None else n
        for lo in range(0, total, BLOCK):
            hi = min(total, lo + BLOCK)
            if selected is not None:
                rows = selected[lo:hi]
                block = np.asarray(vectors[rows], dtype=np.float32)
            else:
                rows = np.arange(lo, hi, dtype=np.int64)
                block = vectors[lo:hi]
                if block.dtype != np.float32:
                    block = block.astype(np.float32)
            scores = q @ block.T  # (queries, rows): each query's scores are contiguous
            if selected is None and mask is not None:
                m = mask[lo:hi]
                scores, rows = scores[:, m], rows[m]
            best_s, best_r = _fold(best_s, best_r, scores, rows, k)
        return [topk(best_s[j], best_r[j], k) for j in range(nq)]

    def rows(self, reader: Any, rows: np.ndarray, q: np.ndarray, k: int) -> Found:
        """Exact top-k among candidate rows with FAISS's SIMD kernel: float32 rows are read in
        place (no copy); float16 rows are gathered and converted first."""
        qq = np.asarray(q, dtype=np.float32).reshape(1, -1)
        if reader.vectors.dtype == np.float32:
            return _by_rows(reader.vectors, qq, np.asarray(rows, np.int64), k)[0]
        block = reader.gather(rows)
        kk = min(len(rows), 2 * k)
        if kk == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        qq = np.ascontiguousarray(np.asarray(q, dtype=np.float32).reshape(1, -1))
        scores, idx = faiss.knn(qq, block, kk, metric=faiss.METRIC_INNER_PRODUCT)
        keep = idx[0] >= 0
        return topk(scores[0][keep], np.asarray(rows, np.int64)[idx[0][keep]], k)


def _knn_blocks(vectors: np.ndarray, q: np.ndarray, k: int) -> list[Found]:
    """Top-k of each query over every row, FAISS ``knn`` on contiguous blocks (no copy)."""
    nq = len(q)
    kk = min(2 * k, len(vectors))
    best_s = np.full((nq, 0), -np.inf, np.float32)
    best_r = np.zeros((nq, 0), np.int64)
    qq = np.ascontiguousarray(q, dtype=np.float32)
    for lo in range(0, len(vectors), 8 * BLOCK):
        block = vectors[lo : lo + 8 * BLOCK]
        scores, idx = faiss.knn(qq, block, min(kk, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        best_s = np.concatenate([best_s, scores], axis=1)
        best_r = np.concatenate([best_r, idx + lo], axis=1)
    return [topk(best_s[j], best_r[j], k) for j in range(nq)]


def _by_rows(vectors: np.ndarray, q: np.ndarray, rows: np.ndarray, k: int) -> list[Found]:
    """Top-k of each query among ``rows`` of a float32 matrix, read in place by FAISS
    (``knn_inner_products_by_idx``: one pass over the rows, no gathered copy)."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    kk = min(len(rows), 2 * k)
    nq = len(q)
    if kk == 0:
        return [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in range(nq)]
    qq = np.ascontiguousarray(q, dtype=np.float32)
    base = np.ascontiguousarray(vectors)  # the mapped file itself when already contiguous
    vals = np.empty((nq, kk), np.float32)
    labels = np.empty((nq, kk), np.int64)
    faiss.knn_inner_products_by_idx(  # type: ignore[attr-defined]  # not in the stubs
        faiss.swig_ptr(qq),
        faiss.swig_ptr(base),
        faiss.swig_ptr(rows),
        base.shape[1],
        nq,
        base.shape[0],
        len(rows),
        kk,
        faiss.swig_ptr(vals),
        faiss.swig_ptr(labels),
        0,  # every query scans the same rows
    )
    out = []
    for j in range(nq):
        keep = labels[j] >= 0
        out.append(topk(vals[j][keep], labels[j][keep], k))
    return out


def _fold(
    best_s: np.ndarray, best_r: np.ndarray, scores: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per query (row of ``scores``), keep the best of the running set and a new block, with
    one partition over all queries at once. The running set keeps 2k so that rows tied with
    the k-th are still there when :func:`topk` applies the row rule at the end."""
    cand_s = np.concatenate([best_s, scores], axis=1)
    cand_r = np.concatenate([best_r, np.broadcast_to(rows, scores.shape)], axis=1)
    keep = min(2 * k, cand_s.shape[1])
    if cand_s.shape[1] > keep:
        part = np.argpartition(-cand_s, keep - 1, axis=1)[:, :keep]
        cand_s = np.take_along_axis(cand_s, part, axis=1)
        cand_r = np.take_along_axis(cand_r, part, axis=1)
    return cand_s, cand_r


_BACKEND: Backend | None = None


def default_backend() -> Backend:
    """The process's scoring backend: ``LAMINA_SEARCH_DEVICE`` = cpu (default) | cuda | auto."""
    global _BACKEND
    if _BACKEND is None:
        want = os.environ.get("LAMINA_SEARCH_DEVICE", "cpu").lower()
        if want in ("cuda", "auto", "torch-cpu"):
            from lamina.search.gpu import torch_backend

            _BACKEND = torch_backend(want)
        else:
            _BACKEND = NumpyBackend()
    return _BACKEND
