"""Slide QC: the tissue the ingest found and the tile grid it laid, kept vs rejected tiles.

Recomputed on demand, not stored. The tissue mask, the level read and the grid come from
:func:`indexer.slides.plan_slide`, the function the ingest itself calls, with the slide's
level-0 resolution as it was recorded at ingest (the source row's ``mpp``, whatever its origin:
properties, manifest or override) and the tile size and target µm/px of the stored tiles; both
are deterministic, so the grid is the ingest's grid. Which tiles were kept is not recomputed:
it is read from the store (the source's tile rows), so the picture shows what is searchable.
A stored tile that is not on the recomputed grid (the slide changed; checked before) is
counted in ``unmatched``.

Why not store a QC record at ingest: the grid is implied by four numbers already stored
(level-0 size and mpp, tile px, target mpp), the kept tiles are the stored rows, and the mask
costs one overview read at ~8 µm/px (the ingest's own first step), independent of how many
tiles the collection holds; storing contours would add a per-source blob to every segment.

Coordinates are level-0 pixels, x right, y down (QuPath's convention). Tissue polygons are the
exact outline of the mask's pixels (:mod:`indexer.contours`), so a kept tile's tissue fraction
is the share of its square the polygons cover (up to the mask's pixel rounding).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lamina.indexer.contours import mask_polygons
from lamina.indexer.errors import UnreadableSourceError
from lamina.indexer.slides import Slide, plan_slide
from lamina.indexer.tiling import TileSpec

TISSUE_RGB = (0, 170, 60)
KEPT_RGB = (30, 90, 230)
REJECTED_RGB = (235, 60, 50)
DEFAULT_QC_PX = 1024
MIN_QC_PX, MAX_QC_PX = 64, 4096
LEGEND_PX = 18
"""Height of the legend band added below the picture (the picture's pixels are not covered)."""


@dataclass
class SlideQC:
    """The ingest's view of one slide: geometry, grid, per-tile tissue and kept state."""

    width: int
    height: int
    mpp0: float
    target_mpp: float
    tile_px: int
    level: int
    downsample: float
    size_px: int
    grid: list[TileSpec]
    fractions: np.ndarray
    """Tissue fraction of every grid tile (float32)."""
    tile_ids: np.ndarray
    """Stored tile id of every grid tile, -1 where the tile was rejected (int64)."""
    polygons: list[list[np.ndarray]]
    """Tissue polygons ``[shell, *holes]``, level-0 coordinates."""
    tissue_fraction: float
    unmatched: int = 0

    @property
    def extent_l0(self) -> float:
        """Side of one tile in level-0 pixels."""
        return self.size_px * self.downsample

    @property
    def kept(self) -> np.ndarray:
        return self.tile_ids >= 0

    def summary(self) -> dict[str, Any]:
        n_kept = int(self.kept.sum())
        return {
            "width": self.width,
            "height": self.height,
            "mpp": self.mpp0,
            "target_mpp": self.target_mpp,
            "tile_px": self.tile_px,
            "level": self.level,
            "size_px": self.size_px,
            "tile_extent_l0": round(self.extent_l0, 3),
            "grid_tiles": len(self.grid),
            "kept_tiles": n_kept,
            "rejected_tiles": len(self.grid) - n_kept,
            "unmatched_tiles": self.unmatched,
            "tissue_fraction": round(self.tissue_fraction, 4),
            "tissue_polygons": len(self.polygons),
        }


def compute_slide_qc(
    path: str | Path,
    mpp0: float,
    target_mpp: float,
    tile_px: int,
    stored: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> SlideQC:
    """QC of the slide at ``path`` given its stored tiles ``(tile_id, x, y)`` (see the module
    docstring); ``mpp0`` is the level-0 µm/px recorded at ingest."""
    if not mpp0 or mpp0 <= 0:
        raise UnreadableSourceError(f"{path}: no level-0 µm/px recorded for this slide")
    with Slide(path, require_mpp=False) as slide:
        plan = plan_slide(slide, float(mpp0), float(target_mpp), int(tile_px))
        width, height = slide.width, slide.height
    ids, xs, ys = (np.asarray(a, np.int64) for a in stored)
    gx = np.fromiter((t.x for t in plan.grid), np.int64, len(plan.grid))
    gy = np.fromiter((t.y for t in plan.grid), np.int64, len(plan.grid))
    gkey = (gx << 32) | gy
    skey = (xs << 32) | ys
    order = np.argsort(skey, kind="stable")
    at = np.clip(np.searchsorted(skey[order], gkey), 0, max(len(skey) - 1, 0))
    tile_ids = np.full(len(gkey), -1, np.int64)
    if len(skey):
        hit = skey[order][at] == gkey
        tile_ids[hit] = ids[order][at][hit]
    unmatched = int(len(skey) - np.isin(skey, gkey).sum())
    ds = plan.tissue.downsample
    polygons = [
        [_to_level0(ring, ds, width, height) for ring in poly]
        for poly in mask_polygons(plan.tissue.mask)
    ]
    return SlideQC(
        width=width,
        height=height,
        mpp0=float(mpp0),
        target_mpp=float(target_mpp),
        tile_px=int(tile_px),
        level=plan.choice.level,
        downsample=plan.choice.downsample,
        size_px=plan.choice.size_px,
        grid=plan.grid,
        fractions=plan.fractions,
        tile_ids=tile_ids,
        polygons=polygons,
        tissue_fraction=plan.tissue.tissue_fraction,
        unmatched=unmatched,
    )


def _to_level0(ring: np.ndarray, ds: float, width: int, height: int) -> np.ndarray:
    """Mask pixel corners -> level-0 pixels (the last mask column/row is cut at the slide)."""
    out = ring * ds
    out[:, 0] = np.minimum(out[:, 0], width)
    out[:, 1] = np.minimum(out[:, 1], height)
    return out


# -- GeoJSON ------------------------------------------------------------------------------------
def _num(v: float) -> float | int:
    r = round(float(v), 2)
    return int(r) if r.is_integer() else r


def _ring(ring: np.ndarray) -> list[list[float | int]]:
    pts = [[_num(x), _num(y)] for x, y in ring]
    return [*pts, pts[0]]


def qc_geojson(qc: SlideQC, info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A GeoJSON FeatureCollection in level-0 pixels: ``kind`` "tissue" (Polygon, QuPath
    ``objectType`` "annotation") and "tile" (square Polygon, "detection", ``kept``, and
    ``tile_id`` for kept tiles). ``info`` is added to the collection's ``lamina`` member."""
    return dict(json.loads(qc_geojson_bytes(qc, info)))


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def qc_geojson_bytes(qc: SlideQC, info: Mapping[str, Any] | None = None) -> bytes:
    """:func:`qc_geojson` as compact UTF-8 JSON (what the API sends). The tile features, tens of
    thousands on a large slide, are written from one template rather than as dicts."""
    parts: list[str] = []
    for i, poly in enumerate(qc.polygons):
        area = abs(_area(poly[0])) - sum(abs(_area(h)) for h in poly[1:])
        feature = {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [_ring(r) for r in poly]},
            "properties": {
                "kind": "tissue",
                "objectType": "annotation",
                "name": f"tissue {i + 1}",
                "classification": {"name": "Tissue", "color": list(TISSUE_RGB)},
                "measurements": {"area_um2": round(area * qc.mpp0 * qc.mpp0, 1)},
            },
        }
        parts.append(_dumps(feature))
    e = _num(qc.extent_l0)
    classes = {
        True: _dumps({"name": "Kept tile", "color": list(KEPT_RGB)}),
        False: _dumps({"name": "Rejected tile", "color": list(REJECTED_RGB)}),
    }
    fractions = [_dumps(f) for f in np.round(qc.fractions.astype(np.float64), 4).tolist()]
    for tile, frac, tid in zip(qc.grid, fractions, qc.tile_ids.tolist(), strict=True):
        x0, y0 = tile.x, tile.y
        x1, y1 = (x0 + e, y0 + e) if isinstance(e, int) else (_num(x0 + e), _num(y0 + e))
        kept = tid >= 0
        ring = f"[[{x0},{y0}],[{x1},{y0}],[{x1},{y1}],[{x0},{y1}],[{x0},{y0}]]"
        extra = f',"tile_id":{tid}' if kept else ""
        parts.append(
            '{"type":"Feature","geometry":{"type":"Polygon","coordinates":[' + ring + "]},"
            '"properties":{"kind":"tile","objectType":"detection",'
            f'"kept":{"true" if kept else "false"}{extra},"classification":{classes[kept]},'
            f'"tissue_fraction":{frac},"measurements":{{"tissue_fraction":{frac}}}}}}}'
        )
    lamina = {**qc.summary(), **dict(info or {}), "coordinates": "level-0 pixels, y down"}
    text = (
        '{"type":"FeatureCollection","features":['
        + ",".join(parts)
        + '],"lamina":'
        + _dumps(lamina)
        + "}"
    )
    return text.encode()


def _area(ring: np.ndarray) -> float:
    from lamina.indexer.contours import signed_area

    return signed_area(ring)


# -- picture ------------------------------------------------------------------------------------
def qc_png(qc: SlideQC, thumbnail: np.ndarray) -> bytes:
    """PNG of ``thumbnail`` (the whole slide, any size) with rejected tiles outlined in red,
    kept tiles tinted and outlined in blue, the tissue contour in green, and a legend band."""
    th, tw = thumbnail.shape[:2]
    sx, sy = tw / qc.width, th / qc.height
    e = qc.extent_l0
    boxes = [
        (int(t.x * sx), int(t.y * sy), int((t.x + e) * sx), int((t.y + e) * sy)) for t in qc.grid
    ]
    rgb = np.array(thumbnail[..., :3], dtype=np.uint8, copy=True)
    tint = np.zeros((th, tw), bool)
    for (x0, y0, x1, y1), kept in zip(boxes, qc.kept.tolist(), strict=True):
        if kept:
            tint[y0 : y1 + 1, x0 : x1 + 1] = True
    blend = np.asarray(KEPT_RGB, np.float32)
    rgb[tint] = (0.78 * rgb[tint] + 0.22 * blend).astype(np.uint8)
    im = Image.fromarray(rgb)
    draw = ImageDraw.Draw(im)
    for box, kept in zip(boxes, qc.kept.tolist(), strict=True):
        if not kept:
            draw.rectangle(box, outline=REJECTED_RGB)
    for box, kept in zip(boxes, qc.kept.tolist(), strict=True):
        if kept:
            draw.rectangle(box, outline=KEPT_RGB)
    width = max(1, round(max(tw, th) / 400))
    for poly in qc.polygons:
        for ring in poly:
            pts = [(float(x * sx), float(y * sy)) for x, y in ring]
            draw.line([*pts, pts[0]], fill=TISSUE_RGB, width=width)
    out = Image.new("RGB", (tw, th + LEGEND_PX), (255, 255, 255))
    out.paste(im, (0, 0))
    legend = ImageDraw.Draw(out)
    n_kept = int(qc.kept.sum())
    text = [
        (KEPT_RGB, f"kept {n_kept}"),
        (REJECTED_RGB, f"rejected {len(qc.grid) - n_kept}"),
        (TISSUE_RGB, f"tissue {qc.tissue_fraction:.0%}"),
        ((60, 60, 60), f"{qc.tile_px}px @ {qc.target_mpp:g} um/px"),
    ]
    x = 4
    for colour, words in text:
        legend.rectangle((x, th + 4, x + 9, th + 13), fill=colour)
        legend.text((x + 13, th + 3), words, fill=(20, 20, 20))
        x += 13 + int(legend.textlength(words)) + 12
    buf = io.BytesIO()
    out.save(buf, "PNG", compress_level=3)
    return buf.getvalue()


def qc_thumbnail(path: str | Path, size: int) -> np.ndarray:
    """The slide's picture for :func:`qc_png`, longest side ``size`` (clamped to
    [MIN_QC_PX, MAX_QC_PX]); from the pyramid, never a label or macro image."""
    from lamina.indexer.tile_images import source_thumbnail

    size = max(MIN_QC_PX, min(int(size), MAX_QC_PX))
    return source_thumbnail(path, "slide", size)
