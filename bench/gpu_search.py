"""Exact and IVF search on the GPU: the torch-cuda scoring backend against the numpy backend.

    python -m bench.gpu_search [--quick] [--device cuda|torch-cpu] [--budget-s 330]
                               [--home DIR] [--out PATH]

Self-contained (numpy, faiss, torch; nothing downloaded). Data: seeded clustered unit vectors
(1,000 centres, cosine ~0.7 to their centre; generated with torch on the bench device, so a
seed reproduces on the same kind of device), one ``site`` column 0-9 (uniform, so ``site=3``
keeps ~10 %), written through the store API (``open_or_create``, ``writer().add_source`` with
sources of 2,000 tiles, a segment every 500,000 tiles) into a temporary home:

- ``1M x 384 float32``: Flat, then ``IVF4096`` (``col.set_index``, ``search.ann.update_index``;
  k-means on 256 x nlist samples), searched with ``nprobe`` 16;
- ``5M x 384 float16``: Flat.

Per collection x index x filter (none, ``site=3``) x backend (numpy, torch): p50/p99 latency
of single queries (``planner.search`` with one query, after 2 warm-ups) and of batches of 256
queries (one call), in milliseconds (``time.perf_counter``), k = 10. Held-out queries are
generated like the data. The numpy backend's reps are capped by time (it is the slow side at
5M: each cell reports how many queries it timed). Agreement: the fraction of queries whose
top-10 positions are identical between the backends (over every query both answered) and the
largest score difference. The torch backend's first call (upload of the vectors) is timed
apart and excluded. ``--budget-s`` skips what would not fit (recorded as skipped). Results:
``bench/results/gpu_search.json`` (rewritten after every cell) and a markdown table.

``--quick``: 20k float32 / 40k float16 vectors of dim 64, IVF128 with nprobe 2, on torch-cpu
unless CUDA is present -- a functional check of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from lamina.search import planner
from lamina.search.ann import AnnIndex, update_index
from lamina.search.filters import parse_filters
from lamina.search.gpu import TorchBackend
from lamina.search.scan import Backend, NumpyBackend
from lamina.search.store import Collection, Store
from lamina.search.views import CollectionView

K = 10
BATCH = 256
SOURCE_TILES = 2_000
SEGMENT_TILES = 500_000
CENTRES = 1_000


def log(msg: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)


def unit_clustered(
    n: int, dim: int, centres: torch.Tensor, gen: torch.Generator, device: torch.device
) -> np.ndarray:
    """n unit vectors near random centres (noise norm ~1 around unit centres)."""
    idx = torch.randint(0, centres.shape[0], (n,), generator=gen, device=device)
    noise = torch.randn((n, dim), generator=gen, device=device) / dim**0.5
    v = centres[idx] + noise
    v = v / v.norm(dim=1, keepdim=True)
    return v.cpu().numpy().astype(np.float32)


def build(
    home: Path, name: str, n: int, dim: int, dtype: str, seed: int, device: torch.device
) -> tuple[Collection, np.ndarray, dict[str, Any]]:
    """Write the collection through the store API; returns it, 512 held-out queries, timings."""
    gen = torch.Generator(device=device).manual_seed(seed)
    centres = torch.randn((CENTRES, dim), generator=gen, device=device)
    centres = centres / centres.norm(dim=1, keepdim=True)
    rng = np.random.default_rng(seed)
    col = Store(home).open_or_create(
        name,
        encoder="bench/synthetic",
        fingerprint=f"bench/synthetic@{seed}",
        embed_dim=dim,
        tile_px=224,
        mpp=0.5,
        vector_dtype=dtype,
    )
    t0 = time.perf_counter()
    gen_s = 0.0
    chunk = 250_000
    writer = None
    in_segment = 0
    for lo in range(0, n, chunk):
        t = time.perf_counter()
        vecs = unit_clustered(min(chunk, n - lo), dim, centres, gen, device)
        sites = rng.integers(0, 10, len(vecs)).tolist()
        gen_s += time.perf_counter() - t
        for s in range(0, len(vecs), SOURCE_TILES):
            if writer is None:
                writer = col.writer(f"bench-{lo + s}")
                in_segment = 0
            rows = [
                {"x": i, "y": 0, "site": site} for i, site in enumerate(sites[s : s + SOURCE_TILES])
            ]
            src_id = f"{name}-{lo + s}"
            src = {"source_id": src_id, "source": f"/synthetic/{src_id}.svs", "kind": "slide"}
            writer.add_source(src, rows, vecs[s : s + SOURCE_TILES])
            in_segment += len(rows)
            if in_segment >= SEGMENT_TILES:
                writer.commit()
                writer = None
    if writer is not None:
        writer.commit()
    queries = unit_clustered(2 * BATCH, dim, centres, gen, device)
    total = time.perf_counter() - t0
    return col, queries, {"generate_s": round(gen_s, 2), "write_s": round(total - gen_s, 2)}


def view_of(col: Collection) -> CollectionView:
    return CollectionView(col, col.snapshot(), AnnIndex.load(col))


def pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 3) if xs else None


def measure(
    view: CollectionView,
    queries: np.ndarray,
    conds: list[Any],
    params: dict[str, Any] | None,
    backend: Backend,
    single: tuple[int, float],
    batches: tuple[int, float],
) -> tuple[dict[str, Any], dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Time single queries and batches; (row of figures, query index -> (positions, scores))."""
    answers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    plan = None
    for i in range(2):  # warm-up (masks, list counts, device uploads)
        planner.search(view, queries[i : i + 1], K, conds, params, backend)
    most, cap = single
    lat: list[float] = []
    t_end = time.perf_counter() + cap
    for i in range(min(most, len(queries))):
        t = time.perf_counter()
        found, plan = planner.search(view, queries[i : i + 1], K, conds, params, backend)
        lat.append((time.perf_counter() - t) * 1000)
        answers[i] = (found[0].positions, found[0].scores)
        if i >= 1 and time.perf_counter() > t_end:
            break
    most, cap = batches
    blat: list[float] = []
    t_end = time.perf_counter() + cap
    n_batches = len(queries) // BATCH
    for b in range(most):
        lo = (b % n_batches) * BATCH
        t = time.perf_counter()
        found, plan = planner.search(view, queries[lo : lo + BATCH], K, conds, params, backend)
        blat.append((time.perf_counter() - t) * 1000)
        for j, r in enumerate(found):
            answers[lo + j] = (r.positions, r.scores)
        if time.perf_counter() > t_end:
            break
    assert plan is not None
    row = {
        "backend": backend.name,
        "strategy": plan.strategy,
        "matched_fraction": round(plan.selectivity, 4),
        "single_p50_ms": pct(lat, 50),
        "single_p99_ms": pct(lat, 99),
        "single_n": len(lat),
        "batch_p50_ms": pct(blat, 50),
        "batch_p99_ms": pct(blat, 99),
        "batch_n": len(blat),
        "batch_qps": round(BATCH * len(blat) / (sum(blat) / 1000), 1) if blat else None,
    }
    return row, answers


