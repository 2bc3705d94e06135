"""Images the API serves or receives: tile PNGs, source thumbnails, upload size checks.

Photos are handled here with Pillow; slides and their tiles go through ``indexer.slides``
(imported lazily): ``read_tile_rgb(row)``, ``thumbnail_rgb(path, max_px)`` and, as a
fallback, ``read_region_rgb(path, (x, y, w, h), target_mpp)``. Only paths of indexed sources
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
from indexer.photos import read_photo

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


def _slides() -> Any:
    try:
        import indexer.slides as slides
    except ImportError:
        raise ApiError(
            "slide reading is not available on this server", 501, "NOT_IMPLEMENTED"
        ) from None
    return slides


def tile_rgb(row: dict[str, Any], max_pixels: int) -> np.ndarray:
    """The RGB pixels of one stored tile, re-read from its source."""
    path = _source_path(row)
    kind = str(row.get("kind") or "photo")
    if kind == "photo":
        _, rgb = read_photo(path, max_pixels=max(max_pixels, 200_000_000))
        x, y, size = int(row.get("x") or 0), int(row.get("y") or 0), int(row.get("size_px") or 0)
        h, w = rgb.shape[:2]
        if size and (x, y, size) != (0, 0, max(w, h)):
            rgb = rgb[y : min(h, y + size), x : min(w, x + size)]
        return rgb
    slides = _slides()
    if hasattr(slides, "read_tile_rgb"):
        return slides.read_tile_rgb(row)  # type: ignore[no-any-return]
    size = int(row["size_px"])
    mpp = row.get("mpp") or 0.5
    return slides.read_region_rgb(
        path,
        (int(row["x"]), int(row["y"]), size, size),  # type: ignore[no-any-return]
        target_mpp=float(mpp),
    )


def tile_png(row: dict[str, Any], max_pixels: int, max_px: int = TILE_MAX_PX) -> bytes:
    return png_bytes(tile_rgb(row, max_pixels), max_px)


def thumbnail_png(source: dict[str, Any], max_pixels: int, max_px: int = THUMB_MAX_PX) -> bytes:
    """A thumbnail of a source: the photo itself, or the slide's pyramid (never label/macro)."""
    path = _source_path(source)
    if str(source.get("kind") or "photo") == "photo":
        _, rgb = read_photo(path, max_pixels=max(max_pixels, 200_000_000))
        return png_bytes(rgb, max_px)
    slides = _slides()
    rgb = slides.thumbnail_rgb(path, max_px)
    return png_bytes(np.asarray(rgb), max_px)
