"""Seeded clustered unit vectors with tile-like metadata, written as real segments (tests only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lamina.search.store import Collection, Store


def clustered(
    rng: np.random.Generator, n: int, dim: int, n_centres: int
) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors, cluster of each) around ``n_centres`` random centres."""
    centres = rng.normal(size=(n_centres, dim)).astype(np.float32)
    cluster = rng.integers(0, n_centres, size=n)
    v = centres[cluster] + 0.35 * rng.normal(size=(n, dim)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32), cluster


def write_collection(
    home: Path,
    name: str,
    vectors: np.ndarray,
    cluster: np.ndarray,
    *,
    segments: int = 4,
    dtype: str = "float32",
    rng: np.random.Generator | None = None,
) -> Collection:
    """Write the vectors as ``segments`` committed segments of 100-tile slides. Metadata:
    ``bucket`` (uniform 0..999: ``bucket < 10*p`` selects p %), ``cluster_group`` (the cluster,
    mod 20: a filter correlated with the vectors) and ``patient_id`` (one per 3 slides)."""
    rng = rng or np.random.default_rng(0)
    col = Store(home).open_or_create(
        name,
        encoder="test/x",
        fingerprint="test/x@1",
        embed_dim=vectors.shape[1],
        tile_px=224,
        mpp=0.5,
        vector_dtype=dtype,
    )
    bucket = rng.permutation(np.arange(len(vectors)) % 1000)
    per_seg = int(np.ceil(len(vectors) / segments))
    slide = 0
    for lo in range(0, len(vectors), per_seg):
        w = col.writer("test")
        for s_lo in range(lo, min(lo + per_seg, len(vectors)), 100):
            s_hi = min(s_lo + 100, lo + per_seg, len(vectors))
            rows: list[dict[str, Any]] = [
                {
                    "x": (i - s_lo) * 224,
                    "y": 0,
                    "level": 0,
                    "size_px": 224,
                    "tile_px": 224,
                    "mpp": 0.5,
                    "tissue_fraction": 1.0,
                    "kind": "slide",
                    "bucket": int(bucket[i]),
                    "cluster_group": int(cluster[i] % 20),
                    "patient_id": f"P{slide // 3}",
                }
                for i in range(s_lo, s_hi)
            ]
            source = {
                "source_id": f"{slide:064x}",
                "source": f"slide_{slide:05d}.svs",
                "kind": "slide",
                "width": 1,
                "height": 1,
                "mpp": 0.5,
                "properties": {},
            }
            w.add_source(source, rows, vectors[s_lo:s_hi])
            slide += 1
        w.commit()
    return col
