"""Slide QC over HTTP (blueprint ``bp``, mounted under /api/v1; read scope).

GET /collections/{c}/sources/{source_id}/qc.png      the slide with tissue contour and tile grid
GET /collections/{c}/sources/{source_id}/qc.geojson  the same as GeoJSON (level-0 px, y down)

Computed by :mod:`indexer.slide_qc` from the slide and the store (the kept tiles are the stored
rows of the source); the computed record is cached per (collection, snapshot, source), so
pictures of other sizes and the GeoJSON of a slide just looked at cost no slide read. Photos,
and slides whose vectors were imported (no tiling of ours), answer 404 ``NO_SLIDE_QC``. Only
the source id is ever taken from the client; the file opened is the one the store recorded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow.compute as pc
from flask import Blueprint, Response, request

from lamina.api.app import state
from lamina.api.errors import ApiError
from lamina.api.limits import guarded

bp = Blueprint("qc", __name__)

CACHE_SIZE = 16
"""Slide QC records and GeoJSON documents kept (a 50k-tile slide's GeoJSON is ~20 MB)."""
_cache: OrderedDict[tuple[str, ...], Any] = OrderedDict()
_cache_lock = threading.Lock()
_HEADERS = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}


def stored_tiles(view: Any, source_id: str, path: str) -> tuple[np.ndarray, ...]:
    """(tile_id, x, y, tile_px, mpp) of the live stored tiles of one source at one path, read
    column-wise from the segments that hold the source (others are skipped by their small
    sources table, so the cost does not grow with the collection)."""
    parts: list[tuple[np.ndarray, ...]] = []
    for r in view.readers:
        src = r.sources
        held = pc.and_(
            pc.equal(src.column("source_id"), source_id), pc.equal(src.column("source"), path)
        )
        if not pc.any(held).as_py():
            continue
        t = r.table
        sel = pc.and_(
            pc.equal(t.column("source_id"), source_id), pc.equal(t.column("source"), path)
        )
        mask = np.asarray(sel.to_numpy(zero_copy_only=False), bool)
        if r.live is not None:
            mask &= r.live
        rows = np.flatnonzero(mask)
        cols = []
        for name in ("tile_id", "x", "y", "tile_px", "mpp"):
            arr = t.column(name).take(rows)
            cols.append(np.asarray(arr.to_numpy(zero_copy_only=False)))
        parts.append(tuple(cols))
    if not parts:
        return tuple(np.zeros(0) for _ in range(5))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(5))


def _record(name: str, source_id: str) -> tuple[Any, dict[str, Any]]:
    """(SlideQC, info for the GeoJSON) of one source, computed once per snapshot."""
    from lamina.api.exposure import source_namer
    from lamina.api.images import _source_path
    from lamina.indexer.slide_qc import compute_slide_qc
    from lamina.indexer.tile_images import check_unchanged

    view = state().service.view(name)
    source = view.source(source_id)
    kind = str(source.get("kind") or "photo")
    if kind != "slide":
        raise ApiError(
            f"source {source_id[:12]} is a {kind}: slide QC (tissue and tile grid) exists only "
            "for indexed slides",
            404,
            "NO_SLIDE_QC",
        )
    props = source.get("properties")
    if isinstance(props, str):
        import json

        try:
            props = json.loads(props)
        except ValueError:
            props = {}
    if not isinstance(props, dict) or "grid_tiles" not in props:
        raise ApiError(
            f"slide {source_id[:12]} was imported with vectors computed elsewhere: there is "
            "no tissue detection or tile grid of this collection to show",
            404,
            "NO_SLIDE_QC",
        )
    stored = str(source.get("source") or "")
    path = str(_source_path(source))  # where the file is now (the home's roots applied)
    check_unchanged({**source, "source": path})  # a stat: refused when changed, cached or not
    key = (view.collection.uuid, view.snapshot.id, source_id, path)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    ids, xs, ys, tile_px, mpp = stored_tiles(view, source_id, stored)
    info = view.collection.info
    tpx = int(tile_px[0]) if len(tile_px) else int(info.get("tile_px") or 224)
    target = float(mpp[0]) if len(mpp) and mpp[0] == mpp[0] else float(info.get("mpp") or 0.5)
    qc = compute_slide_qc(path, float(source.get("mpp") or 0), target, tpx, (ids, xs, ys))
    shown = source_namer()(path)
    doc = {
        "collection": name,
        "snapshot": view.snapshot.id,
        "source_id": source_id,
        "name": shown.rsplit("/", 1)[-1] if shown else None,
        "mpp_source": props.get("mpp_source"),
    }
    with _cache_lock:
        _cache[key] = (qc, doc)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return qc, doc


def _size() -> int:
    from lamina.indexer.slide_qc import DEFAULT_QC_PX, MAX_QC_PX, MIN_QC_PX

    raw = request.args.get("size")
    if raw is None or raw == "":
        return DEFAULT_QC_PX
    try:
        size = int(raw)
    except ValueError:
        size = -1
    if not MIN_QC_PX <= size <= MAX_QC_PX:
        raise ApiError(
            f"size must be an integer from {MIN_QC_PX} to {MAX_QC_PX} (pixels of the longest "
            f"side), got {raw[:40]!r}",
            422,
            "INVALID_QUERY",
        )
    return size


@bp.get("/collections/<name>/sources/<source_id>/qc.png")
@guarded
def qc_png(name: str, source_id: str) -> Response:
    from lamina.indexer.slide_qc import qc_png as render
    from lamina.indexer.slide_qc import qc_thumbnail

    size = _size()
    qc, doc = _record(name, source_id)
    png = render(qc, qc_thumbnail(_path_of(name, source_id), size))
    headers = {
        **_HEADERS,
        "X-Lamina-Snapshot": str(doc["snapshot"]),
        "X-Lamina-Tiles-Kept": str(int(qc.kept.sum())),
        "X-Lamina-Tiles-Rejected": str(int((~qc.kept).sum())),
    }
    return Response(png, mimetype="image/png", headers=headers)


def _path_of(name: str, source_id: str) -> str:
    from lamina.api.images import _source_path

    return str(_source_path(state().service.view(name).source(source_id)))


@bp.get("/collections/<name>/sources/<source_id>/qc.geojson")
@guarded
def qc_geojson(name: str, source_id: str) -> Response:
    from lamina.indexer.slide_qc import qc_geojson_bytes as as_geojson

    qc, doc = _record(name, source_id)
    key = ("geojson", doc["collection"], doc["snapshot"], source_id)
    with _cache_lock:
        body = _cache.get(key)
    if body is None:
        # sent as is, not through the JSON answer filter (api/exposure.py): the document holds
        # no path (numbers, fixed words, and the name that filter's policy gave in _record)
        body = as_geojson(qc, doc)
        with _cache_lock:
            _cache[key] = body
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    headers = {**_HEADERS, "X-Lamina-Snapshot": str(doc["snapshot"])}
    return Response(body, mimetype="application/geo+json", headers=headers)
