"""The ingest run's options and the outcomes a source can have before it is committed.

Shared by the local run (``pipeline``), the cluster run (``distributed``), the slide and photo
preparation (``slides``, ``photos``) and repair, so none of them imports another to get them.

Units and invariants: ``tile_px`` is pixels of a tile side, ``mpp`` microns per pixel of the
tiles (slides), ``commit_seconds`` wall seconds. A prepared or embedded source carries one row
per tile in ``tiles``, in the order of its images / vector rows (``len(tiles) == len(vectors)``
is checked before anything is added to a segment); ``source["source_id"]`` is the sha256 of the
file's bytes once known.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lamina.indexer.sources import SourceFile

COMMIT_SOURCES_ENV = "LAMINA_COMMIT_EVERY_SOURCES"


def _env_int(name: str) -> int:
    try:
        return max(0, int(os.environ.get(name, "0") or 0))
    except ValueError:
        return 0


@dataclass
class IngestOptions:
    tile_px: int = 224
    mpp: float = 0.5
    mpp_override: float | None = None
    min_tissue: float = 0.5
    batch_size: int = 64
    workers: int = max(1, min(8, (os.cpu_count() or 2)))
    commit_tiles: int = 50_000
    commit_seconds: float = 30.0
    commit_sources: int = field(default_factory=lambda: _env_int(COMMIT_SOURCES_ENV))
    """Also commit after this many sources (0: no such limit). Default from the environment
    variable LAMINA_COMMIT_EVERY_SOURCES; 1 makes every slide its own segment (resume tests)."""
    progress: bool = True
    photo_tiles: bool = False
    """Photos get tile vectors too (``tile_px`` tiles at the photo's own pixels) besides the
    whole-photo vector; the CLI sets it when --tile-px is given explicitly."""


@dataclass
class PreparedSource:
    """A source ready for encoding: its row, its tile rows, and a lazy stream of tile images."""

    file: SourceFile
    source: dict[str, Any]
    tiles: list[dict[str, Any]]
    images: Iterator[np.ndarray]
    close: Callable[[], None] = lambda: None
    note: str | None = None
    """Why a source has no tiles (e.g. a slide without tissue); reported, not a failure."""
    pending_id: Future[str] | None = None
    """The content hash still being computed; it becomes ``source["source_id"]`` at commit."""


@dataclass
class Embedded:
    """A source already embedded elsewhere (a cluster task): its rows and (n, dim) vectors.
    ``source`` carries the file's ``file_size``/``file_mtime_ns`` as seen where it was read."""

    file: SourceFile
    source: dict[str, Any]
    tiles: list[dict[str, Any]]
    vectors: np.ndarray
    note: str | None = None


@dataclass
class Skipped:
    """A file already committed (same content at the same path)."""

    file: SourceFile
    source_id: str


@dataclass
class Moved:
    """A photo whose bytes are already committed (or added by this run) at another path: a
    duplicate, or a moved source whose stored rows are carried over to the new path (no
    embedding); :meth:`SourceLedger._move` tells which, in file order."""

    file: SourceFile
    source_id: str
