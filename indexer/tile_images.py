"""Pixels of stored things, read back from their sources: a tile's image, a source's thumbnail.

Used by the HTTP API (``/tiles/{id}/image``, ``/sources/{id}/thumbnail``). A slide tile is read
exactly as the ingest read it (same level, same pixels, same resize), so embedding it again
gives the stored vector. Thumbnails of slides come from the pyramid levels, never from the
label, macro or vendor thumbnail images.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lamina.indexer.errors import SourceChangedError, UnreadableSourceError
from lamina.indexer.photos import read_photo
from lamina.indexer.slides import Slide
from lamina.indexer.sources import classify, content_id
from lamina.indexer.tiling import TileSpec

DEFAULT_THUMBNAIL_PX = 512
MAX_THUMBNAIL_PX = 4096


def _source_path(row: Mapping[str, Any]) -> Path:
    source = row.get("source")
    if not source:
        raise UnreadableSourceError("row has no source path")
    path = Path(str(source))
    if not path.is_file():
        raise UnreadableSourceError(
            f"{path}: source file is gone (moved or deleted since indexing)"
        )
    return path


def check_unchanged(row: Mapping[str, Any], data: bytes | None = None) -> None:
    """Refuse a source whose bytes changed since it was indexed (its stored vectors describe
    other pixels). ``row`` carries the source's ``source_id`` (sha256 of its bytes) and the
    ``file_size`` / ``file_mtime_ns`` recorded at indexing; ``data``, the bytes just read, are
    compared by hash (photos). Rows without a recorded size (imported vectors, older stores)
    are not checked."""
    from lamina.search.verify import source_state

    if row.get("file_size") is None:
        return
    if data is not None:
        changed = content_id(data) != row.get("source_id")
    else:
        changed = source_state(dict(row)) is not None
    if changed:
        sid = str(row.get("source_id") or "")[:12]
        raise SourceChangedError(
            f"source {sid} changed on disk since it was indexed: its stored vectors describe "
            "other pixels, so its image is not served; index the file again to replace it"
        )


def tile_image(row: Mapping[str, Any]) -> np.ndarray:
    """uint8 (h, w, 3) image of a stored tile row: a slide tile at ``tile_px``, a whole photo, or
    a tile of a photo at the photo's pixels. With the source's recorded ``file_size`` /
    ``file_mtime_ns`` in ``row``, a source changed since indexing is refused
    (:func:`check_unchanged`)."""
    path = _source_path(row)
    kind = str(row.get("kind") or "photo")
    if kind in ("photo", "photo-tile"):
        data, rgb = read_photo(path)
        check_unchanged(row, data)
        if kind == "photo":
            return rgb
        x, y, size = int(row["x"]), int(row["y"]), int(row["size_px"])
        return np.ascontiguousarray(rgb[y : y + size, x : x + size])
    check_unchanged(row)
    try:
        spec = TileSpec(
            x=int(row["x"]), y=int(row["y"]), level=int(row["level"]), size_px=int(row["size_px"])
        )
        tile_px = int(row["tile_px"])
    except (KeyError, TypeError, ValueError):
        raise UnreadableSourceError(
            f"{path}: tile row lacks x, y, level, size_px or tile_px"
        ) from None
    with Slide(path, require_mpp=False) as slide:
        return slide.read_tile(spec, tile_px)


def _fit(im: Image.Image, max_px: int) -> Image.Image:
    if max(im.size) > max_px:
        im = im.copy()
        im.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    return im


def source_thumbnail(
    path: str | Path, kind: str | None = None, max_px: int = DEFAULT_THUMBNAIL_PX
) -> np.ndarray:
    """uint8 RGB thumbnail of a slide or photo, longest side at most ``max_px``."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableSourceError(
            f"{path}: source file is gone (moved or deleted since indexing)"
        )
    max_px = max(1, min(int(max_px), MAX_THUMBNAIL_PX))
    kind = kind or classify(path) or "photo"
    if kind == "photo":
        return np.asarray(_fit(Image.fromarray(read_photo(path)[1]), max_px))
    with Slide(path, require_mpp=False) as slide:
        rgb, _ = slide.overview(max(1.0, max(slide.width, slide.height) / max_px))
    return np.asarray(_fit(Image.fromarray(rgb), max_px))
