"""Whole-slide images through OpenSlide: SVS, NDPI, MRXS, SCN, generic tiled TIFF, DICOM WSI.

Coordinates are level-0 pixels everywhere. Pixels come back as 8-bit RGB, transparent areas
(outside the scanned region or the slide) composited on white. Associated images (label,
macro, thumbnail) are never touched: they may carry patient names. Slide properties are kept
only through an allowlist (vendor, geometry, resolution, bounds, quickhash): never the
vendor's free-text description, file name, date, user or DICOM patient fields.
"""

from __future__ import annotations

import ctypes
import math
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from lamina.encoders.base import resize_rgb
from lamina.indexer.errors import MissingMppError, UnreadableSourceError
from lamina.indexer.ingest_types import IngestOptions, PreparedSource
from lamina.indexer.tiling import LevelChoice, TileSpec, choose_level, plan_grid
from lamina.indexer.tissue import TissueMask, detect_tissue, mask_downsample
from lamina.search.segments import RESERVED_COLUMNS

if TYPE_CHECKING:
    import openslide

    from lamina.encoders import Encoder
    from lamina.indexer.sources import SourceFile


def _raw_reader() -> Any:
    """openslide_read_region through openslide-python's ctypes binding (None if it moved)."""
    try:
        from openslide import lowlevel
    except ImportError:  # pragma: no cover - openslide is a hard dependency
        return None
    return getattr(lowlevel, "_read_region", None)


_RAW_READ = _raw_reader()
_LITTLE = sys.byteorder == "little"

MAX_PLAUSIBLE_MPP = 50.0
"""Coarser 'resolutions' are TIFF defaults (72 dpi = 352.8 µm/px), not a microscope's."""
MAX_REGION_PX = 8192
"""Largest side of a region read for a query, in pixels read or returned."""
OVERVIEW_CHUNK_PX = 512
"""Overview chunks read in parallel (small, so that slow codecs like JPEG 2000 spread out)."""
LEVEL0_KEEP_BYTES = 32 << 20
"""Single-level slides up to this size keep their decoded pixels from the overview for tiles."""

