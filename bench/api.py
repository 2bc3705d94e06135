"""HTTP API latency: search-by-tile-id through `lamina serve` (waitress) vs raw in-process FAISS.

    .venv/bin/python -m bench.api [--n 100000] [--dim 384] [--queries 400]

Builds a synthetic collection (random unit vectors with realistic metadata) by writing
segments directly, starts `lamina serve` in a subprocess, and measures p50/p99 latency and
QPS with 1, 4 and 16 concurrent clients (threads, the real Client over HTTP), against raw
FAISS (IndexFlatIP over the same vectors) and Lamina's own in-process search. Writes
bench/results/api.json and prints p50(HTTP, 1 client) / p50(raw FAISS) and what HTTP adds to
the in-process p50 (milliseconds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "api.json"
DIAGNOSES = ["MEL", "BCC", "SCC", "NEV", "ACK", "SEK"]


def build_collection(
    home: Path, n: int, dim: int, tiles_per_slide: int = 100, seed: int = 0
) -> str:
    from lamina.search import Store

    rng = np.random.default_rng(seed)
    col = Store(home).open_or_create(
        "bench",
        encoder="bench/random",
        fingerprint="bench-random@1",
        embed_dim=dim,
        tile_px=224,
        mpp=0.5,
    )
    writer = col.writer("bench")
    n_slides = n // tiles_per_slide
    for s in range(n_slides):
        vecs = rng.normal(size=(tiles_per_slide, dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        patient = f"P{s // 3:05d}"
        meta = {
            "patient_id": patient,
            "diagnostic": DIAGNOSES[s % len(DIAGNOSES)],
            "age": int(20 + (s * 7) % 70),
            "site": f"site-{s % 5}",
        }
        tiles = [
            {
                "kind": "tile",
                "x": 224 * (i % 10),
                "y": 224 * (i // 10),
                "level": 0,
                "size_px": 224,
                "tile_px": 224,
                "mpp": 0.5,
                "tissue_fraction": 0.9,
                **meta,
            }
            for i in range(tiles_per_slide)
        ]
        writer.add_source(
            {
                "source_id": f"slide-{s:05d}",
                "source": f"/data/slides/S{s:05d}.svs",
                "kind": "slide",
                "width": 2240,
                "height": 2240,
                "mpp": 0.25,
            },
            tiles,
            vecs,
        )
    writer.commit()
    return "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentiles(lat: list[float]) -> dict[str, float]:
    arr = np.asarray(lat) * 1000
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
        "n": len(lat),
    }


def raw_faiss(home: Path, queries: np.ndarray, k: int) -> dict[str, float]:
    """A FAISS IndexFlatIP over the same vectors, queried in process by the same tiles."""
    import faiss

    from lamina.search import SearchService, Store

    view = SearchService(Store(home)).view("bench")
    vectors = view.vectors[np.arange(view.n_tiles)]
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    positions = view.positions_of(queries)
    lat = []
    for pos in positions:
        t0 = time.perf_counter()
        index.search(vectors[pos : pos + 1], k)
        lat.append(time.perf_counter() - t0)
    return percentiles(lat)


def in_process(home: Path, queries: np.ndarray, k: int) -> dict[str, float]:
    """Lamina's own search by tile id, in process (what the server does per request)."""
    from lamina.search import SearchService, Store

    svc = SearchService(Store(home))
    for t in queries[:20]:
        svc.search_tile("bench", int(t), k=k)
    lat = []
    for t in queries:
        t0 = time.perf_counter()
        svc.search_tile("bench", int(t), k=k)
        lat.append(time.perf_counter() - t0)
    return percentiles(lat)


def http_run(url: str, queries: np.ndarray, k: int, clients: int) -> dict[str, float]:
    from lamina.api.client import Client

    per = [Client(url, timeout=120) for _ in range(clients)]
    chunks = np.array_split(queries, clients)

    def work(i: int) -> list[float]:
        out = []
        for t in chunks[i]:
            t0 = time.perf_counter()
            per[i].search_tile("bench", int(t), k=k)
            out.append(time.perf_counter() - t0)
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = [x for part in pool.map(work, range(clients)) for x in part]
    wall = time.perf_counter() - t0
    return {**percentiles(lat), "qps": round(len(lat) / wall, 1), "clients": clients}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=16, help="server threads")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lamina-bench-api-")) / "home"
    t0 = time.perf_counter()
    build_collection(home, args.n, args.dim)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    queries = rng.integers(0, args.n, size=args.queries)
    raw = raw_faiss(home, queries, args.k)
    local = in_process(home, queries, args.k)

    port = free_port()
    exe = Path(sys.executable).with_name("lamina")
    cmd = (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-c", "from lamina.api.cli import main; main()"]
    )
    # latency and throughput of admitted requests: every client thread may be in flight (the
    # server's default admits half its threads and sheds the rest with 429, see bench.load)
    env = dict(os.environ, LAMINA_HOME=str(home), LAMINA_MAX_INFLIGHT=str(args.threads))
    env.pop("LAMINA_API_TOKEN", None)
    server = subprocess.Popen(
        [*cmd, "serve", "--port", str(port), "--workers", str(args.threads)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        from lamina.api.client import Client, LaminaError

        deadline = time.monotonic() + 60
        while True:
            try:
                Client(url, timeout=5).health()
                break
            except LaminaError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("server did not start") from None
                time.sleep(0.2)
        warm = Client(url, timeout=300)
        for t in queries[:20]:  # builds the view + index once, warms the connection path
            warm.search_tile("bench", int(t), k=args.k)
        runs = {str(c): http_run(url, queries, args.k, c) for c in (1, 4, 16)}
    finally:
        server.terminate()
        server.wait(timeout=30)

    result: dict[str, Any] = {
        "what": f"search by tile_id, k={args.k}, Flat index, {args.n} x {args.dim} vectors",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "build_seconds": round(build_s, 1),
        "server_threads": args.threads,
        "raw_faiss": raw,
        "in_process": local,
        "http": runs,
        "overhead_ratio_p50_1client": round(runs["1"]["p50_ms"] / raw["p50_ms"], 2),
        "http_minus_in_process_p50_ms": round(runs["1"]["p50_ms"] - local["p50_ms"], 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(
        f"overhead p50(HTTP, 1 client) / p50(raw FAISS) = {result['overhead_ratio_p50_1client']}x;"
        f" HTTP adds {result['http_minus_in_process_p50_ms']} ms to the in-process p50"
    )


if __name__ == "__main__":
    main()
