"""Tissue detection on a low-resolution overview of a slide (pure numpy/scipy, no I/O).

Method, on an overview at about 8 µm/px (finer where needed so that a tile spans >= 16 mask px
and the overview's short side is >= 64 px, down to level 0), read by the caller:

1. HSV of every pixel.
2. Pen and dirt are masked first: green/teal/cyan ink (hue 70-190°, S > 0.2), bright saturated blue
   ink (hue 190-245°, S > 0.45, V > 0.5; dense hematoxylin can be as blue but is darker) and black
   (V < 0.2, S < 0.5; very dark but saturated purple is dense nuclei), each grown by ~16 µm to
   swallow their halos.
3. Tissue = saturation above an Otsu threshold computed on the remaining pixels, clamped to
   [0.06, 0.20] so that an all-tissue or all-glass overview still gets a sensible cut.
4. Morphology: closing and opening (3x3), holes < (64 µm)^2 filled, objects < (64 µm)^2 dropped
   (both capped at 0.5 % of the overview so tiny slides keep their tissue).

A tile's tissue fraction is the tissue share of its part that lies inside the slide (an
integral image makes each lookup O(1)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

MASK_MPP = 8.0
MIN_TILE_MASK_PX = 16
MIN_MASK_SIDE = 64
S_MIN, S_MAX = 0.06, 0.20
DARK_V, DARK_S = 0.20, 0.50
GREEN_HUE, GREEN_S = (70.0, 190.0), 0.20
BLUE_HUE, BLUE_S, BLUE_V = (190.0, 245.0), 0.45, 0.5
PEN_MARGIN_UM = 16.0
MIN_OBJECT_UM = 64.0
MAX_SMALL_SHARE = 0.005


def mask_downsample(mpp0: float, tile_extent_l0: float, width: int, height: int) -> float:
    """Level-0 pixels per mask pixel wanted: ~MASK_MPP, but finer where a tile would span fewer
    than MIN_TILE_MASK_PX mask pixels or the mask's short side would be under MIN_MASK_SIDE."""
    return max(
        1.0,
        min(MASK_MPP / mpp0, tile_extent_l0 / MIN_TILE_MASK_PX, min(width, height) / MIN_MASK_SIDE),
    )


def hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hue in degrees, saturation, value), float32 arrays of an (h, w, 3) uint8 image."""
    c = rgb.astype(np.int16)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    mx = c.max(axis=-1)
    d = mx - c.min(axis=-1)
    rmax = mx == r
    gmax = (mx == g) & ~rmax
    num = np.where(rmax, g - b, np.where(gmax, b - r, r - g)).astype(np.float32)
    h = np.where(rmax, 0.0, np.where(gmax, 120.0, 240.0)).astype(np.float32)
    h += 60.0 * num / np.maximum(d, 1).astype(np.float32)
    h[h < 0] += 360.0
    h[d == 0] = 0.0
    mxf = mx.astype(np.float32)
    s = (d / np.maximum(mxf, 1.0)).astype(np.float32)
    return h, s, mxf / np.float32(255.0)


def pen_mask(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pixels of marker ink (green, blue) or black ink/dirt."""
    green = (h >= GREEN_HUE[0]) & (h < GREEN_HUE[1]) & (s > GREEN_S)
    blue = (h >= BLUE_HUE[0]) & (h < BLUE_HUE[1]) & (s > BLUE_S) & (v > BLUE_V)
    black = (v < DARK_V) & (s < DARK_S)
    return green | blue | black


