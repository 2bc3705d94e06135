"""Slide ingest throughput: end-to-end tiles/s next to the read-only and encode-only rates.

    python -m bench.ingest [--reps 3] [--workers N] [--encoders KEY,KEY]
                                               # writes bench/results/ingest.json, prints a table

For each encoder, on each real slide of the shared kit (CMU-1-Small-Region at its 0.499 µm/px;
the TCGA frozen section, which has no mpp, with --mpp-override 0.5), on both in one run, and on
a generated 8k pyramidal slide (see SYNTHETIC), all at 224 px / 0.5 µm/px:

* ``end_to_end``: the real pipeline (``Ingest.run`` into a fresh collection: hash, open, tissue
  mask, plan, parallel reads, batched encoding, segment commit with fsync);
* ``read``: the same tiles read with OpenSlide (read, composite on white, resize) by the same
  number of worker threads, nothing else;
* ``encode``: the encoder alone on those tiles, pre-read, in the pipeline's batch size.

``ratio = end_to_end / min(read, encode)``: 1.0 means the pipeline adds nothing to its slower
stage. ``prepare`` (open, tissue mask, plan; part of end_to_end, in neither baseline) is shown
because on these small single- and two-level crops it is a large share of the work. Every
time is the best of ``--reps`` runs, all measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LAMINA_SHARED_DATA") or REPO.parent / "shared" / "data")
SLIDES = (("CMU-1-Small-Region.svs", None), ("tcga-cr-7395-01a-01-ts1.svs", 0.5))
SYNTHETIC = "synthetic-8k.tiff"
"""A generated 8192 x 6144 px, 0.5 µm/px, 3-level (1, 4, 16) tiled TIFF with an elliptic tissue
area: the shape of a real scan (a pyramid, mostly tissue-free levels to plan on), unlike the
two small crops whose tissue mask must decode a level as fine as the tiles themselves."""
ENCODERS = ("classic/stain-texture", "test/tiny-vit")
TARGET_RATIO = 0.8


def synthetic_slide(folder: Path) -> Path:
    """Write (once) the synthetic pyramidal slide into ``folder``."""
    import tifffile
    from PIL import Image

    path = folder / SYNTHETIC
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = 8192, 6144
    low = np.kron(rng.random((64, 64)), np.ones((16, 16)))[..., None] * 0.7
    patch = (
        np.array([215, 135, 180]) * (1 - low)
        + np.array([110, 60, 150]) * low
        + rng.normal(0, 8, (1024, 1024, 3))
    )
    texture = np.clip(patch, 0, 255).astype(np.uint8)
    yy, xx = np.ogrid[:h, :w]
    inside = ((xx - w / 2) / (w * 0.45)) ** 2 + ((yy - h / 2) / (h * 0.42)) ** 2 <= 1
    img = np.full((h, w, 3), 240, np.uint8)
    img[inside] = np.tile(texture, (h // 1024, w // 1024, 1))[inside]
    levels = [img]
    for _ in range(2):
        prev = Image.fromarray(levels[-1])
        levels.append(np.asarray(prev.reduce(4)))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(3).hex()}.tmp")  # one per writer
    with tifffile.TiffWriter(tmp) as tw:
        for i, level in enumerate(levels):
            ppcm = 1e4 / (0.5 * 4**i)
            tw.write(
                level,
                tile=(256, 256),
                compression="zlib",
                photometric="rgb",
                resolution=(ppcm, ppcm),
                resolutionunit="CENTIMETER",
                subfiletype=0 if i == 0 else 1,
                maxworkers=os.cpu_count(),
            )
    tmp.replace(path)
    return path


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _options(workers: int, override: float | None) -> Any:
    from lamina.indexer import IngestOptions

    return IngestOptions(
        tile_px=224,
        mpp=0.5,
        mpp_override=override,
        min_tissue=0.5,
        batch_size=64,
        workers=workers,
        progress=False,
    )


def plan(path: Path, options: Any, reps: int) -> tuple[float, list[dict[str, Any]]]:
    """(best seconds, tile rows) of opening the slide, its tissue mask and its tile plan."""
    from lamina.indexer.slides import prepare_slide
    from lamina.indexer.sources import SourceFile

    best, tiles = float("inf"), []
    for _ in range(reps):
        t0 = time.perf_counter()
        prepared = prepare_slide(SourceFile(path, "slide"), "bench", {}, options)
        best = min(best, time.perf_counter() - t0)
        prepared.close()
        tiles = prepared.tiles
    return best, tiles


def read_rate(
    path: Path, options: Any, tiles: list[dict[str, Any]], reps: int
) -> tuple[float, list[np.ndarray]]:
    from lamina.indexer.slides import Slide
    from lamina.indexer.tiling import TileSpec

    specs = [TileSpec(t["x"], t["y"], t["level"], t["size_px"]) for t in tiles]
    best, images = float("inf"), []
    for _ in range(reps):
        with Slide(path, mpp_override=options.mpp_override) as slide:  # fresh tile cache
            t0 = time.perf_counter()
            with ThreadPoolExecutor(options.workers) as pool:
                images = list(pool.map(lambda s: slide.read_tile(s, options.tile_px), specs))
            best = min(best, time.perf_counter() - t0)
    return best, images


def encode_rate(encoder: Any, images: list[np.ndarray], batch_size: int, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for i in range(0, len(images), batch_size):
            encoder.embed(np.stack(images[i : i + batch_size]))
        best = min(best, time.perf_counter() - t0)
    return best


def end_to_end(encoder: Any, paths: list[Path], options: Any, reps: int) -> tuple[float, int]:
    from lamina.indexer.pipeline import Ingest, open_collection_for
    from lamina.search import Store

    best, n = float("inf"), 0
    for _ in range(reps):
        with tempfile.TemporaryDirectory(prefix="lamina-bench-") as home:
            col = open_collection_for(Store(home), "bench", encoder, options)
            t0 = time.perf_counter()
            report = Ingest(col, encoder, options).run(paths)
            best = min(best, time.perf_counter() - t0)
            if not report.ok:
                raise RuntimeError(f"ingest failed: {report.failed}")
            n = report.tiles
    return best, n


def _row(
    encoder: str, slide: str, n: int, e2e_s: float, read_s: float, enc_s: float, prep_s: float
) -> dict:
    rates = {k: n / v for k, v in (("end_to_end", e2e_s), ("read", read_s), ("encode", enc_s))}
    return {
        "encoder": encoder,
        "slide": slide,
        "tiles": n,
        **{f"{k}_tiles_per_s": round(v, 1) for k, v in rates.items()},
        "seconds": {
            "end_to_end": round(e2e_s, 3),
            "read": round(read_s, 3),
            "encode": round(enc_s, 3),
            "prepare": round(prep_s, 3),
        },
        "ratio": round(rates["end_to_end"] / min(rates["read"], rates["encode"]), 3),
    }


def bench(encoder_key: str, workers: int, reps: int, synthetic: Path) -> list[dict[str, Any]]:
    from lamina.encoders import create_encoder

    encoder = create_encoder(encoder_key, device="cpu")
    encoder.embed(np.zeros((4, 224, 224, 3), np.uint8))  # warm up
    rows, totals = [], {"n": 0, "read": 0.0, "encode": 0.0, "prepare": 0.0}
    for name, override in SLIDES:
        path = SHARED / "slides" / name
        options = _options(workers, override)
        prep_s, tiles = plan(path, options, reps)
        read_s, images = read_rate(path, options, tiles, reps)
        enc_s = encode_rate(encoder, images, options.batch_size, reps)
        e2e_s, n = end_to_end(encoder, [path], options, reps)
        if n != len(tiles):
            raise RuntimeError(f"{name}: pipeline stored {n} tiles, plan has {len(tiles)}")
        rows.append(_row(encoder_key, name, n, e2e_s, read_s, enc_s, prep_s))
        totals["n"] += n
        totals["read"] += read_s
        totals["encode"] += enc_s
        totals["prepare"] += prep_s
    # both slides in one run (one TCGA override applies only to the slide without mpp)
    both = [SHARED / "slides" / name for name, _ in SLIDES]
    e2e_s, n = end_to_end(encoder, both, _options(workers, 0.5), reps)
    rows.append(
        _row(encoder_key, "both", n, e2e_s, totals["read"], totals["encode"], totals["prepare"])
    )
    options = _options(workers, None)
    prep_s, tiles = plan(synthetic, options, reps)
    read_s, images = read_rate(synthetic, options, tiles, reps)
    enc_s = encode_rate(encoder, images, options.batch_size, reps)
    e2e_s, n = end_to_end(encoder, [synthetic], options, reps)
    rows.append(_row(encoder_key, SYNTHETIC, n, e2e_s, read_s, enc_s, prep_s))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'encoder':<22} {'slide':<28} {'tiles':>5} {'e2e/s':>8} {'read/s':>8} "
        f"{'encode/s':>9} {'ratio':>6} {'prep ms':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['encoder']:<22} {r['slide']:<28} {r['tiles']:>5} "
            f"{r['end_to_end_tiles_per_s']:>8.1f} {r['read_tiles_per_s']:>8.1f} "
            f"{r['encode_tiles_per_s']:>9.1f} {r['ratio']:>6.2f} "
            f"{r['seconds']['prepare'] * 1000:>8.0f}"
        )
    return "\n".join(lines)


def main() -> None:
    from lamina.indexer import IngestOptions

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=IngestOptions().workers)
    parser.add_argument("--encoders", default=",".join(ENCODERS))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ingest.json")
    parser.add_argument(
        "--scratch",
        type=Path,
        default=REPO / "bench" / "results" / "tmp",
        help="where the synthetic slide is written (once)",
    )
    args = parser.parse_args()
    synthetic = synthetic_slide(args.scratch)
    rows: list[dict[str, Any]] = []
    for key in args.encoders.split(","):
        rows += bench(key.strip(), args.workers, args.reps, synthetic)
    doc = {
        "machine": machine(),
        "command": "python -m bench.ingest",
        "settings": {
            "tile_px": 224,
            "mpp": 0.5,
            "min_tissue": 0.5,
            "batch_size": 64,
            "workers": args.workers,
            "reps": args.reps,
            "device": "cpu",
        },
        "target_ratio": {"classic/stain-texture": TARGET_RATIO},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(table(rows))
    print(
        f"machine: {doc['machine']['cpu_count']} CPUs, {doc['machine']['cpu_model']}; "
        f"written to {args.out}"
    )


if __name__ == "__main__":
    main()
