"""Turning a query (image bytes, a slide region) into a vector with a collection's encoder.

Shared by the CLI and the server. Encoders are loaded once per (key, weights) and cached.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lamina.encoders import Encoder, EncoderError, NoLocalEncoderError, create_encoder
from lamina.indexer.photos import decode_photo
from lamina.search import Collection

_CACHE: dict[tuple[str, str | None, str], Encoder] = {}
_LOCK = threading.Lock()


def encoder_for(collection: Collection, device: str = "auto") -> Encoder:
    """The collection's encoder (cached), checked against the collection's fingerprint."""
    key = collection.encoder_key
    weights = collection.info.get("encoder_weights")
    cache_key = (key, weights, device)
    external = bool(collection.info.get("external"))
    with _LOCK:
        enc = _CACHE.get(cache_key)
        if enc is None:
            try:
                enc = create_encoder(key, weights=weights, device=device, allow_test=True)
            except EncoderError as exc:
                if external:
                    raise _no_local_encoder(collection) from exc
                raise
            _CACHE[cache_key] = enc
    if external and enc.fingerprint != collection.fingerprint:
        raise _no_local_encoder(collection)
    collection.check_fingerprint(enc.fingerprint)
    return enc


def _no_local_encoder(collection: Collection) -> NoLocalEncoderError:
    return NoLocalEncoderError(
        f"collection {collection.name!r} holds vectors imported as {collection.encoder_key} "
        f"({collection.dim}-d); no encoder on this machine makes them, so it cannot be queried "
        "by image or slide region. Query it by stored tile (tile_id), by vector or by cohort."
    )


def image_vector(
    collection: Collection,
    data: bytes,
    name: str = "upload",
    max_pixels: int = 80_000_000,
    device: str = "auto",
) -> np.ndarray:
    """Embed an encoded image (JPEG/PNG/...) with the collection's encoder -> (dim,) vector."""
    rgb = decode_photo(data, name, max_pixels)
    return encoder_for(collection, device).embed([rgb])[0]


def embed_examples(
    collection: Collection, files: Sequence[tuple[str, bytes]]
) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Embed example images with the collection's encoder; also describe them for the record
    (file name and sha256, never the pixels)."""
    vectors, described = [], []
    for name, data in files:
        vectors.append(image_vector(collection, data, name))
        described.append({"name": Path(name).name, "sha256": hashlib.sha256(data).hexdigest()})
    return vectors, described


def region_vector(
    collection: Collection,
    slide: str | Path,
    region: tuple[int, int, int, int],
    device: str = "auto",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Embed a level-0 region X,Y,W,H of a slide, read at the collection's mpp."""
    from lamina.indexer.slides import read_region_rgb

    mpp = collection.info.get("mpp") or 0.5
    rgb = read_region_rgb(Path(slide), region, target_mpp=float(mpp))
    vec = encoder_for(collection, device).embed([rgb])[0]
    x, y, w, h = region
    return vec, {"slide": str(slide), "region": [x, y, w, h]}


def parse_region(text: str) -> tuple[int, int, int, int]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise ValueError(f"region must be X,Y,W,H, got {text!r}")
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"region must be four integers X,Y,W,H, got {text!r}") from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise ValueError(f"region {text!r}: X and Y must be >= 0, W and H > 0")
    return x, y, w, h
