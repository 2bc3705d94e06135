"""10M tiles on one 2-core, 24 GiB machine: float16 vectors, IVF over the segments, filtered
and unfiltered search (``python -m bench.search_10m``; results in bench/results/search_10m.json).

Method. The same generative world as ``bench.search_scale`` (tissue-type centres, site offsets,
slides of 100-2000 tiles, labels that follow the tissue type), generated and written in chunks
of ``--chunk`` tiles so no full float32 copy of the collection ever exists (10M x 384 float32
would be 15.4 GB). The collection stores float16 (7.7 GB) in segments of one chunk each; the
index is ``IVF<nlist>`` trained on 64 vectors per list, each segment then rewritten in list
order (or, with ``--factory IVF4096,PQ48``, per-segment FAISS IVF-PQ codes re-ranked exactly
from the float16 vectors). Ground truth is a brute-force pass (numpy, float32 arithmetic over the float16 rows) per
filter; latency is single queries, one at a time, after a warm-up (milliseconds,
``time.perf_counter``); recall@10 and the fraction of answers with exactly k hits per filter.
Filters: a set of hospitals reaching ~10 % and ~50 % of tiles, one label within ~10 % of sites
(~1 %), and none.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.scale_data import (
    LABELS,
    N_SITES,
    _greedy,
    _new_slide,
    _tiles,
    make_world,
    site_name,
)

K = 10


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write(home: Path, n: int, dim: int, chunk: int, seed: int, dry: bool = False) -> dict[str, Any]:
    """Write n tiles in chunks; returns per-tile site and label codes and the queries. With
    ``dry`` the same data is generated (same seed, same order) but nothing is written."""
    from lamina.search.store import Store

    world = make_world(dim, seed)
    col = Store(home).open_or_create(
        "c10m",
        encoder="bench/synthetic",
        fingerprint="bench/synthetic@0000000000000000",
        embed_dim=dim,
        tile_px=224,
        mpp=0.5,
        vector_dtype="float16",
    )
    sites = np.empty(n, np.int16)
    labels = np.empty(n, np.int8)
    slides: list[Any] = []
    filled, slide_no = 0, 0
    rng = np.random.default_rng([seed, 1])
    while filled < n:
        writer = None if dry else col.writer("bench-10m")
        stop = min(n, filled + chunk)
        while filled < stop:
            site = int(rng.choice(N_SITES, p=world.site_p))
            count = min(int(np.clip(rng.lognormal(np.log(400), 0.7), 100, 2000)), stop - filled)
            s = _new_slide(world, rng, site)
            if len(slides) < 200:
                slides.append(s)
            v, lab = _tiles(world, rng, s, count)
            src = {
                "source_id": f"{seed:08x}{slide_no:056x}",
                "source": f"s{slide_no:07d}.svs",
                "kind": "slide",
                "properties": {},
            }
            if writer is not None:
                rows = [
                    {
                        "x": 224 * i,
                        "y": 0,
                        "level": 0,
                        "size_px": 224,
                        "tile_px": 224,
                        "site": site_name(site),
                        "label": LABELS[int(lab[i])],
                    }
                    for i in range(count)
                ]
                writer.add_source(src, rows, v)
            sites[filled : filled + count] = site
            labels[filled : filled + count] = lab
            filled += count
            slide_no += 1
        if writer is not None:
            writer.commit()
        _log(f"{'generated' if dry else 'written'} {filled:,} tiles")
    qrng = np.random.default_rng([seed, 2])
    queries = np.stack(
        [_tiles(world, qrng, slides[int(qrng.integers(len(slides)))], 1)[0][0] for _ in range(100)]
    )
    return {"sites": sites, "labels": labels, "queries": queries.astype(np.float32)}


def filters_for(sites: np.ndarray, labels: np.ndarray) -> list[tuple[str, Any, np.ndarray | None]]:
    freq = {
        int(i): float(c) for i, c in enumerate(np.bincount(sites, minlength=N_SITES) / len(sites))
    }
    out: list[tuple[str, Any, np.ndarray | None]] = [("unfiltered", None, None)]
    for name, target in (("sel_10pct", 0.10), ("sel_50pct", 0.50)):
        chosen = _greedy(freq, target)
        mask = np.isin(sites, chosen)
        out.append((name, {"site": {"in": [site_name(c) for c in chosen]}}, mask))
    chosen = _greedy(freq, 0.08)
    rare = int(np.argmin(np.bincount(labels, minlength=len(LABELS))[:4]))  # a common-ish label
    mask = np.isin(sites, chosen) & (labels == rare)
    out.append(
        ("sel_1pct", {"site": {"in": [site_name(c) for c in chosen]}, "label": LABELS[rare]}, mask)
    )
    return out


def truth(col: Any, queries: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Exact top-k tile ids per query (float32 arithmetic over the stored float16 rows)."""
    best_s = np.full((len(queries), K), -np.inf, np.float32)
    best_i = np.full((len(queries), K), -1, np.int64)
    import pyarrow.parquet as pq

    for seg in col.segments():
        ids = pq.read_table(seg.tiles_path, columns=["tile_id"]).column("tile_id").to_numpy()
        vec = seg.vectors()
        for lo in range(0, seg.n_tiles, 131_072):
            block = np.asarray(vec[lo : lo + 131_072], np.float32)
            s = queries @ block.T
            if mask is not None:  # masks are by tile id (ids follow generation order)
                s[:, ~mask[ids[lo : lo + len(block)]]] = -np.inf
            cand_s = np.concatenate([best_s, s], axis=1)
            cand_i = np.concatenate(
                [best_i, np.broadcast_to(ids[lo : lo + len(block)], s.shape)], 1
            )
            top = np.argsort(-cand_s, axis=1, kind="stable")[:, :K]
            best_s = np.take_along_axis(cand_s, top, 1)
            best_i = np.take_along_axis(cand_i, top, 1)
    return best_i


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--chunk", type=int, default=1_000_000)
    ap.add_argument("--nlist", type=int, default=4096)
    ap.add_argument(
        "--factory", default=None, help="index factory (default IVF<nlist>); e.g. IVF4096,PQ48"
    )
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--home", type=Path, default=Path("/tmp/lamina-10m"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/search_10m.json"))
    ap.add_argument("--keep", action="store_true", help="keep the generated home")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="query a kept home again (data regenerated, not written)",
    )
    ap.add_argument("--refine", type=int, default=10, help="re-ranked candidates per hit (PQ)")
    args = ap.parse_args()
    from lamina.search.ann import update_index
    from lamina.search.compaction import cluster
    from lamina.search.service import SearchService
    from lamina.search.store import Store

    reuse = args.reuse and (args.home / "collections" / "c10m").is_dir()
    if not reuse:
        shutil.rmtree(args.home, ignore_errors=True)
    result: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "config": {k: str(v) for k, v in vars(args).items()},
        "stages": {},
    }
    t0 = time.perf_counter()
    data = write(args.home, args.n, args.dim, args.chunk, seed=0, dry=reuse)
    result["stages"]["write_seconds" if not reuse else "generate_seconds"] = round(
        time.perf_counter() - t0, 1
    )
    col = Store(args.home).collection("c10m")
    col.set_index(
        args.factory or f"IVF{args.nlist}", {"nprobe": args.nprobe, "refine": args.refine}
    )
    if not reuse:
        t0 = time.perf_counter()
        result["stages"]["index"] = update_index(col, lambda s, d, t: None)
        result["stages"]["index_seconds"] = round(time.perf_counter() - t0, 1)
        _log(f"indexed in {result['stages']['index_seconds']} s")
        t0 = time.perf_counter()
        result["stages"]["clustered"] = len(cluster(col)["clustered"])
        result["stages"]["cluster_seconds"] = round(time.perf_counter() - t0, 1)
        _log(f"clustered in {result['stages']['cluster_seconds']} s")
    queries = data["queries"]
    base = rss_mb()
    svc = SearchService(Store(args.home))
    t0 = time.perf_counter()
    svc.view("c10m")
    result["stages"]["view_seconds"] = round(time.perf_counter() - t0, 2)
    result["stages"]["rss_view_mb"] = round(rss_mb() - base, 1)
    result["stages"]["vector_bytes_mb"] = round(args.n * args.dim * 2 / 2**20, 1)
    rows = []
    for name, spec, mask in filters_for(data["sites"], data["labels"]):
        _log(f"ground truth {name}")
        cached = args.home / f"truth-{name}.npy"  # the data are seeded: a kept home's truth holds
        if reuse and cached.is_file():
            gt = np.load(cached)
        else:
            gt = truth(col, queries, mask)
            if args.keep:
                np.save(cached, gt)
        for q in queries[:5]:
            svc.search("c10m", q, K, filter_json=spec)
        lat, rec, exact_k, plan = [], [], [], None
        for q, g in zip(queries, gt, strict=True):
            t = time.perf_counter()
            res = svc.search("c10m", q, K, filter_json=spec)
            lat.append((time.perf_counter() - t) * 1000)
            got = {h.tile_id for h in res.hits}
            rec.append(len(got & set(g[g >= 0].tolist())) / max(1, int((g >= 0).sum())))
            exact_k.append(len(res.hits) == min(K, int((g >= 0).sum())))
            plan = res.plan
        row = {
            "filter": name,
            "match_fraction": 1.0 if mask is None else round(float(mask.mean()), 4),
            "recall_at_10": round(float(np.mean(rec)), 4),
            "exactly_k": round(float(np.mean(exact_k)), 4),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "plan": plan,
        }
        _log(json.dumps({k: v for k, v in row.items() if k != "plan"}))
        rows.append(row)
    result["results"] = rows
    result["stages"]["rss_after_queries_mb"] = round(rss_mb() - base, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    if not args.keep:
        shutil.rmtree(args.home, ignore_errors=True)


if __name__ == "__main__":
    main()
