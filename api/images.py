"""Images the API serves or receives: tile PNGs, source thumbnails, upload size checks.

Pixels are re-read through ``indexer.tile_images`` (photos, photo tiles and slide tiles alike;
slide thumbnails from the pyramid, never label or macro images). Only paths of indexed sources
(taken from the store's rows) are ever opened, never a path sent by a client.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from api.errors import ApiError

TILE_MAX_PX = 512
THUMB_MAX_PX = 512


def check_upload_pixels(data: bytes, max_pixels: int) -> None:
    """Refuse images whose header declares more than ``max_pixels`` (before any decoding)."""
    if not data:
        raise ApiError("empty upload (0 bytes)", 422, "UNREADABLE_IMAGE")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except Image.DecompressionBombError:
        raise ApiError(
            "image is too large (decompression bomb guard)", 413, "IMAGE_TOO_LARGE"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise ApiError(
            "not an image that can be read (JPEG, PNG, TIFF, ...)", 422, "UNREADABLE_IMAGE"
        ) from None
    if w * h > max_pixels:
        raise ApiError(
            f"image is {w}x{h} pixels; the limit is {max_pixels:,}", 413, "IMAGE_TOO_LARGE"
        )


def png_bytes(rgb: np.ndarray, max_px: int) -> bytes:
    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    if max(im.size) > max_px:
        im.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def _source_path(row: dict[str, Any]) -> Path:
    path = Path(str(row["source"]))
    if not path.is_file():
        raise ApiError(
            f"the source file of {row.get('source_id')} is no longer at {path}",
            404,
            "SOURCE_FILE_MISSING",
        )
    return path


def tile_png(row: dict[str, Any], max_pixels: int, max_px: int = TILE_MAX_PX) -> bytes:
    """PNG of one stored tile, re-read from its source exactly as the ingest read it."""
    from indexer.tile_images import tile_image

    _source_path(row)
    return png_bytes(tile_image(row), max_px)


def thumbnail_png(source: dict[str, Any], max_pixels: int, max_px: int = THUMB_MAX_PX) -> bytes:
    """A thumbnail of a source: the photo itself, or the slide's pyramid (never label/macro)."""
    from indexer.tile_images import source_thumbnail

    path = _source_path(source)
    rgb = source_thumbnail(path, kind=str(source.get("kind") or "photo"), max_px=max_px)
    return png_bytes(rgb, max_px)
