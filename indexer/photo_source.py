"""A decoded photo as a source of an ingest run: its source row, tile rows and tile images.

Method. A photo gets one whole-photo tile (``kind`` ``photo``: the photo resized to the
encoder's input, ``size_px`` its longer side), and with ``IngestOptions.photo_tiles`` also
non-overlapping ``tile_px`` tiles at the photo's own pixels (``kind`` ``photo-tile``; partial
tiles at the right and bottom edges are dropped). Units: pixels of the decoded photo;
``mpp`` (microns per pixel) only when the manifest row gives one. Invariant: ``tiles[i]`` is
the row of ``images[i]``; manifest columns are copied onto the source and every tile row.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from lamina.encoders.base import resize_rgb
from lamina.indexer.ingest_types import IngestOptions, PreparedSource
from lamina.indexer.sources import SourceFile


def photo_tiles(rgb: np.ndarray, tile_px: int) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """Non-overlapping ``tile_px`` tiles of a photo at its own pixels (partial edges dropped)."""
    h, w = rgb.shape[:2]
    for y in range(0, h - tile_px + 1, tile_px):
        for x in range(0, w - tile_px + 1, tile_px):
            row = {
                "kind": "photo-tile",
                "x": x,
                "y": y,
                "level": 0,
                "size_px": tile_px,
                "tile_px": tile_px,
            }
            yield row, rgb[y : y + tile_px, x : x + tile_px]


def prepare_photo(
    file: SourceFile,
    rgb: np.ndarray,
    source_id: str,
    meta: dict[str, Any],
    options: IngestOptions,
    input_px: int,
) -> PreparedSource:
    """A decoded photo's source row, its whole-photo tile (and ``photo_tiles`` tiles) and images."""
    h, w = rgb.shape[:2]
    mpp = meta.get("mpp") if isinstance(meta.get("mpp"), int | float) else None
    source = {
        "source_id": source_id,
        "source": str(file.path.resolve()),
        "kind": "photo",
        "width": w,
        "height": h,
        "mpp": mpp,
        "properties": None,
        **meta,
    }
    tile = {
        "kind": "photo",
        "x": 0,
        "y": 0,
        "level": 0,
        "size_px": max(w, h),
        "tile_px": input_px,
        "mpp": mpp,
        "tissue_fraction": None,
        **meta,
    }
    tiles, images = [tile], [resize_rgb(rgb, input_px)]
    if options.photo_tiles:
        for row, crop in photo_tiles(rgb, options.tile_px):
            tiles.append({**row, "mpp": mpp, "tissue_fraction": None, **meta})
            images.append(resize_rgb(crop, input_px))
    return PreparedSource(file, source, tiles, iter(images))
