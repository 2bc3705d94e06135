"""A torch scoring backend: the exact scans of ``search.scan`` on a CUDA device (or the CPU).

Same contract and same answers as :class:`search.scan.NumpyBackend`: per query, up to k
(scores float32 descending, rows int64), ties to the lower row; scores are float32 inner
products (float16 storage is upcast block by block, TF32 is switched off), so they agree with
the numpy backend to about 1e-6.

Method:

- **Residency.** Each segment's vectors are uploaded once, in their stored dtype (float32 or
  float16), in chunks of :data:`UPLOAD_ROWS` rows (no whole host copy), and cached per
  :class:`~search.segment_reader.SegmentReader` in a ``WeakKeyDictionary``: when a snapshot
  drops a segment and its reader is released, its device copy is freed with it. Filter masks
  (cached and immutable in the readers) are uploaded once per mask object, as a bool tensor
  and the index tensor of the matching rows.
- **Blocks.** A scan works on blocks of rows sized so the float32 block, the ``(queries,
  rows)`` scores and their int64 sort keys stay under :data:`BLOCK_BYTES` of temporary device
  memory per call (whatever the segment size or the batch).
- **Exact top-k with the tie rule.** Each score is turned into one int64 key whose order is
  (score descending, row ascending): the float32 bits mapped to an order-preserving int32 in the
  high word, ``2**32 - 1 - row`` in the low word. ``torch.topk`` over the keys of a block and
  then over the concatenated per-block winners is therefore exact, deterministic and honours
  the tie rule without a host round trip; scores and rows are decoded from the keys on the host.
  Rows filtered out by a dense mask get the score ``-inf`` (below every real score) and are
  dropped after decoding. Rows of one segment are below ``2**32``.

:func:`torch_backend` picks the device: ``cuda`` (an error without CUDA), ``auto`` (CUDA if
present, else the numpy backend) or ``torch-cpu`` (the same code path on the CPU, for tests).
torch is imported only when a backend is made (never when ``search`` is imported).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np

from lamina.search.scan import DENSE, Backend, Found, NumpyBackend

BLOCK_BYTES = 256 << 20
CPU_BLOCK_BYTES = 32 << 20
UPLOAD_ROWS = 262_144
_LOW = (1 << 32) - 1
_EMPTY: Found = (np.zeros(0, np.float32), np.zeros(0, np.int64))


def torch_backend(want: str) -> Backend:
    """The backend for ``LAMINA_SEARCH_DEVICE`` = ``cuda`` | ``auto`` | ``torch-cpu``."""
    torch = _torch()

    want = want.lower()
    if want == "torch-cpu":
        return TorchBackend("cpu")
    if want in ("cuda", "torch-cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("LAMINA_SEARCH_DEVICE=cuda but torch finds no CUDA device")
        return TorchBackend("cuda")
    if want == "auto":
        return TorchBackend("cuda") if torch.cuda.is_available() else NumpyBackend()
    raise ValueError(f"unknown search device {want!r}: cpu, cuda, auto or torch-cpu")


class TorchBackend:
    """Exact scans with torch on one device; see the module doc."""

    def __init__(self, device: str = "cuda", block_bytes: int | None = None) -> None:
        torch = _torch()
        self._torch = torch
        self.device = torch.device(device)
        self.name = "torch-cuda" if self.device.type == "cuda" else "torch-cpu"
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
        default = BLOCK_BYTES if self.device.type == "cuda" else CPU_BLOCK_BYTES
        self.block_bytes = int(block_bytes or default)
        self._vectors: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._masks: dict[int, tuple[Any, Any, Any]] = {}
        self._lock = threading.Lock()

    # -- device residency ----------------------------------------------------------------------
    @property
    def cached_bytes(self) -> int:
        """Device bytes held by cached segment vectors."""
        with self._lock:
            tensors = list(self._vectors.values())
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def vectors_of(self, reader: Any) -> Any:
        """The reader's vectors on the device, in their stored dtype (uploaded on first use)."""
        with self._lock:
            hit = self._vectors.get(reader)
            if hit is not None:
                return hit
            torch = self._torch
            host = reader.vectors
            out = torch.empty(
                tuple(host.shape), dtype=_dtype(torch, host.dtype), device=self.device
            )
            for lo in range(0, host.shape[0], UPLOAD_ROWS):
                chunk = np.array(host[lo : lo + UPLOAD_ROWS])  # a writable, contiguous copy
                out[lo : lo + len(chunk)].copy_(torch.from_numpy(chunk))
            self._vectors[reader] = out
            return out

    def _mask_of(self, mask: np.ndarray) -> tuple[Any, Any]:
        """(bool tensor, int64 tensor of matching rows) of a mask, uploaded once per mask."""
        key = id(mask)
        with self._lock:
            hit = self._masks.get(key)
            if hit is not None and hit[0]() is mask:
                return hit[1], hit[2]
        torch = self._torch
        dense = torch.from_numpy(np.array(mask, dtype=bool)).to(self.device)
        idx = torch.from_numpy(np.flatnonzero(mask).astype(np.int64)).to(self.device)
        try:
            ref = weakref.ref(mask)
            weakref.finalize(mask, self._forget_mask, key)
        except TypeError:  # not weak-referenceable: do not cache
            return dense, idx
        with self._lock:
            self._masks[key] = (ref, dense, idx)
        return dense, idx

    def _forget_mask(self, key: int) -> None:
        with self._lock:
            self._masks.pop(key, None)

    def _block_rows(self, dim: int, nq: int) -> int:
        per_row = 4 * dim + nq * (4 + 8 + 8)  # float32 block row + scores, keys, key temporaries
        return max(1024, self.block_bytes // per_row)

    # -- scans -------------------------------------------------------------------------------
    def exact(
        self, reader: Any, queries: np.ndarray, k: int, mask: np.ndarray | None
    ) -> list[Found]:
        torch = self._torch
        q = np.ascontiguousarray(queries, dtype=np.float32)
        nq, n = q.shape[0], int(reader.n)
        if n == 0 or nq == 0 or k <= 0:
            return [_EMPTY for _ in range(nq)]
        with torch.inference_mode():
            vecs = self.vectors_of(reader)
            qd = torch.from_numpy(q).to(self.device)
            step = self._block_rows(vecs.shape[1], nq)
            winners: list[Any] = []
            if mask is not None and int(mask.sum()) < DENSE * n:
                _, selected = self._mask_of(mask)
                for lo in range(0, selected.shape[0], step):
                    rows = selected[lo : lo + step]
                    block = vecs.index_select(0, rows)
                    winners.append(self._block_top(qd, block, rows, k, None))
            else:
                dense = self._mask_of(mask)[0] if mask is not None else None
                for lo in range(0, n, step):
                    hi = min(n, lo + step)
                    rows = torch.arange(lo, hi, dtype=torch.int64, device=self.device)
                    keep = dense[lo:hi] if dense is not None else None
                    winners.append(self._block_top(qd, vecs[lo:hi], rows, k, keep))
            if not winners:
                return [_EMPTY for _ in range(nq)]
            keys = torch.cat(winners, dim=1)
            if keys.shape[1] > k:
                keys = torch.topk(keys, k, dim=1, sorted=True).values
            else:
                keys = torch.sort(keys, dim=1, descending=True).values
            host = keys.cpu().numpy()
        return [_decode(host[j]) for j in range(nq)]

    def rows(self, reader: Any, rows: np.ndarray, q: np.ndarray, k: int) -> Found:
        torch = self._torch
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0 or k <= 0:
            return _EMPTY
        with torch.inference_mode():
            vecs = self.vectors_of(reader)
            qd = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32).reshape(1, -1))
            qd = qd.to(self.device)
            rd = torch.from_numpy(rows).to(self.device)
            step = self._block_rows(vecs.shape[1], 1)
            winners = [
                self._block_top(qd, vecs.index_select(0, rd[lo : lo + step]), rd[lo : lo + step], k)
                for lo in range(0, len(rows), step)
            ]
            keys = torch.cat(winners, dim=1)
            if keys.shape[1] > k:
                keys = torch.topk(keys, k, dim=1, sorted=True).values
            else:
                keys = torch.sort(keys, dim=1, descending=True).values
            host = keys.cpu().numpy()
        return _decode(host[0])

    def _block_top(self, qd: Any, block: Any, rows: Any, k: int, keep: Any = None) -> Any:
        """int64 keys of the best min(k, rows) of one block per query: (nq, <=k)."""
        torch = self._torch
        scores = qd @ block.float().T  # (nq, rows) float32
        if keep is not None:
            scores = scores.masked_fill(~keep, float("-inf"))
        keys = _keys(torch, scores, rows)
        kk = min(k, keys.shape[1])
        if kk == keys.shape[1]:
            return keys
        return torch.topk(keys, kk, dim=1, sorted=False).values


def _torch() -> Any:
    """torch, imported on first use only: ``search`` must load (and serve on the CPU) without
    it; this module is the one place in ``search`` allowed to import it
    (tests/test_import_rules.py)."""
    import torch

    return torch


def _dtype(torch: Any, dtype: np.dtype) -> Any:
    if dtype == np.float16:
        return torch.float16
    if dtype == np.float32:
        return torch.float32
    raise ValueError(f"unsupported vector dtype {dtype}")


def _keys(torch: Any, scores: Any, rows: Any) -> Any:
    """int64 keys ordered by (score descending, row ascending) for float32 scores and rows."""
    bits = (scores + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (bits.to(torch.int64) << 32) | (_LOW - rows).unsqueeze(0)


def _decode(keys: np.ndarray) -> Found:
    """(scores, rows) of keys sorted best first; entries of filtered-out rows dropped."""
    hi = (keys >> 32).astype(np.int32)
    hi = np.where(hi < 0, hi ^ 0x7FFFFFFF, hi).astype(np.int32)
    scores = hi.view(np.float32)
    rows = _LOW - (keys & _LOW)
    live = np.isfinite(scores)
    return scores[live].astype(np.float32), rows[live].astype(np.int64)
