"""Embedding throughput (images/s) of the built-in encoders on this machine's CPU.

    python -m bench.encoder_speed            # writes bench/results/encoder_speed.json

Inputs are real H&E tiles (LC25000, 224 px) from the shared data kit, resized to each encoder's
input size by the encoder itself, as in an ingest. The classic encoder is measured on one core
(threads pinned to one CPU) and on all cores; torch encoders with torch's default threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LAMINA_SHARED_DATA") or REPO.parent / "shared" / "data")


def load_tiles(n: int) -> np.ndarray:
    from PIL import Image

    files = sorted((SHARED / "path_tiles" / "lc25000_lung_224" / "images").glob("*.jp*g"))[:n]
    return np.stack([np.asarray(Image.open(f).convert("RGB").resize((224, 224))) for f in files])


def measure(key: str, n: int, reps: int) -> dict[str, float | str | int]:
    from lamina.encoders import create_encoder

    enc = create_encoder(key, device="cpu")
    tiles = load_tiles(n)
    enc.embed(tiles[:16])
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        enc.embed(tiles)
        best = min(best, time.perf_counter() - t0)
    return {
        "key": key,
        "images": len(tiles),
        "input_px": enc.input_px,
        "images_per_s": round(len(tiles) / best, 1),
    }


def _single_core(key: str, n: int, reps: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    code = (
        f"import json; from bench.encoder_speed import measure; "
        f"print(json.dumps(measure({key!r}, {n}, {reps})))"
    )
    cmd = ["taskset", "-c", "0", sys.executable, "-c", code]
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "encoder_speed.json"
    )
    args = parser.parse_args()
    rows = []
    one = _single_core("classic/stain-texture", args.n, 3)
    one["cores"] = 1
    rows.append(one)
    for key in ("classic/stain-texture", "test/tiny-vit", "test/tiny-resnet"):
        row = measure(key, args.n, 3)
        row["cores"] = os.cpu_count() or 1
        rows.append(row)
    doc = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "command": "python -m bench.encoder_speed",
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(f"{'encoder':24} {'cores':>5} {'px':>4} {'images/s':>10}")
    for r in rows:
        print(f"{r['key']:24} {r['cores']:>5} {r['input_px']:>4} {r['images_per_s']:>10}")


if __name__ == "__main__":
    main()
