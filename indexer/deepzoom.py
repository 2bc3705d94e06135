"""Deep zoom pyramids of indexed slides, for the slide viewer: OpenSlide's DeepZoomGenerator.

Method: one :class:`openslide.deepzoom.DeepZoomGenerator` per slide file, made with
``limit_bounds=False`` so that deep-zoom pixel coordinates at the finest level *are* level-0
pixel coordinates of the slide (the coordinates every tile row, region query and QC GeoJSON
uses). Deep-zoom level ``n - 1`` is level 0 at full resolution; each level below halves it, down
to level 0 of one pixel (the DZI convention OpenSeadragon follows). Tiles are ``tile_size``
pixels square plus ``overlap`` pixels on each inner edge, encoded as JPEG (quality
``JPEG_QUALITY``) or PNG.

Bounds (per :class:`DeepZoomCache`, one per server process):

- at most ``max_slides`` slide handles open at once, least recently used evicted (an evicted
  handle closes when the last request using it ends, never under a reader);
- encoded tiles kept in an LRU of at most ``max_tile_bytes`` bytes, and OpenSlide's decoded
  slide tiles in one cache of ``decoded_cache_bytes`` shared by all open slides (instead of
  OpenSlide's 32 MiB per slide);
- a handle is keyed by (path, size, mtime): a file replaced on disk is opened again, and a
  file whose size or bytes differ from what was indexed is refused
  (:class:`~lamina.indexer.errors.SourceChangedError`) before any pixel is served.

Every tile has exactly the size the pyramid declares (OpenSlide's ``get_tile`` only shrinks,
so a side that a coarse level rounds up comes out a pixel short; it is resized to fit).
Only level pixels are read: associated images (label, macro, thumbnail) are never opened.
Callers pass only paths of indexed sources (taken from the store's rows), never a client path.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.indexer.errors import IndexerError, UnreadableSourceError

TILE_SIZE = 254
OVERLAP = 1
JPEG_QUALITY = 85
FORMATS = ("jpeg", "png")
DEFAULT_MAX_SLIDES = 8
DEFAULT_MAX_TILE_BYTES = 64 << 20
DEFAULT_DECODED_CACHE_BYTES = 64 << 20


class DeepZoomRangeError(IndexerError):
    """A deep-zoom level or tile address outside the slide's pyramid (names both)."""


@dataclass(frozen=True)
class DeepZoomInfo:
    """The geometry of one slide's deep-zoom pyramid (level-0 pixels)."""

    width: int
    height: int
    tile_size: int
    overlap: int
    levels: int
    level_tiles: tuple[tuple[int, int], ...]
    level_dimensions: tuple[tuple[int, int], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "levels": self.levels,
            "level_tiles": [list(t) for t in self.level_tiles],
            "level_dimensions": [list(d) for d in self.level_dimensions],
        }


class _Handle:
    """An open slide and its generator; shared by reader threads (OpenSlide is thread-safe)."""

    def __init__(self, path: Path, tile_size: int, overlap: int, cache: Any = None) -> None:
        from openslide.deepzoom import DeepZoomGenerator

        from lamina.indexer.slides import _open

        self.slide = _open(path)
        if cache is not None:
            self.slide.set_cache(cache)
        self.dz = DeepZoomGenerator(
            self.slide, tile_size=tile_size, overlap=overlap, limit_bounds=False
        )
        w, h = self.slide.dimensions
        self.info = DeepZoomInfo(
            width=int(w),
            height=int(h),
            tile_size=tile_size,
            overlap=overlap,
            levels=int(self.dz.level_count),
            level_tiles=tuple((int(c), int(r)) for c, r in self.dz.level_tiles),
            level_dimensions=tuple((int(a), int(b)) for a, b in self.dz.level_dimensions),
        )


