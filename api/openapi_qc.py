"""The OpenAPI description of the slide QC routes (merged into ``api.openapi.openapi_spec``;
see api/routes/qc.py and indexer/slide_qc.py for the behaviour)."""

from __future__ import annotations

from typing import Any

from lamina.api.openapi_common import _INT, _STR
from lamina.api.openapi_common import _SLIDE_ERRORS as _ERRORS
from lamina.api.openapi_common import _SOURCE_PATH_PARAMS as _PATH_PARAMS

_NUM = {"type": "number"}
_POLYGON = {
    "type": "object",
    "required": ["type", "coordinates"],
    "properties": {
        "type": {"const": "Polygon"},
        "coordinates": {
            "type": "array",
            "description": "rings of [x, y] level-0 pixels (y down), each closed",
            "items": {"type": "array", "items": {"type": "array", "items": _NUM}},
        },
    },
}
_FEATURE = {
    "type": "object",
    "required": ["type", "geometry", "properties"],
    "properties": {
        "type": {"const": "Feature"},
        "geometry": _POLYGON,
        "properties": {
            "type": "object",
            "required": ["kind", "objectType", "classification"],
            "properties": {
                "kind": {"enum": ["tissue", "tile"]},
                "objectType": {"enum": ["annotation", "detection"]},
                "classification": {
                    "type": "object",
                    "properties": {"name": _STR, "color": {"type": "array", "items": _INT}},
                },
                "kept": {"type": "boolean", "description": "tiles: stored (searchable) or not"},
                "tile_id": {"type": "integer", "description": "kept tiles only"},
                "tissue_fraction": _NUM,
                "measurements": {"type": "object"},
            },
        },
    },
}
_GEOJSON = {
    "type": "object",
    "required": ["type", "features", "lamina"],
    "properties": {
        "type": {"const": "FeatureCollection"},
        "features": {"type": "array", "items": _FEATURE},
        "lamina": {
            "type": "object",
            "description": "the slide and its grid: width, height, mpp, mpp_source, target_mpp, "
            "tile_px, level, size_px, tile_extent_l0, grid_tiles, kept_tiles, rejected_tiles, "
            "unmatched_tiles, tissue_fraction, tissue_polygons, source_id, snapshot, name",
        },
    },
}

QC_PATHS: dict[str, Any] = {
    "/collections/{c}/sources/{source_id}/qc.png": {
        "get": {
            "summary": "The slide with its tissue contour (green) and tile grid: kept tiles "
            "blue, rejected red, legend band below; 404 NO_SLIDE_QC for photos and imported "
            "slides",
            "parameters": [
                *_PATH_PARAMS,
                {
                    "name": "size",
                    "in": "query",
                    "description": "longest side in pixels (default 1024)",
                    "schema": {"type": "integer", "minimum": 64, "maximum": 4096},
                },
            ],
            "responses": {
                "200": {
                    "description": "the QC picture",
                    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                },
                **_ERRORS,
            },
        }
    },
    "/collections/{c}/sources/{source_id}/qc.geojson": {
        "get": {
            "summary": "Tissue polygons (annotations) and every grid tile (detections, kept or "
            "not) as GeoJSON in level-0 pixels, QuPath's convention; 404 NO_SLIDE_QC for photos "
            "and imported slides",
            "parameters": _PATH_PARAMS,
            "responses": {
                "200": {
                    "description": "a GeoJSON FeatureCollection",
                    "content": {"application/geo+json": {"schema": _GEOJSON}},
                },
                **_ERRORS,
            },
        }
    },
}
