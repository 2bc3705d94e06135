"""Path / Derm Foundation: TensorFlow against tf2onnx + onnxruntime, on this machine's CPU.

    python -m bench.foundation_routes          # writes bench/results/foundation_routes.json

Random-weight SavedModels with the published signatures (encoders/tf_testing.py) stand in for
the gated weights: the Path model at the real ViT-S/16 size (width 384, 12 blocks, 6 heads,
224 px), so its speed is the real model's up to weights. Both routes get the same real H&E tiles
(LC25000) as float32 in [0, 1]; throughput is the best of ``--reps`` passes over ``--n`` tiles in
batches of ``--batch``, after one warm-up batch. The TensorFlow figure goes through Lamina's
encoder (``create_encoder("path/foundation")``), so it includes the uint8 -> float scaling.
Agreement is the smallest cosine between the two routes' vectors of the same tile. The Derm
signature is offered to tf2onnx too; the result (it converts or which ops it cannot) is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def convert(saved_model: Path, out: Path, opset: int = 17) -> tuple[bool, float, str]:
    """tf2onnx on the ``serving_default`` signature: (converted, seconds, unsupported-op lines)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_model),
         "--signature_def", "serving_default", "--opset", str(opset), "--output", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    problems = [ln.split(" - ERROR - ", 1)[-1] for ln in proc.stderr.splitlines() if "ERROR" in ln]
    return proc.returncode == 0 and out.is_file(), seconds, "; ".join(dict.fromkeys(problems))


def _best(fn: Any, tiles: np.ndarray, batch: int, reps: int) -> float:
    fn(tiles[:batch])
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for i in range(0, len(tiles), batch):
            fn(tiles[i : i + batch])
        best = min(best, time.perf_counter() - t0)
    return len(tiles) / best


def compare_path(
    workdir: Path,
    tiles: np.ndarray,
    *,
    width: int = 384,
    depth: int = 12,
    heads: int = 6,
    batch: int = 32,
    reps: int = 3,
) -> dict[str, Any]:
    """Both routes on one Path-signature model; images/s and their agreement."""
    import onnxruntime as ort

    from lamina.encoders import create_encoder
    from lamina.encoders.tf_testing import build_path_savedmodel

    model = build_path_savedmodel(
        workdir / f"path-{width}x{depth}", width=width, depth=depth, heads=heads
    )
    enc = create_encoder("path/foundation", weights=model, device="cpu", batch_size=batch)
    ok, conv_s, problems = convert(model, workdir / "path.onnx")
    if not ok:
        raise RuntimeError(f"tf2onnx could not convert the Path model: {problems}")
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                 if p in ort.get_available_providers()]  # fmt: skip
    sess = ort.InferenceSession(str(workdir / "path.onnx"), providers=providers)
    name = sess.get_inputs()[0].name

    def run_ort(x: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(["output_0"], {name: x.astype(np.float32) / 255.0})[0])

    a = enc.embed(tiles)
    b = run_ort(tiles)
    cos = np.sum(a * b, 1) / np.linalg.norm(b, axis=1)  # a is already unit length
    return {
        "model": f"ViT width {width}, depth {depth}, heads {heads}, 224 px, 384-d out",
        "tiles": len(tiles),
        "batch": batch,
        "tensorflow_images_per_s": round(_best(enc.embed, tiles, batch, reps), 1),
        "onnxruntime_images_per_s": round(_best(run_ort, tiles, batch, reps), 1),
        "onnxruntime_providers": sess.get_providers(),
        "min_cosine_onnx_vs_tf": float(cos.min()),
        "conversion_seconds": round(conv_s, 1),
    }


def try_derm(workdir: Path) -> dict[str, Any]:
    import onnxruntime as ort

    from lamina.encoders.tf_testing import build_derm_savedmodel

    model = build_derm_savedmodel(workdir / "derm")
    ok, seconds, problems = convert(model, workdir / "derm.onnx")
    runs = False
    if ok:  # tf2onnx leaves unsupported ops in the graph and exits 0
        try:
            ort.InferenceSession(str(workdir / "derm.onnx"), providers=["CPUExecutionProvider"])
            runs = True
        except Exception as exc:  # noqa: BLE001 - the reason is the result
            problems = (problems + "; " if problems else "") + f"onnxruntime: {exc}"[:300]
    return {
        "converted": ok and not problems,
        "runs_on_onnxruntime": runs,
        "seconds": round(seconds, 1),
        "tf2onnx_errors": problems,
    }


def load_tiles(n: int) -> np.ndarray:
    from PIL import Image

    from bench.encoder_speed import SHARED

    files = sorted((SHARED / "path_tiles" / "lc25000_lung_224" / "images").glob("*.jp*g"))[:n]
    return np.stack([np.asarray(Image.open(f).convert("RGB").resize((224, 224))) for f in files])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=256, help="tiles per pass")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/foundation_routes.json")
    args = parser.parse_args()
    from lamina.encoders.foundation import import_tensorflow

    tf = import_tensorflow("bench")  # first: it orders the triton / TensorFlow imports
    import onnxruntime
    import tf2onnx

    tiles = load_tiles(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        path = compare_path(Path(tmp), tiles, batch=args.batch, reps=args.reps)
        derm = try_derm(Path(tmp))
    doc = {
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "cpu": platform.processor(),
            "load_average_1m_after": round(os.getloadavg()[0], 2),
        },
        "versions": {
            "tensorflow": tf.__version__,
            "tf2onnx": tf2onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "path_foundation_vit_s16": path,
        "derm_foundation_signature_to_onnx": derm,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
