"""`make bench`: every benchmark in one go, results in bench/results/*.json.

    python -m bench.run [--quick]

Runs, in order: encoder throughput, kNN retrieval quality (classic and test encoders), slide
ingest throughput, API latency, search at scale (1M tiles against raw FAISS and LanceDB; its
--quick smoke run with --quick), annotate/delete/erase at 1M against LanceDB (skipped with
--quick) and the worked example (linear probes; the slowest, skipped with --quick). Each step is a separate process so one failure does not hide the others' results.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STEPS: list[tuple[str, list[str]]] = [
    ("encoder speed", ["bench.encoder_speed"]),
    ("kNN, classic", ["bench.knn_eval"]),
    ("kNN, test/tiny-vit", ["bench.knn_eval", "--encoder", "test/tiny-vit"]),
    ("slide ingest", ["bench.ingest"]),
    ("read/encode overlap bound", ["bench.stage_overlap"]),
    ("API latency", ["bench.api"]),
    ("search at scale", ["bench.search_scale"]),
    ("annotate, delete, erase at scale", ["bench.lifecycle"]),
    ("worked example", ["bench.worked_example"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="skip the worked example; search at scale at n=20000"
    )
    args = parser.parse_args()
    failed = []
    for name, argv in STEPS:
        if args.quick and name in ("worked example", "annotate, delete, erase at scale"):
            continue
        if args.quick and name == "search at scale":
            argv = [*argv, "--quick"]
        print(f"\n=== {name}: python -m {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", *argv], cwd=REPO)
        print(f"=== {name}: exit {proc.returncode} in {time.perf_counter() - t0:.0f}s", flush=True)
        if proc.returncode != 0:
            failed.append(name)
    if failed:
        raise SystemExit(f"benchmarks failed: {', '.join(failed)}")
    print("\nresults in bench/results/; summary in docs/benchmarks.md")


if __name__ == "__main__":
    main()
