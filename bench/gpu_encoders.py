"""GPU check of the torch encoders: CUDA + bf16 autocast vs CPU float32, and GPU throughput.

Runs with only torch, timm, numpy, pillow and safetensors importable (the `encoders` package
needs nothing else), so it runs on a bare GPU machine from a copy of the repository:

    python -m bench.gpu_encoders --out bench/results/gpu_encoders.json

Weights are random (seeded) state dicts written to a temporary folder and loaded through the
real `--weights` path: the numbers measure the architecture, not a particular checkpoint.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = [  # key, timm architecture, timm kwargs, GPU batch, timed batches
    ("test/tiny-vit", None, {}, 512, 10),
    ("path/vit_small_patch16", "vit_small_patch16_224", {}, 512, 10),
    ("path/uni", "vit_large_patch16_224", {"init_values": 1e-5, "dynamic_img_size": True}, 256, 6),
    ("derm/bit_resnet101x3", "resnetv2_101x3_bit", {}, 64, 6),
]


def _images(n: int, px: int, seed: int) -> np.ndarray:
    """Smooth colour fields plus noise: more image-like than uniform noise, deterministic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:px, 0:px] / px
    out = np.empty((n, px, px, 3), np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(0.5, 6, 3)
        base = np.stack([np.sin(a * x + c), np.cos(b * y), np.sin(a * x * y * 3)], -1)
        noise = rng.normal(0, 0.15, (px, px, 3))
        out[i] = np.clip((base + noise + 1) * 127, 0, 255).astype(np.uint8)
    return out


def main() -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    from lamina.encoders import create_encoder, get_config, resolve_device

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_encoders.json"))
    args = parser.parse_args()
    results: dict = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "auto_device": resolve_device("auto"),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "cases": [],
    }
    print(json.dumps({k: v for k, v in results.items() if k != "cases"}), flush=True)
    tmp = Path(tempfile.mkdtemp())
    for key, arch, kwargs, batch, reps in CASES:
        cfg = get_config(key)
        weights = None
        if arch is not None:
            torch.manual_seed(0)
            model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
            weights = tmp / f"{key.replace('/', '_')}.safetensors"
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
            del model
        px = cfg.input_px
        check = _images(8, px, 1)
        cpu = create_encoder(key, weights=weights, device="cpu")
        v_cpu = cpu.embed(check)
        del cpu
        gpu = create_encoder(key, weights=weights, device="cuda", batch_size=batch)
        v_gpu = gpu.embed(check)
        cos = (v_cpu * v_gpu).sum(1)
        same_top1 = float(
            np.mean(
                np.argmax(v_cpu @ v_cpu.T - 2 * np.eye(8), 1)
                == np.argmax(v_gpu @ v_gpu.T - 2 * np.eye(8), 1)
            )
        )
        data = _images(batch, px, 2)
        gpu.embed(data)  # warm-up (cudnn autotune, allocator)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            gpu.embed(data)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        row = {
            "key": key,
            "fingerprint_cpu_equals_gpu": gpu.fingerprint
            == create_encoder(key, weights=weights, device="cpu").fingerprint,
            "input_px": px,
            "embed_dim": cfg.embed_dim,
            "batch": batch,
            "images_per_s": round(batch * reps / dt, 1),
            "cosine_gpu_bf16_vs_cpu_fp32": {
                "min": round(float(cos.min()), 5),
                "mean": round(float(cos.mean()), 5),
            },
            "nearest_neighbour_agreement": same_top1,
            "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        }
        results["cases"].append(row)
        print(json.dumps(row), flush=True)
        del gpu
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
