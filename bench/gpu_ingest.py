"""The slide pipeline on a GPU: `--device cuda` end to end, against the same run on the CPU.

    python -m bench.gpu_ingest [--slides DIR]     # writes bench/results/gpu_ingest.json

Indexes the two real slides (CMU-1-Small-Region; the TCGA section with --mpp-override 0.5) with
`path/vit_small_patch16` (ViT-S/16, seeded random weights through the real --weights path) once
with `--device cuda` (bf16 autocast) and once on the CPU, and reports tiles/s of each, the
encoder-only rate on the GPU, and how closely the GPU vectors match the CPU ones tile by tile.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LAMINA_SHARED_DATA") or REPO.parent / "shared" / "data")
KEY = "path/vit_small_patch16"


def _weights(tmp: Path) -> Path:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    path = tmp / "vit_s16.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _run(slides: list[Path], weights: Path, device: str, home: Path) -> dict[str, object]:
    from lamina.encoders import create_encoder
    from lamina.indexer import IngestOptions, ingest
    from lamina.search import SearchService, Store

    enc = create_encoder(KEY, weights=weights, device=device, batch_size=256)
    opts = IngestOptions(progress=False, mpp_override=0.5, batch_size=256)
    t0 = time.perf_counter()
    report = ingest(Store(home), "wsi", slides, enc, opts)
    seconds = time.perf_counter() - t0
    view = SearchService(Store(home)).view("wsi")
    rows = view.sql("SELECT tile_id, source_id, x, y FROM tiles")
    keyed = {(r["source_id"], r["x"], r["y"]): view.tile_vectors([r["tile_id"]])[0] for r in rows}
    return {
        "device": device,
        "ok": report.ok,
        "tiles": report.tiles,
        "seconds": round(seconds, 3),
        "tiles_per_s": round(report.tiles / seconds, 1),
        "fingerprint": enc.fingerprint,
        "_vectors": keyed,
    }


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slides", type=Path, default=SHARED / "slides")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_ingest.json")
    args = parser.parse_args()
    slides = [args.slides / "CMU-1-Small-Region.svs", args.slides / "tcga-cr-7395-01a-01-ts1.svs"]
    tmp = Path(tempfile.mkdtemp())
    weights = _weights(tmp)
    runs = [_run(slides, weights, d, tmp / d) for d in ("cuda", "cpu")]
    gpu, cpu = runs[0].pop("_vectors"), runs[1].pop("_vectors")
    common = sorted(set(gpu) & set(cpu))
    cos = np.array([float(gpu[k] @ cpu[k]) for k in common])
    from lamina.encoders import create_encoder

    enc = create_encoder(KEY, weights=weights, device="cuda", batch_size=256)
    batch = np.random.default_rng(0).integers(0, 256, (1024, 224, 224, 3), dtype=np.uint8)
    enc.embed(batch[:256])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    enc.embed(batch)
    torch.cuda.synchronize()
    doc = {
        "command": "python -m bench.gpu_ingest",
        "gpu": torch.cuda.get_device_name(0),
        "cpu_cores": os.cpu_count(),
        "encoder": KEY,
        "runs": runs,
        "same_tiles": len(common) == len(gpu) == len(cpu),
        "cosine_gpu_vs_cpu": {
            "min": round(float(cos.min()), 5),
            "mean": round(float(cos.mean()), 5),
        },
        "gpu_encoder_only_tiles_per_s": round(1024 / (time.perf_counter() - t0), 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
