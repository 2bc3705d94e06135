"""Measurement primitives shared by the search-at-scale benchmark's systems (bench/search_scale.py).

Quality of one system's answers to one filter, against the exact filtered top-``K``:

- ``recall_at_10``: mean over queries of |hits ∩ truth| / |truth| (fraction, 0-1);
- ``exactly_k``: fraction of queries answered with min(``K``, |truth|) hits;
- ``filter_violations``: fraction of all hits whose row does not match the filter.

Speed: ``p50_ms`` / ``p99_ms`` are percentiles of single-query wall time in milliseconds
(``time.perf_counter`` around one call, queries one at a time after ``WARMUP`` warm-up queries);
``batch_qps`` is queries per second with every query in one call (where the system has one).
Result rows are given as row numbers of the generated data (``-1`` = no hit, ignored).
Memory: ``vm_status`` reads VmRSS / VmHWM of the calling process in MB (MiB, /proc/self/status).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

K = 10
NPROBES = [1, 2, 4, 8, 16, 32, 64, 128]
TARGET_RECALL = 0.95
WARMUP = 5

Rows = list[dict[str, Any]]


def log(msg: str) -> None:
    """A timestamped progress line on stderr (stdout carries the table and children's JSON)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values (unknown types as ``str``), else its ``repr``."""
    try:
        return json.loads(json.dumps(obj, default=str))
    except (TypeError, ValueError):
        return repr(obj)


def percentiles_ms(lat_s: list[float]) -> dict[str, float | None]:
    """p50 and p99 in milliseconds of latencies given in seconds (``None`` when empty)."""
    if not lat_s:
        return {"p50_ms": None, "p99_ms": None}
    arr = np.asarray(lat_s) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
    }


def quality(results: list[np.ndarray], gt: np.ndarray, mask: np.ndarray | None) -> dict[str, Any]:
    """recall@K, exactly-K fraction and filter violations of per-query result rows."""
    recalls, exact, hits, bad = [], 0, 0, 0
    for res, truth in zip(results, gt, strict=True):
        got = np.asarray(res, np.int64)
        got = got[got >= 0][:K]
        want = truth[truth >= 0]
        recalls.append(len(set(got.tolist()) & set(want.tolist())) / max(len(want), 1))
        exact += int(len(got) == min(K, len(want)))
        hits += len(got)
        if mask is not None and len(got):
            bad += int((~mask[got]).sum())
    return {
        "recall_at_10": round(float(np.mean(recalls)), 4),
        "exactly_k": round(exact / len(results), 4),
        "filter_violations": round(bad / max(hits, 1), 4),
    }


def measure(
    one: Callable[[int], np.ndarray],
    batch: Callable[[], list[np.ndarray]] | None,
    gt: np.ndarray,
    mask: np.ndarray | None,
    n_queries: int,
) -> dict[str, Any]:
    """Single-query latency and quality, then batch QPS (and its recall) if ``batch`` exists."""
    for i in range(min(WARMUP, n_queries)):
        one(i)
    results, lat = [], []
    for i in range(n_queries):
        t0 = time.perf_counter()
        r = one(i)
        lat.append(time.perf_counter() - t0)
        results.append(r)
    out: dict[str, Any] = {**quality(results, gt, mask), **percentiles_ms(lat)}
    out["batch_qps"] = None
    if batch is not None:
        try:
            t0 = time.perf_counter()
            res_b = batch()
            wall = time.perf_counter() - t0
            out["batch_qps"] = round(n_queries / wall, 1)
            out["batch_recall_at_10"] = quality(res_b, gt, mask)["recall_at_10"]
        except Exception as exc:  # noqa: BLE001 - the batch form is optional per system
            out["batch_error"] = f"{type(exc).__name__}: {exc}"
    return out


def vm_status() -> dict[str, float]:
    """VmRSS and VmHWM of this process in MB (from /proc/self/status)."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                out[key.lower() + "_mb"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return out


def ivf_nlist(n: int) -> int:
    """IVF list count used by FAISS and Lamina alike: 4096 at 1M rows, else ~4 sqrt(n)."""
    return 4096 if n >= 1_000_000 else max(16, int(round(4 * np.sqrt(n))))