def agreement(
    a: dict[int, tuple[np.ndarray, np.ndarray]], b: dict[int, tuple[np.ndarray, np.ndarray]]
) -> dict[str, Any]:
    common = sorted(set(a) & set(b))
    same = sum(np.array_equal(a[i][0], b[i][0]) for i in common)
    diffs = [
        float(np.abs(a[i][1] - b[i][1]).max())
        for i in common
        if len(a[i][1]) == len(b[i][1]) and len(a[i][1])
    ]
    return {
        "compared": len(common),
        "identical_top10_fraction": round(same / len(common), 4) if common else None,
        "max_score_diff": max(diffs) if diffs else None,
    }


def machine(device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["gpu_memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small data, a functional check")
    ap.add_argument("--device", choices=["cuda", "torch-cpu"], default=None)
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip cells past this")
    ap.add_argument("--home", type=Path, default=None, help="keep the collections here")
    ap.add_argument("--out", type=Path, default=None, help="bench/results/gpu_search[_quick].json")
    args = ap.parse_args(argv)
    if args.out is None:
        name = "gpu_search_quick.json" if args.quick else "gpu_search.json"
        args.out = Path("bench/results") / name
    t0 = time.perf_counter()
    want = args.device or ("cuda" if torch.cuda.is_available() else "torch-cpu")
    device = torch.device("cuda" if want == "cuda" else "cpu")
    if args.quick:
        dim, nlist, nprobe = 64, 128, 2
        sets = [("f32", 20_000, "float32", True), ("f16", 40_000, "float16", False)]
        single = {"numpy": (20, 5.0), "torch": (40, 5.0)}
        batches = {"numpy": (2, 5.0), "torch": (3, 5.0)}
    else:
        dim, nlist, nprobe = 384, 4096, 16
        sets = [("f32", 1_000_000, "float32", True), ("f16", 5_000_000, "float16", False)]
        single = {"numpy": (50, 6.0), "torch": (200, 4.0)}
        batches = {"numpy": (4, 8.0), "torch": (10, 4.0)}
    numpy_backend = NumpyBackend()
    torch_be = TorchBackend("cuda" if device.type == "cuda" else "cpu")
    backends: list[tuple[str, Backend]] = [("numpy", numpy_backend), ("torch", torch_be)]
    tmp = Path(tempfile.mkdtemp(prefix="lamina-gpu-bench-")) if args.home is None else args.home
    result: dict[str, Any] = {
        "command": "python -m bench.gpu_search" + (" --quick" if args.quick else ""),
        "machine": machine(device),
        "settings": {
            "k": K,
            "batch": BATCH,
            "dim": dim,
            "nlist": nlist,
            "nprobe": nprobe,
            "device": torch_be.name,
            "budget_s": args.budget_s,
        },
        "builds": {},
        "rows": [],
        "skipped": [],
    }

    def save() -> None:
        result["elapsed_s"] = round(time.perf_counter() - t0, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    log(f"device {torch_be.name}; home {tmp}", t0)
    try:
        todo: list[tuple[str, Collection, np.ndarray, str]] = []
        later: list[tuple[str, Collection, np.ndarray, str]] = []
        for tag, n, dtype, ivf in sets:
            col, queries, timing = build(tmp, f"bench-{tag}", n, dim, dtype, seed=7, device=device)
            result["builds"][f"{tag}-{n}"] = {"n": n, "dtype": dtype, **timing}
            log(f"built {n:,} x {dim} {dtype}: {timing}", t0)
            todo.append((tag, col, queries, "Flat"))
            if ivf:
                later.append((tag, col, queries, f"IVF{nlist}"))
        todo += later  # the index build (the least predictable stage) last
        for tag, col, queries, factory in todo:
            if factory != "Flat":
                if time.perf_counter() - t0 > args.budget_s - 150:
                    result["skipped"].append(f"{tag} {factory}: under 150 s of budget left")
                    log(f"skip {tag} {factory} (budget)", t0)
                    continue
                t = time.perf_counter()
                col.set_index(factory)
                info = update_index(col)
                build_s = round(time.perf_counter() - t, 1)
                result["builds"][f"{tag}-{factory}"] = {"seconds": build_s, **info}
                log(f"{tag}: {factory} built in {build_s}s", t0)
            view = view_of(col)
            params = {"nprobe": nprobe} if factory != "Flat" else None
            t = time.perf_counter()
            found, _ = planner.search(view, queries[:1], K, [], params, torch_be)
            upload = round(time.perf_counter() - t, 2)
            log(f"{tag} {factory}: first torch call (upload) {upload}s", t0)
            for fname, exprs in (("none", []), ("site=3 (~10%)", ["site=3"])):
                conds = parse_filters(exprs)
                answers = {}
                for key, backend in backends:
                    if time.perf_counter() - t0 > args.budget_s:
                        result["skipped"].append(f"{tag} {factory} {fname} {key}: budget")
                        continue
                    row, answers[key] = measure(
                        view, queries, conds, params, backend, single[key], batches[key]
                    )
                    row.update(
                        {"collection": f"{tag} {view.n_tiles:,}", "index": factory, "filter": fname}
                    )
                    if key == "torch":
                        row["first_call_s"] = upload
                        row["device_bytes"] = torch_be.cached_bytes
                    result["rows"].append(row)
                    log(
                        f"{tag} {factory} {fname} {key}: single p50 {row['single_p50_ms']} ms "
                        f"(n={row['single_n']}), batch p50 {row['batch_p50_ms']} ms",
                        t0,
                    )
                    save()
                if len(answers) == 2:
                    agree = agreement(answers["numpy"], answers["torch"])
                    result["rows"][-1]["agreement"] = agree
                    log(f"  agreement {agree}", t0)
                    save()
    finally:
        if args.home is None:
            shutil.rmtree(tmp, ignore_errors=True)
    save()
    print(table(result["rows"]))
    log(f"wrote {args.out}", t0)
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| collection | index | filter | backend | single p50 / p99 ms (n) | "
        "batch-256 p50 / p99 ms (n) | identical top-10 |"
    )
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        agree = r.get("agreement", {}).get("identical_top10_fraction", "")
        lines.append(
            f"| {r['collection']} | {r['index']} | {r['filter']} | {r['backend']} | "
            f"{r['single_p50_ms']} / {r['single_p99_ms']} ({r['single_n']}) | "
            f"{r['batch_p50_ms']} / {r['batch_p99_ms']} ({r['batch_n']}) | {agree} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
