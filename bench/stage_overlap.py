"""How far reading and encoding can overlap on this machine (the bound behind the ingest ratio).

    python -m bench.stage_overlap [--encoder classic/stain-texture]

On the TCGA slide's tissue grid (190 tiles at 224 px / 0.5 µm/px) it times, each alone: reading
with 2 threads and with 1 thread, and encoding pre-read tiles; then reading (2 threads) and
encoding at the same time with no pipeline between them. With every core busy in each stage,
``(read_1thread + encode) / cores`` is the shortest any pipeline can take; the best possible
``end_to_end / min(read, encode)`` ratio follows. Writes bench/results/stage_overlap.json.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LAMINA_SHARED_DATA") or REPO.parent / "shared" / "data")


def main() -> None:
    from lamina.encoders import create_encoder
    from lamina.indexer.slides import Slide
    from lamina.indexer.tile_stream import TileStream
    from lamina.indexer.tiling import choose_level, plan_grid

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--encoder", default="classic/stain-texture")
    parser.add_argument("--tiles", type=int, default=190)
    args = parser.parse_args()
    slide = Slide(SHARED / "slides" / "tcga-cr-7395-01a-01-ts1.svs", mpp_override=0.5)
    choice = choose_level(slide.level_downsamples, slide.mpp, 0.5, 224, slide.name)
    lw, lh = slide.level_dimensions[choice.level]
    grid = plan_grid(lw, lh, choice)[: args.tiles]
    enc = create_encoder(args.encoder, device="cpu")

    def read_all(workers: int) -> list[np.ndarray]:
        stream = TileStream(lambda t: slide.read_tile(t, 224), grid, workers=workers, window=128)
        out = list(stream)
        stream.close()
        return out

    def timed(fn, *a):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        fn(*a)
        return time.perf_counter() - t0

    tiles = np.stack(read_all(2))
    enc.embed(tiles[:8])
    cores = os.cpu_count() or 1
    read_n = min(timed(read_all, cores) for _ in range(3))
    read_1 = min(timed(read_all, 1) for _ in range(3))
    encode = min(timed(enc.embed, tiles) for _ in range(3))
    box: dict[str, float] = {}
    th = threading.Thread(target=lambda: box.setdefault("read", timed(read_all, cores)))
    t0 = time.perf_counter()
    th.start()
    box["encode"] = timed(enc.embed, tiles)
    th.join()
    together = time.perf_counter() - t0
    floor = (read_1 + encode) / cores
    doc = {
        "command": "python -m bench.stage_overlap",
        "encoder": args.encoder,
        "tiles": len(grid),
        "cores": cores,
        "seconds": {
            "read_all_cores": read_n,
            "read_1_thread": read_1,
            "encode": encode,
            "both_at_once": together,
        },
        "pipeline_floor_s": floor,
        "best_possible_ratio": max(read_n, encode) / floor,
    }
    out = REPO / "bench" / "results" / "stage_overlap.json"
    out.write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
