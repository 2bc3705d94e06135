"""Images the API serves or receives: tile PNGs, source thumbnails, upload decode budgets.

Uploads are judged from their header before decoding (:func:`check_upload_pixels`): an
absolute pixel cap and a cap on declared pixels per byte sent. Uploads are then decoded in
full exactly as the ingest decodes photos (no JPEG ``draft`` downscaling), so an image
searched for finds its own stored vector.

Pixels are re-read through ``indexer.tile_images`` (photos, photo tiles and slide tiles alike;
slide thumbnails from the pyramid, never label or macro images). Only paths of indexed sources
(taken from the store's rows) are ever opened, never a path sent by a client; a stored path
is first resolved through the home's roots (:func:`located`, ``search.roots``), so sources of
a relocated folder are read at their new place.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from lamina.api.errors import ApiError

TILE_MAX_PX = 512
THUMB_MAX_PX = 512
FREE_PIXELS = 4_000_000  # any readable image up to this size may be decoded (12 MB of RGB)
MAX_PIXELS_PER_BYTE = 1_000  # above FREE_PIXELS: declared pixels per byte of the upload


def check_upload_pixels(
    data: bytes, max_pixels: int, max_pixels_per_byte: int = MAX_PIXELS_PER_BYTE
) -> tuple[int, int]:
    """Refuse an upload from its header alone, before any pixel is decoded; -> (width, height).

    Two budgets: the declared pixels may not exceed ``max_pixels``, and above
    ``FREE_PIXELS`` they may not exceed ``max_pixels_per_byte`` per byte of the file (a
    631-byte JPEG declaring 7000x7000 is 77,655 pixels per byte; real photos are under 100,
    flat synthetic PNGs under 1,000), so what a request can make the server decode grows
    with what it sent."""
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
    if w <= 0 or h <= 0:
        raise ApiError(f"image declares {w}x{h} pixels", 422, "UNREADABLE_IMAGE")
    pixels = w * h
    if pixels > max_pixels:
        raise ApiError(
            f"image is {w}x{h} pixels; the limit is {max_pixels:,}", 413, "IMAGE_TOO_LARGE"
        )
    if pixels > FREE_PIXELS and pixels > len(data) * max_pixels_per_byte:
        raise ApiError(
            f"image declares {w}x{h} pixels in {len(data):,} bytes "
            f"({pixels // len(data):,} pixels per byte; above {FREE_PIXELS:,} pixels the limit "
            f"is {max_pixels_per_byte:,}): refused before decoding",
            413,
            "IMAGE_TOO_LARGE",
        )
    return w, h


def png_bytes(rgb: np.ndarray, max_px: int) -> bytes:
    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    if max(im.size) > max_px:
        im.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def located(row: dict[str, Any]) -> dict[str, Any]:
    """A copy of a stored tile or source row whose ``source`` is where the file is now (the
    home's roots applied, see ``search.roots``)."""
    from lamina.api.app import state
    from lamina.search.roots import Roots

    return Roots.of(state().store.home).located(row)


def _source_path(row: dict[str, Any]) -> Path:
    """The file of a stored row, where it is now; 404 ``SOURCE_FILE_MISSING`` when absent."""
    path = Path(str(located(row)["source"]))
    if not path.is_file():
        raise ApiError(
            f"the source file of {row.get('source_id')} is no longer at {path}",
            404,
            "SOURCE_FILE_MISSING",
        )
    return path


def tile_png(row: dict[str, Any], max_pixels: int, max_px: int = TILE_MAX_PX) -> bytes:
    """PNG of one stored tile, re-read from its source exactly as the ingest read it."""
    from lamina.indexer.tile_images import tile_image

    _source_path(row)
    return png_bytes(tile_image(located(row)), max_px)


def thumbnail_png(source: dict[str, Any], max_pixels: int, max_px: int = THUMB_MAX_PX) -> bytes:
    """A thumbnail of a source: the photo itself, or the slide's pyramid (never label/macro)."""
    from lamina.indexer.tile_images import check_unchanged, source_thumbnail

    path = _source_path(source)
    check_unchanged(located(source))
    rgb = source_thumbnail(path, kind=str(source.get("kind") or "photo"), max_px=max_px)
    return png_bytes(rgb, max_px)