class DeepZoomCache:
    """Bounded slide handles and encoded tiles of one process (see the module docstring)."""

    def __init__(
        self,
        max_slides: int = DEFAULT_MAX_SLIDES,
        max_tile_bytes: int = DEFAULT_MAX_TILE_BYTES,
        tile_size: int = TILE_SIZE,
        overlap: int = OVERLAP,
        decoded_cache_bytes: int = DEFAULT_DECODED_CACHE_BYTES,
    ) -> None:
        self.max_slides = max(1, int(max_slides))
        self.decoded_cache_bytes = int(decoded_cache_bytes)
        self._decoded: Any = None  # one OpenSlideCache shared by every open slide
        self.max_tile_bytes = max(0, int(max_tile_bytes))
        self.tile_size = int(tile_size)
        self.overlap = int(overlap)
        self._lock = threading.Lock()
        self._handles: OrderedDict[tuple[str, int, int], _Handle] = OrderedDict()
        self._tiles: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._tile_bytes = 0
        self.opened = 0  # slide handles opened since start (tests: handles are reused)
        self.tile_hits = 0
        self.tile_misses = 0

    # -- handles -----------------------------------------------------------------------------
    def _key(self, source: Mapping[str, Any]) -> tuple[str, int, int]:
        path = Path(str(source.get("source") or ""))
        try:
            st = path.stat()
        except OSError:
            raise UnreadableSourceError(
                f"{path}: source file is gone (moved or deleted since indexing)"
            ) from None
        return str(path), int(st.st_size), int(st.st_mtime_ns)

    def _handle(self, source: Mapping[str, Any]) -> tuple[tuple[str, int, int], _Handle]:
        key = self._key(source)
        with self._lock:
            found = self._handles.get(key)
            if found is not None:
                self._handles.move_to_end(key)
                return key, found
        # open outside the lock (slow codecs); a race opens twice and keeps one
        from lamina.indexer.tile_images import check_unchanged

        check_unchanged(source)
        handle = _Handle(Path(key[0]), self.tile_size, self.overlap, self._decoded_cache())
        with self._lock:
            found = self._handles.get(key)
            if found is not None:
                self._handles.move_to_end(key)
                return key, found
            self._handles[key] = handle
            self.opened += 1
            while len(self._handles) > self.max_slides:
                self._handles.popitem(last=False)  # closed by GC once no reader holds it
        return key, handle

    def _decoded_cache(self) -> Any:
        """OpenSlide's decoded-tile cache, one for all open slides (OpenSlide >= 4; older
        libraries keep one cache per slide)."""
        if self._decoded is None and self.decoded_cache_bytes > 0:
            import openslide

            try:
                self._decoded = openslide.OpenSlideCache(self.decoded_cache_bytes)
            except (AttributeError, openslide.OpenSlideVersionError):
                self.decoded_cache_bytes = 0
        return self._decoded

    def info(self, source: Mapping[str, Any]) -> DeepZoomInfo:
        """The pyramid geometry of an indexed slide (opens it once; later calls reuse it)."""
        return self._handle(source)[1].info

    def dzi_xml(self, source: Mapping[str, Any], fmt: str = "jpeg") -> str:
        """The DZI XML descriptor (``Format`` is ``jpeg`` or ``png``)."""
        return str(self._handle(source)[1].dz.get_dzi(_check_format(fmt)))

    # -- tiles -------------------------------------------------------------------------------
    def tile(self, source: Mapping[str, Any], level: int, col: int, row: int, fmt: str) -> bytes:
        """Encoded bytes of one deep-zoom tile; DeepZoomRangeError outside the pyramid."""
        fmt = _check_format(fmt)
        key, handle = self._handle(source)
        info = handle.info
        if not 0 <= level < info.levels:
            raise DeepZoomRangeError(
                f"deep-zoom level {level} does not exist: levels are 0 to {info.levels - 1}"
            )
        cols, rows = info.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise DeepZoomRangeError(
                f"tile ({col}, {row}) is outside level {level}: columns 0 to {cols - 1}, "
                f"rows 0 to {rows - 1}"
            )
        tkey = (key, level, col, row, fmt)
        with self._lock:
            data = self._tiles.get(tkey)
            if data is not None:
                self._tiles.move_to_end(tkey)
                self.tile_hits += 1
                return data
        im = _read_tile(handle, key[0], level, col, row)
        buf = io.BytesIO()
        if fmt == "jpeg":
            im.save(buf, "JPEG", quality=JPEG_QUALITY)
        else:
            im.save(buf, "PNG", compress_level=3)
        data = buf.getvalue()
        with self._lock:
            self.tile_misses += 1
            if len(data) <= self.max_tile_bytes and tkey not in self._tiles:
                self._tiles[tkey] = data
                self._tile_bytes += len(data)
                while self._tile_bytes > self.max_tile_bytes:
                    _, old = self._tiles.popitem(last=False)
                    self._tile_bytes -= len(old)
        return data

    @property
    def tile_bytes(self) -> int:
        """Bytes of encoded tiles held now (at most ``max_tile_bytes``)."""
        return self._tile_bytes

    @property
    def open_slides(self) -> int:
        return len(self._handles)


def _read_tile(handle: _Handle, path: str, level: int, col: int, row: int) -> Any:
    import openslide
    from PIL import Image

    try:
        im = handle.dz.get_tile(level, (col, row))
        size = handle.dz.get_tile_dimensions(level, (col, row))
    except openslide.OpenSlideError as exc:
        raise UnreadableSourceError(
            f"{path}: cannot read deep-zoom tile {level}/{col}_{row} ({exc})"
        ) from None
    if im.size != size:  # get_tile only shrinks: a side a level rounded up comes out 1 px short
        im = im.resize(size, Image.Resampling.LANCZOS)
    return im


def _check_format(fmt: str) -> str:
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in FORMATS:
        raise DeepZoomRangeError(f"tile format {fmt!r}: use jpeg or png")
    return fmt
