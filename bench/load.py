"""Load test: concurrent HTTP clients against a real ``lamina serve`` while ``lamina index``
commits into the same collection.

    .venv/bin/python -m bench.load [--clients 64] [--seconds 60] [--workers 8]

Indexes the first 200 derm photos, starts ``lamina serve --workers W`` (MAX_INFLIGHT W/2),
then for ``--seconds``: a loop of ``lamina index`` runs, 10 new photos each, into the same
collection (each commit is a new snapshot the server picks up), and ``--clients`` threads
each sending requests back to back: search by stored tile (half filtered), by vector, by
uploaded photo, tile metadata, collection status. Counted per answer: 2xx ok, 429/503 shed
(load refused with Retry-After, not an error), anything else or a transport failure an
error. Latency percentiles are over the ok answers (and, separately, the shed ones); the
server's VmRSS is sampled every 0.5 s.

Writes bench/results/load.json (``--out``); exits 1 on any error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.serve import DERM, clean_env, index_cmd, index_derm, rss_mb, serve

RESULTS = Path(__file__).resolve().parent / "results" / "load.json"
FIRST = 200
BATCH = 10


def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    a = np.asarray(values) * 1000
    return {
        "p50": round(float(np.percentile(a, 50)), 1),
        "p99": round(float(np.percentile(a, 99)), 1),
        "max": round(float(a.max()), 1),
    }


class Ingest(threading.Thread):
    """``lamina index`` runs of BATCH new photos each, one after another, until stopped."""

    def __init__(self, home: Path, photos: list[Path], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.home, self.photos, self.stop = home, photos, stop
        self.runs: list[int] = []  # exit codes
        self.indexed = 0

    def run(self) -> None:
        for i in range(0, len(self.photos), BATCH):
            if self.stop.is_set():
                return
            batch = self.photos[i : i + BATCH]
            rc = subprocess.run(
                index_cmd(self.home, batch),
                env=clean_env(self.home),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ).returncode
            self.runs.append(rc)
            self.indexed += len(batch) if rc == 0 else 0


def run_load(clients: int, seconds: float, workers: int = 8) -> dict[str, Any]:
    import requests

    photos = sorted((DERM / "images").glob("*.jpg"))
    with tempfile.TemporaryDirectory(prefix="lamina-load-") as tmp:
        home = Path(tmp) / "home"
        index_derm(home, photos[:FIRST])
        from lamina.search import Store

        dim = Store(home).collection("derm").dim
        uploads = [p.read_bytes() for p in photos[:8]]
        with serve(home, workers) as (url, proc):
            api = url + "/api/v1"
            stop = threading.Event()
            lock = threading.Lock()
            statuses: Counter[int] = Counter()
            kinds: Counter[str] = Counter()
            ok_lat: list[float] = []
            kind_lat: dict[str, list[float]] = {}
            shed_lat: list[float] = []
            errors: list[str] = []
            snapshots: set[str] = set()
            rss: list[float] = [rss_mb(proc.pid)]

            def client(seed: int) -> None:
                rng = random.Random(seed)
                session = requests.Session()
                while not stop.is_set():
                    kind = rng.choice(
                        [
                            "tile",
                            "tile",
                            "tile_filtered",
                            "vector",
                            "image",
                            "tile_get",
                            "collection",
                        ]
                    )
                    tile = rng.randrange(FIRST)
                    t0 = time.monotonic()
                    try:
                        if kind == "tile":
                            r = session.post(
                                f"{api}/collections/derm/search",
                                json={"tile_id": tile, "k": 10},
                                timeout=60,
                            )
                        elif kind == "tile_filtered":
                            body: dict[str, Any] = {
                                "tile_id": tile,
                                "k": 10,
                                "filter": {"diagnostic": {"in": ["BCC", "MEL"]}},
                            }
                            r = session.post(
                                f"{api}/collections/derm/search", json=body, timeout=60
                            )
                        elif kind == "vector":
                            v = [rng.uniform(-1, 1) for _ in range(dim)]
                            r = session.post(
                                f"{api}/collections/derm/search",
                                json={"vector": v, "k": 10},
                                timeout=60,
                            )
                        elif kind == "image":
                            r = session.post(
                                f"{api}/collections/derm/search",
                                data={"k": "5"},
                                files={"image": ("q.jpg", rng.choice(uploads))},
                                timeout=60,
                            )
                        elif kind == "tile_get":
                            r = session.get(f"{api}/tiles/{tile}?collection=derm", timeout=60)
                        else:
                            r = session.get(f"{api}/collections/derm", timeout=60)
                    except requests.RequestException as exc:
                        with lock:
                            errors.append(f"{kind}: {type(exc).__name__}: {exc}"[:300])
                        continue
                    dt = time.monotonic() - t0
                    with lock:
                        statuses[r.status_code] += 1
                        kinds[kind] += 1
                        if r.status_code < 300:
                            ok_lat.append(dt)
                            kind_lat.setdefault(kind, []).append(dt)
                            snap = r.json().get("snapshot") if "search" in r.url else None
                            if snap:
                                snapshots.add(snap)
                        elif r.status_code in (429, 503):
                            shed_lat.append(dt)
                        else:
                            errors.append(f"{kind}: {r.status_code} {r.text[:200]}")
                    if r.status_code in (429, 503):
                        stop.wait(float(r.headers.get("Retry-After") or 1) * rng.random())

            warm = requests.Session()  # the view, the encoder, the connection path, once
            warm.post(f"{api}/collections/derm/search", json={"tile_id": 0, "k": 10}, timeout=300)
            warm.post(
                f"{api}/collections/derm/search",
                data={"k": "5"},
                files={"image": ("q.jpg", uploads[0])},
                timeout=300,
            )
            ingest = Ingest(home, photos[FIRST:], stop)
            threads = [
                threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)
            ]
            started = time.monotonic()
            ingest.start()
            for t in threads:
                t.start()
            while time.monotonic() - started < seconds:
                time.sleep(0.5)
                rss.append(rss_mb(proc.pid))
            stop.set()
            for t in threads:
                t.join(timeout=90)
            elapsed = time.monotonic() - started
            ingest.join(timeout=120)
            alive = proc.poll() is None
    n = sum(statuses.values())
    shed = statuses[429] + statuses[503]
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "server_workers": workers,
        "max_inflight": max(1, workers // 2),
        "requests": n,
        "answered_per_s": round(n / elapsed, 1),
        "ok": n - shed - _bad(statuses),
        "shed_429_503": shed,
        "errors": len(errors),
        "error_samples": errors[:20],
        "status_histogram": {str(k): v for k, v in sorted(statuses.items())},
        "by_kind": dict(sorted(kinds.items())),
        "latency_ms_ok": _pct(ok_lat),
        "latency_ms_shed": _pct(shed_lat),
        "latency_ms_ok_by_kind": {k: _pct(v) for k, v in sorted(kind_lat.items())},
        "snapshots_seen": len(snapshots),
        "ingest": {
            "runs": len(ingest.runs),
            "failed_runs": sum(1 for rc in ingest.runs if rc),
            "photos_indexed": ingest.indexed,
        },
        "server_rss_mb": {
            "start": round(rss[0], 1),
            "max": round(max(rss), 1),
            "end": round(rss[-1], 1),
        },
        "server_alive_after": alive,
    }


def _bad(statuses: Counter[int]) -> int:
    return sum(v for k, v in statuses.items() if k >= 300 and k not in (429, 503))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    result = run_load(args.clients, args.seconds, args.workers)
    result["command"] = "python -m bench.load " + " ".join(sys.argv[1:])
    result["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "requests",
                    "ok",
                    "shed_429_503",
                    "errors",
                    "latency_ms_ok",
                    "snapshots_seen",
                    "ingest",
                    "server_rss_mb",
                )
            }
        )
    )
    print(f"wrote {args.out}")
    if result["errors"] or result["ingest"]["failed_runs"] or not result["server_alive_after"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
