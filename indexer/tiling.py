"""The tile plan of a slide: which pyramid level to read, how many pixels, and where.

Tiles are ``tile_px`` square at a target resolution (``mpp``, µm per pixel). The level read is
the coarsest one that is at or finer than the target (``level_mpp <= target``, with a 1 %
tolerance for scanners whose downsamples are not exact powers of two); ``size_px =
round(tile_px * target_mpp / level_mpp)`` pixels are read there and resized to ``tile_px``.

The grid is laid out in the chosen level's pixels, so tiles never overlap and always lie inside
that level: tile ``(i, j)`` reads level pixels ``[i*size_px, (i+1)*size_px)``. Partial tiles at
the right and bottom edges are dropped, except along an axis where the whole slide is smaller
than one tile: there one tile starting at 0 is kept and the part outside the slide is read as
white (OpenSlide returns transparent pixels there, composited on white).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lamina.indexer.errors import SlideResolutionError

LEVEL_TOLERANCE = 0.01
"""A level up to 1 % coarser than the target still counts as 'at' the target."""
UPSAMPLE_TOLERANCE = 0.10
"""Level 0 may be up to 10 % coarser than the target (read slightly upsampled); beyond that the
slide is refused rather than blown up."""


@dataclass(frozen=True)
class LevelChoice:
    level: int
    downsample: float
    level_mpp: float
    size_px: int
    """Pixels read at ``level`` for one tile (before resizing to tile_px)."""

    @property
    def extent_l0(self) -> float:
        """The side of one tile in level-0 pixels."""
        return self.size_px * self.downsample


@dataclass(frozen=True)
class TileSpec:
    """One planned tile: level-0 origin, the level read and the pixels read there."""

    x: int
    y: int
    level: int
    size_px: int


def choose_level(
    downsamples: Sequence[float], mpp0: float, target_mpp: float, tile_px: int, name: str = "slide"
) -> LevelChoice:
    """The coarsest level at or finer than ``target_mpp`` and the read size there."""
    if mpp0 <= 0 or target_mpp <= 0:
        raise SlideResolutionError(
            f"{name}: invalid resolution ({mpp0} µm/px, target {target_mpp})"
        )
    if mpp0 > target_mpp * (1 + UPSAMPLE_TOLERANCE):
        raise SlideResolutionError(
            f"{name}: the slide's finest level is {mpp0:.4g} µm/px, coarser than the target "
            f"{target_mpp:g} µm/px; index it into a collection with --mpp {mpp0:.3g} or coarser "
            "(tiles are never upsampled more than 10 %)"
        )
    best = 0
    for level, ds in enumerate(downsamples):
        if mpp0 * ds <= target_mpp * (1 + LEVEL_TOLERANCE) and ds >= downsamples[best]:
            best = level
    ds = float(downsamples[best])
    level_mpp = mpp0 * ds
    size_px = max(1, round(tile_px * target_mpp / level_mpp))
    return LevelChoice(level=best, downsample=ds, level_mpp=level_mpp, size_px=size_px)


def grid_counts(level_width: int, level_height: int, size_px: int) -> tuple[int, int]:
    """Tiles along x and y: whole tiles only, but at least one along an axis shorter than a tile."""
    nx = level_width // size_px if level_width >= size_px else 1
    ny = level_height // size_px if level_height >= size_px else 1
    return nx, ny


def plan_grid(level_width: int, level_height: int, choice: LevelChoice) -> list[TileSpec]:
    """All grid tiles in row-major order (y, then x), level-0 origins."""
    nx, ny = grid_counts(level_width, level_height, choice.size_px)
    ds, s = choice.downsample, choice.size_px
    return [
        TileSpec(x=round(i * s * ds), y=round(j * s * ds), level=choice.level, size_px=s)
        for j in range(ny)
        for i in range(nx)
    ]
