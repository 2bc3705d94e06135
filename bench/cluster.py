"""Cluster benchmark: distributed ingest and sharded search, one file for both.

    python -m bench.cluster [--part ingest|search|all] [--photos 300] [--slide-copies 4]
                            [--worker-cpus 2] [--reps 1]      # + bench.cluster_search's options

Ingest (``--part ingest``): the same files (``--photos`` real PAD-UFES-20 photos and
``--slide-copies`` copies of each of the two real SVS slides, the TCGA one at --mpp-override
0.5; a copy is indexed as its own source) are indexed with ``classic/stain-texture`` into a fresh
home, in one run, by

- ``local``: single-process ``lamina index`` (its reader threads and the encoder in one process);
- ``cluster_1`` / ``cluster_2``: ``lamina index --cluster`` on a local Ray cluster of 1 and of 2
  worker nodes (``--worker-cpus`` CPUs each; the head has 0 CPUs and only coordinates), the
  default encoders (half the CPUs) and one CPU per reading task.

Per configuration: ``tiles_per_s`` = tiles / the run's own seconds (from taking the ingest lock
to the last commit; for a cluster run this includes joining the cluster and starting the encoder
actors, ``cluster.start_s``), ``tiles_per_s_after_start`` = tiles / (seconds - start_s),
``tiles_per_s_wall`` = tiles / the whole command's wall time (process start, imports),
and the best of ``--reps`` runs. Each run indexes into an empty home, so nothing is skipped.
Cluster start-up (``ray start`` of every node) is reported apart and is in neither rate.

Search (``--part search``): ``bench.cluster_search`` (sharded search on 2 and 4 shards vs one
process). Results go to bench/results/cluster.json, each part under its own key (``"ingest"``,
``"search"``); the file is read, updated and written back.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ray_local import start_cluster, stop_cluster

try:  # the search half lives in its own module
    from bench.cluster_search import add_arguments as add_search_arguments
    from bench.cluster_search import run as run_search
except ImportError:  # pragma: no cover - only before bench/cluster_search.py exists
    add_search_arguments = None  # type: ignore[assignment]
    run_search = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LAMINA_SHARED_DATA") or REPO.parent / "shared" / "data")
RESULTS = REPO / "bench" / "results" / "cluster.json"
LAMINA = str(Path(sys.executable).with_name("lamina"))
ENCODER = "classic/stain-texture"
SLIDES = ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs")


def _log(msg: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _inputs(work: Path, photos: int, copies: int) -> list[str]:
    """The photos (by path) and ``copies`` copies of each slide (in ``work``)."""
    images = sorted((SHARED / "derm" / "pad_ufes20_subset" / "images").iterdir())[:photos]
    if len(images) < photos:
        raise SystemExit(f"only {len(images)} photos in the shared data, {photos} asked")
    out = [str(p) for p in images]
    for i in range(copies):
        for name in SLIDES:
            dst = work / f"copy{i}-{name}"
            shutil.copyfile(SHARED / "slides" / name, dst)
            out.append(str(dst))
    return out


def _index(home: Path, files: list[str], *extra: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["LAMINA_HOME"] = str(home)
    cmd = [LAMINA, "index", *files, "--collection", "bench", "--encoder", ENCODER]
    cmd += ["--mpp-override", "0.5", "--no-progress", "--json", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"lamina index failed ({proc.returncode}): {proc.stderr[-3000:]}")
    report = json.loads(proc.stdout)
    start = (report.get("cluster") or {}).get("start_s", 0.0)
    return {
        "sources": report["indexed"],
        "tiles": report["tiles"],
        "seconds": report["seconds"],
        "wall_s": round(wall, 3),
        "tiles_per_s": round(report["tiles"] / report["seconds"], 1),
        "tiles_per_s_wall": round(report["tiles"] / wall, 1),
        "tiles_per_s_after_start": round(report["tiles"] / (report["seconds"] - start), 1),
        "cluster": report.get("cluster"),
    }


def _best(home_root: Path, files: list[str], reps: int, *extra: str) -> dict[str, Any]:
    runs = []
    for r in range(reps):
        home = home_root / f"rep{r}"
        runs.append(_index(home, files, *extra))
        shutil.rmtree(home, ignore_errors=True)
    return max(runs, key=lambda x: x["tiles_per_s"])


def run_ingest(args: argparse.Namespace) -> dict[str, Any]:
    """Measure (see the module doc); returns the ``"ingest"`` record."""
    work = Path(tempfile.mkdtemp(prefix="lamina-cluster-ingest-"))
    try:
        files = _inputs(work, args.photos, args.slide_copies)
        _log(f"{len(files)} files: {args.photos} photos, {2 * args.slide_copies} slides")
        configs: dict[str, Any] = {}
        _log("local: single-process lamina index")
        configs["local"] = _best(work / "local", files, args.reps)
        _log(f"local: {configs['local']}")
        for n in (1, 2):
            t0 = time.perf_counter()
            cluster = start_cluster(n, head_cpus=0, worker_cpus=args.worker_cpus)
            started = time.perf_counter() - t0
            try:
                cluster.wait_for_nodes(n + 1)
                name = f"cluster_{n}"
                _log(f"{name}: {n} worker nodes x {args.worker_cpus} CPUs ({started:.1f} s start)")
                rec = _best(work / name, files, args.reps, "--cluster", cluster.address)
                rec["worker_nodes"] = n
                rec["cluster_start_s"] = round(started, 1)
                configs[name] = rec
                _log(f"{name}: {rec}")
            finally:
                stop_cluster(cluster)
        tiles = {c["tiles"] for c in configs.values()}
        if len(tiles) != 1:
            raise SystemExit(f"the configurations indexed different tile counts: {tiles}")
        base = configs["local"]["tiles_per_s"]
        for rec in configs.values():
            rec["vs_local"] = round(rec["tiles_per_s"] / base, 2)
        return {
            "encoder": ENCODER,
            "files": {"photos": args.photos, "slides": 2 * args.slide_copies},
            "tiles": tiles.pop(),
            "reps": args.reps,
            "worker_cpus": args.worker_cpus,
            "configs": configs,
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "note": "all nodes on this one machine (shared with other work), run under nice",
            },
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _save(key: str, record: dict[str, Any]) -> None:
    doc: dict[str, Any] = {}
    if RESULTS.is_file():
        try:
            doc = json.loads(RESULTS.read_text())
        except ValueError:
            doc = {}
    doc[key] = record
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["ingest", "search", "all"], default="all")
    ap.add_argument("--photos", type=int, default=300)
    ap.add_argument("--slide-copies", type=int, default=4)
    ap.add_argument("--worker-cpus", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    if add_search_arguments is not None:
        add_search_arguments(ap)
    args = ap.parse_args()
    if args.part in ("ingest", "all"):
        record = run_ingest(args)
        _save("ingest", record)
        _log(f"ingest written to {RESULTS}")
    if args.part in ("search", "all"):
        if run_search is None:
            raise SystemExit("the search part needs bench/cluster_search.py")
        run_search(args)  # writes its own "search" record


if __name__ == "__main__":
    main()
