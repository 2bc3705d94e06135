"""Reading photos with Pillow: EXIF orientation applied, any mode converted to 8-bit RGB."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from lamina.indexer.errors import UnreadableSourceError

DEFAULT_MAX_PIXELS = 80_000_000  # bigger "photos" are almost certainly not photos


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        im = Image.fromarray(arr.astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "RGB" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def decode_photo(
    data: bytes, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode image bytes to an (h, w, 3) uint8 array or raise UnreadableSourceError."""
    if not data:
        raise UnreadableSourceError(f"{name}: empty file (0 bytes)")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise UnreadableSourceError(
                    f"{name}: {w}x{h} pixels is more than the limit of {max_pixels:,} for a photo"
                )
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
    except UnreadableSourceError:
        raise
    except UnidentifiedImageError:
        raise UnreadableSourceError(f"{name}: not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnreadableSourceError(
            f"{name}: image is too large (decompression bomb guard)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            reason = "truncated image file"
        raise UnreadableSourceError(f"{name}: cannot decode image ({reason})") from None
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UnreadableSourceError(f"{name}: decoded to an unusable shape {arr.shape}")
    return arr


def read_photo(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytes, np.ndarray]:
    """(file bytes, RGB array) of a photo file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UnreadableSourceError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    return data, decode_photo(data, str(path), max_pixels)