def otsu(values: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1] (256 bins); 0 when there is nothing to split."""
    if values.size == 0:
        return 0.0
    bins = np.clip((values * 255.0).astype(np.int64), 0, 255)
    p = np.bincount(bins.ravel(), minlength=256).astype(np.float64)
    p /= p.sum()
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    denom = omega * (1.0 - omega)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where(denom > 0, (mu[-1] * omega - mu) ** 2 / denom, 0.0)
    if not np.any(between > 0):
        return 0.0
    return (int(np.argmax(between)) + 1) / 255.0


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (xx * xx + yy * yy) <= radius * radius


def _drop_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    if min_px <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_px: int) -> np.ndarray:
    if max_px <= 0:
        return mask
    holes = ndimage.binary_fill_holes(mask) & ~mask
    if not holes.any():
        return mask
    labels, n = ndimage.label(holes)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = sizes <= max_px
    small[0] = False
    return mask | small[labels]


@dataclass
class TissueMask:
    """A boolean tissue mask over the slide; mask pixel (i, j) covers level-0 pixels
    [j*downsample, (j+1)*downsample) x [i*downsample, (i+1)*downsample)."""

    mask: np.ndarray
    downsample: float
    width: int
    height: int
    threshold: float = 0.0
    pen_fraction: float = 0.0
    _integral: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        m = self.mask.astype(np.int64)
        self._integral = np.zeros((m.shape[0] + 1, m.shape[1] + 1), np.int64)
        self._integral[1:, 1:] = m.cumsum(0).cumsum(1)

    def _box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int]:
        """(tissue pixels, pixels) of the mask over level-0 box [x0, x1) x [y0, y1) in the slide."""
        x1, y1 = min(x1, self.width), min(y1, self.height)
        h, w = self.mask.shape
        c0 = min(max(0, round(x0 / self.downsample)), w - 1)
        r0 = min(max(0, round(y0 / self.downsample)), h - 1)
        c1 = min(w, max(c0 + 1, round(x1 / self.downsample)))
        r1 = min(h, max(r0 + 1, round(y1 / self.downsample)))
        ii = self._integral
        tissue = int(ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0])
        return tissue, (r1 - r0) * (c1 - c0)

    def fraction(self, x: float, y: float, extent: float) -> float:
        """Tissue share of the in-slide part of the square tile at level-0 (x, y), side extent."""
        tissue, area = self._box(x, y, x + extent, y + extent)
        return tissue / area if area else 0.0

    def fractions(self, origins: Sequence[tuple[int, int]], extent: float) -> np.ndarray:
        """:meth:`fraction` of many tiles at once (float32)."""
        if not len(origins):
            return np.zeros(0, np.float32)
        xy = np.asarray(origins, np.float64).reshape(-1, 2)
        h, w = self.mask.shape
        ds = self.downsample

        def bounds(lo: np.ndarray, size: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
            hi = np.minimum(lo + extent, limit)
            i0 = np.clip(np.round(lo / ds), 0, size - 1).astype(np.int64)
            i1 = np.minimum(size, np.maximum(i0 + 1, np.round(hi / ds).astype(np.int64)))
            return i0, i1

        c0, c1 = bounds(xy[:, 0], w, self.width)
        r0, r1 = bounds(xy[:, 1], h, self.height)
        ii = self._integral
        tissue = ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]
        return (tissue / ((r1 - r0) * (c1 - c0))).astype(np.float32)

    @property
    def tissue_fraction(self) -> float:
        """Share of the slide's area that is tissue."""
        tissue, area = self._box(0, 0, self.width, self.height)
        return tissue / area if area else 0.0


def detect_tissue(
    rgb: np.ndarray, downsample: float, mpp0: float, width: int, height: int
) -> TissueMask:
    """Tissue mask of an overview ``rgb`` whose pixels are ``downsample`` level-0 pixels wide."""
    mask_mpp = mpp0 * downsample
    h, s, v = hsv(rgb)
    pen = pen_mask(h, s, v)
    if pen.any():
        r = max(1, round(PEN_MARGIN_UM / mask_mpp))
        pen = ndimage.binary_dilation(pen, structure=_disk(r)) if r <= 64 else pen
    clean = s[~pen]
    thr = float(np.clip(otsu(clean), S_MIN, S_MAX))
    tissue = (s > thr) & ~pen
    if min(tissue.shape) >= 8:
        cross = ndimage.generate_binary_structure(2, 1)
        padded = np.pad(tissue, 2, mode="edge")  # the slide edge is not a tissue border
        padded = ndimage.binary_closing(padded, structure=cross) | padded
        tissue = ndimage.binary_opening(padded, structure=cross)[2:-2, 2:-2] & ~pen
    small = (MIN_OBJECT_UM / mask_mpp) ** 2
    cap = MAX_SMALL_SHARE * tissue.size
    tissue = _fill_small_holes(tissue, int(min(small, cap)))
    tissue = _drop_small(tissue, int(min(small, cap))) & ~pen
    return TissueMask(
        mask=tissue,
        downsample=downsample,
        width=width,
        height=height,
        threshold=thr,
        pen_fraction=float(pen.mean()) if pen.size else 0.0,
    )