PROPERTY_ALLOWLIST: dict[str, str] = {
    "openslide.vendor": "vendor",
    "openslide.objective-power": "objective_power",
    "openslide.mpp-x": "mpp_x",
    "openslide.mpp-y": "mpp_y",
    "openslide.bounds-x": "bounds_x",
    "openslide.bounds-y": "bounds_y",
    "openslide.bounds-width": "bounds_width",
    "openslide.bounds-height": "bounds_height",
    "openslide.quickhash-1": "quickhash_1",
}
_NUMERIC_PROPERTIES = frozenset(
    {"objective_power", "mpp_x", "mpp_y", "bounds_x", "bounds_y", "bounds_width", "bounds_height"}
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def resolve_mpp(
    props: Mapping[str, str], metadata: Mapping[str, Any] | None, override: float | None, name: str
) -> tuple[float, str]:
    """(mpp, where it came from): slide properties, else manifest ``mpp``, else the override."""
    mx, my = _number(props.get("openslide.mpp-x")), _number(props.get("openslide.mpp-y"))
    found = (mx + my) / 2 if mx and my else (mx or my)
    note = ""
    if found is not None and found <= MAX_PLAUSIBLE_MPP:
        return found, "properties"
    if found is not None:
        note = (
            f" (its TIFF resolution says {found:.4g} µm/px, a default of the writing program, "
            "not a microscope's)"
        )
    meta = metadata or {}
    for key in ("mpp", "meta_mpp"):
        value = _number(meta.get(key))
        if value is not None:
            return value, "manifest"
    if override is not None and override > 0:
        return float(override), "override"
    raise MissingMppError(
        f"{name}: no microns-per-pixel in the slide's properties{note}, the manifest or the "
        "command line; pass --mpp-override F (e.g. 0.5 for a 20x scan, 0.25 for 40x) or give "
        "the manifest an 'mpp' column"
    )


def _open(path: Path) -> openslide.OpenSlide:
    import openslide

    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        try:
            size = f"{path.stat().st_size:,} bytes"
        except OSError:
            size = "unreadable"
        raise UnreadableSourceError(
            f"{path}: OpenSlide cannot open it (not a slide format it reads, or a truncated or "
            f"damaged file; {size})"
        ) from None
    except openslide.OpenSlideError as exc:
        raise UnreadableSourceError(f"{path}: cannot open slide ({exc})") from None
    except OSError as exc:
        raise UnreadableSourceError(f"{path}: cannot open slide ({exc.strerror or exc})") from None


class Slide:
    """One open slide. The OpenSlide handle may be shared by reader threads."""

    def __init__(
        self,
        path: str | Path,
        mpp_override: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        require_mpp: bool = True,
    ) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.handle = _open(self.path)
        try:
            h = self.handle
            self.level_dimensions: tuple[tuple[int, int], ...] = tuple(h.level_dimensions)
            self.level_downsamples: tuple[float, ...] = tuple(h.level_downsamples)
            self.width, self.height = self.level_dimensions[0]
            if self.width <= 0 or self.height <= 0:
                raise UnreadableSourceError(f"{path}: slide has no pixels")
            self._props = dict(h.properties)
            self._level0: np.ndarray | None = None
            self.mpp: float | None = None
            self.mpp_source: str | None = None
            try:
                self.mpp, self.mpp_source = resolve_mpp(
                    self._props, metadata, mpp_override, self.name
                )
            except MissingMppError:
                if require_mpp:
                    raise
        except BaseException:
            self.handle.close()
            raise

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._level0 = None
        self.handle.close()

    def properties(self) -> dict[str, Any]:
        """The allowlisted properties plus geometry and where the mpp came from."""
        out: dict[str, Any] = {}
        for key, name in PROPERTY_ALLOWLIST.items():
            if key in self._props:
                value: Any = self._props[key]
                if name in _NUMERIC_PROPERTIES:
                    try:
                        value = float(value)
                    except ValueError:
                        continue
                out[name] = value
        out["level_count"] = len(self.level_dimensions)
        out["level_dimensions"] = [list(d) for d in self.level_dimensions]
        out["level_downsamples"] = [round(float(d), 6) for d in self.level_downsamples]
        out["mpp_source"] = self.mpp_source
        return out

    # -- pixels ---------------------------------------------------------------------------
    def read_rgb(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 pixels of ``level`` from level-0 (x, y); transparent -> white.

        OpenSlide's premultiplied ARGB is read straight into a numpy buffer and composited
        over white as ``c + 255 - alpha`` (exact for premultiplied pixels): no PIL round trip,
        so reader threads hold the GIL only for microseconds per tile.
        """
        import openslide

        if not 0 <= level < len(self.level_dimensions):
            raise UnreadableSourceError(f"{self.name}: no level {level}")
        w, h = int(w), int(h)
        if w <= 0 or h <= 0:
            return np.full((max(h, 0), max(w, 0), 3), 255, np.uint8)
        buf = np.empty((h, w), np.uint32)
        try:
            if _RAW_READ is not None and hasattr(self.handle, "_osr"):
                _RAW_READ(
                    self.handle._osr,
                    buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
                    int(x),
                    int(y),
                    int(level),
                    w,
                    h,
                )
                px = buf.view(np.uint8).reshape(h, w, 4)
                rgb = px[..., 2::-1] if _LITTLE else px[..., 1:]
                if int(buf.min()) >> 24 == 255:  # every pixel opaque (alpha is the top byte)
                    return np.ascontiguousarray(rgb)
                alpha = px[..., 3] if _LITTLE else px[..., 0]
            else:  # public API (un-premultiplied RGBA): re-premultiply
                rgba = np.asarray(self.handle.read_region((int(x), int(y)), int(level), (w, h)))
                alpha = rgba[..., 3]
                rgb = (rgba[..., :3].astype(np.uint16) * alpha[..., None] + 127) // 255
        except openslide.OpenSlideError as exc:
            raise UnreadableSourceError(
                f"{self.name}: cannot read level {level} at ({x}, {y}): {exc}"
            ) from None
        if alpha.min() == 255:
            return np.ascontiguousarray(rgb, dtype=np.uint8)
        out = rgb.astype(np.uint16) + (255 - alpha.astype(np.uint16))[..., None]
        return np.minimum(out, 255).astype(np.uint8)

    def read_tile(self, spec: TileSpec, tile_px: int) -> np.ndarray:
        """A planned tile: ``size_px`` pixels of its level, resized (antialiased) to tile_px."""
        s = spec.size_px
        if self._level0 is not None and spec.level == 0:
            # the overview already decoded level 0: crop it (same pixels as a fresh read)
            rgb = self._level0[spec.y : spec.y + s, spec.x : spec.x + s]
            if rgb.shape[:2] != (s, s):
                padded = np.full((s, s, 3), 255, np.uint8)
                padded[: rgb.shape[0], : rgb.shape[1]] = rgb
                rgb = padded
            elif s == tile_px:
                return rgb.copy()
        else:
            rgb = self.read_rgb(spec.x, spec.y, spec.level, s, s)
        if s == tile_px:
            return rgb
        return resize_rgb(rgb, tile_px)

    def overview(
        self, downsample: float, workers: int = 1, keep_level0: bool = False
    ) -> tuple[np.ndarray, float]:
        """The whole slide reduced by about ``downsample`` (never more): (rgb, exact downsample).

        Read from the coarsest level at or finer than that, in chunks (``workers`` at a time),
        each box-averaged by an integer factor (a partial block at the edge averages the pixels
        it has), so huge single-level slides never need one giant read. With ``keep_level0``,
        when that level is level 0 and small (<= LEVEL0_KEEP_BYTES), its full pixels are kept
        so that tile reads crop them instead of decoding the slide a second time.
        """
        level = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-6) and ds >= self.level_downsamples[level]:
                level = i
        ds_level = float(self.level_downsamples[level])
        f = max(1, int(math.floor(downsample / ds_level + 1e-6)))
        lw, lh = self.level_dimensions[level]
        out = np.full((math.ceil(lh / f), math.ceil(lw / f), 3), 255, np.uint8)
        keep = keep_level0 and level == 0 and lw * lh * 3 <= LEVEL0_KEEP_BYTES
        full = np.empty((lh, lw, 3), np.uint8) if keep else None
        step = max(f, (OVERVIEW_CHUNK_PX // f) * f)
        chunks = [
            (cx, cy, min(step, lw - cx), min(step, lh - cy))
            for cy in range(0, lh, step)
            for cx in range(0, lw, step)
        ]

        def read(chunk: tuple[int, int, int, int]) -> None:
            cx, cy, cw, ch = chunk
            rgb = self.read_rgb(round(cx * ds_level), round(cy * ds_level), level, cw, ch)
            if full is not None:
                full[cy : cy + ch, cx : cx + cw] = rgb
            block = np.asarray(Image.fromarray(rgb).reduce(f)) if f > 1 else rgb
            out[cy // f : cy // f + block.shape[0], cx // f : cx // f + block.shape[1]] = block

        if workers > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(min(workers, len(chunks)), "lamina-overview") as pool:
                list(pool.map(read, chunks))
        else:
            for chunk in chunks:
                read(chunk)
        self._level0 = full
        return out, ds_level * f


def read_tile_rgb(row: Mapping[str, Any]) -> np.ndarray:
    """The image of a stored tile row, re-read exactly as the ingest read it (see tile_images)."""
    from lamina.indexer.tile_images import tile_image

    return tile_image(row)


def thumbnail_rgb(path: str | Path, max_px: int = 512) -> np.ndarray:
    """A slide's thumbnail from its pyramid levels, longest side <= max_px (see tile_images)."""
    from lamina.indexer.tile_images import source_thumbnail

    return source_thumbnail(path, "slide", max_px)


def read_region_rgb(
    path: str | Path,
    region: tuple[int, int, int, int],
    target_mpp: float,
    mpp_override: float | None = None,
) -> np.ndarray:
    """uint8 RGB of the level-0 region (x, y, w, h) of a slide, at ``target_mpp`` µm/px.

    Read from the coarsest level at or finer than the target, then resized to
    ``round(w * mpp / target_mpp)`` x ``round(h * mpp / target_mpp)`` pixels.
    """
    x, y, w, h = (int(v) for v in region)
    with Slide(path, mpp_override=mpp_override) as slide:
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x >= slide.width or y >= slide.height:
            raise UnreadableSourceError(
                f"{path}: region {x},{y},{w},{h} lies outside the slide "
                f"({slide.width} x {slide.height} level-0 pixels)"
            )
        if slide.mpp is None:  # not reached: require_mpp=True raised already
            raise MissingMppError(f"{path}: no microns-per-pixel")
        choice = choose_level(slide.level_downsamples, slide.mpp, target_mpp, 1, str(path))
        rw = max(1, round(w / choice.downsample))
        rh = max(1, round(h / choice.downsample))
        ow = max(1, round(rw * choice.level_mpp / target_mpp))
        oh = max(1, round(rh * choice.level_mpp / target_mpp))
        if max(rw, rh, ow, oh) > MAX_REGION_PX:
            raise UnreadableSourceError(
                f"{path}: region {w} x {h} at {target_mpp:g} µm/px is larger than "
                f"{MAX_REGION_PX} pixels a side"
            )
        rgb = slide.read_rgb(x, y, choice.level, rw, rh)
        if (ow, oh) != (rw, rh):
            rgb = np.asarray(
                Image.fromarray(rgb).resize((ow, oh), Image.Resampling.BILINEAR, reducing_gap=None)
            )
        return rgb


@dataclass
class SlidePlan:
    """What the ingest decides for one slide: the level and read size, every grid tile, the
    tissue mask and each grid tile's tissue fraction (tiles kept: fraction >= min_tissue)."""

    choice: LevelChoice
    grid: list[TileSpec]
    tissue: TissueMask
    fractions: np.ndarray


def plan_slide(
    slide: Slide,
    mpp0: float,
    target_mpp: float,
    tile_px: int,
    workers: int = 1,
    keep_level0: bool = False,
) -> SlidePlan:
    """Level, grid, tissue mask and tile tissue fractions of an open slide whose level 0 is
    ``mpp0`` µm/px: the one computation both the ingest and the slide QC use."""
    choice = choose_level(slide.level_downsamples, mpp0, target_mpp, tile_px, slide.name)
    lw, lh = slide.level_dimensions[choice.level]
    grid = plan_grid(lw, lh, choice)
    rgb, ds = slide.overview(
        mask_downsample(mpp0, choice.extent_l0, slide.width, slide.height),
        workers=workers,
        keep_level0=keep_level0 and choice.level == 0,
    )
    tissue = detect_tissue(rgb, ds, mpp0, slide.width, slide.height)
    fractions = tissue.fractions([(t.x, t.y) for t in grid], choice.extent_l0)
    return SlidePlan(choice, grid, tissue, fractions)


def prepare_slide(
    file: SourceFile,
    source_id: str,
    metadata: dict[str, Any],
    options: IngestOptions,
    encoder: Encoder | None = None,
) -> PreparedSource:
    """Open, find tissue, plan tiles; return the rows and a lazy, parallel, in-order tile reader.

    The slide is opened (and its tissue mask computed) here, in a preparation thread; tile
    pixels are read only when the pipeline iterates ``images``. ``encoder`` is accepted for the
    pipeline's signature; tiles are always ``options.tile_px`` and the encoder resizes.
    """
    from lamina.indexer.tile_stream import TileStream

    slide = Slide(file.path, mpp_override=options.mpp_override, metadata=metadata)
    try:
        if slide.mpp is None:  # not reached: Slide(require_mpp=True) raised already
            raise MissingMppError(f"{slide.name}: no microns-per-pixel")
        mpp = slide.mpp
        plan = plan_slide(slide, mpp, options.mpp, options.tile_px, options.workers, True)
        choice, grid, tissue, fractions = plan.choice, plan.grid, plan.tissue, plan.fractions
    except BaseException:
        slide.close()
        raise
    keep = [(t, float(f)) for t, f in zip(grid, fractions, strict=True) if f >= options.min_tissue]
    meta = {k: v for k, v in metadata.items() if k not in RESERVED_COLUMNS}
    properties = slide.properties() | {
        "tissue_fraction": round(tissue.tissue_fraction, 4),
        "grid_tiles": len(grid),
        "read_level": choice.level,
        "read_px": choice.size_px,
    }
    source = {
        "source_id": source_id,
        "source": str(file.path.resolve()),
        "kind": "slide",
        "width": slide.width,
        "height": slide.height,
        "mpp": mpp,
        "properties": properties,
        **meta,
    }
    tiles = [
        {
            **meta,
            "kind": "tile",
            "x": t.x,
            "y": t.y,
            "level": t.level,
            "size_px": t.size_px,
            "tile_px": options.tile_px,
            "mpp": options.mpp,
            "tissue_fraction": round(f, 4),
        }
        for t, f in keep
    ]
    note = None
    if not keep:
        note = (
            f"no tissue tiles: tissue covers {tissue.tissue_fraction:.1%} of the slide and "
            f"none of its {len(grid)} tiles reaches --min-tissue {options.min_tissue:g}"
        )
    specs = [t for t, _ in keep]
    window = max(2 * options.batch_size, 4 * options.workers)
    stream = TileStream(
        lambda spec: slide.read_tile(spec, options.tile_px),
        specs,
        workers=options.workers,
        window=window,
        name="lamina-tile",
    )

    def close() -> None:
        stream.close()
        slide.close()

    return PreparedSource(file, source, tiles, stream, close, note=note)
