"""Feeding the encoder during an ingest: how a source's images are batched, and CPU threads.

Method. :func:`encoder_batches` stacks a source's (tile_px, tile_px, 3) uint8 images into
(n, tile_px, tile_px, 3) batches: the first holds ``batch_size // 4`` images (at least 1) so the
encoder starts while the readers fill the next, the rest ``batch_size`` (the last may be
shorter). Invariant: the batch sizes depend only on the image count and ``batch_size``, so a
local run and a cluster run batch a source identically (equal vectors, bit for bit).

:func:`cpu_share` caps a CPU torch encoder's intra-op threads for the run so the reader threads
keep their cores; it changes nothing for other encoders, on a GPU, or below 4 cores.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from lamina.encoders import Encoder


def encoder_batches(images: Iterator[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """A source's images stacked into encoder batches. The first batch is smaller so the encoder
    starts while the readers fill the next ones; the sizes depend only on the tile count, so
    every run (local or on a cluster) batches a source identically."""
    limit = max(1, batch_size // 4)
    batch: list[np.ndarray] = []
    for image in images:
        batch.append(image)
        if len(batch) >= limit:
            yield np.stack(batch)
            batch, limit = [], batch_size
    if batch:
        yield np.stack(batch)


@contextmanager
def cpu_share(encoder: Encoder, readers: int) -> Iterator[None]:
    """Leave the reader threads their cores: on a machine of 4+ cores, a torch encoder on the
    CPU gets max(cores - readers, cores // 2) intra-op threads for the run. Oversubscribed
    OpenMP threads stall at every barrier; measured on 16 cores with 8 readers, slide ingest
    went from 942 to 1529 tiles/s (test/tiny-vit) and 553 to 600 (test/tiny-resnet). On 2
    cores the cap (1 thread) was slower, so small machines are left alone."""
    torch = sys.modules.get("torch")
    if (
        torch is None
        or not str(getattr(encoder, "device", "cpu")).startswith("cpu")
        or not hasattr(encoder, "model")
    ):
        yield
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    before = torch.get_num_threads()
    want = before if cores < 4 else max(1, min(before, max(cores - readers, cores // 2)))
    if want != before:
        torch.set_num_threads(want)
    try:
        yield
    finally:
        if want != before:
            torch.set_num_threads(before)
