"""The OpenAPI description of the slide viewer's deep-zoom routes (merged into
``api.openapi.openapi_spec``; see api/routes/viewer.py for the behaviour)."""

from __future__ import annotations

from typing import Any

from lamina.api.openapi_common import _INT, _STR
from lamina.api.openapi_common import _SLIDE_ERRORS as _ERRORS
from lamina.api.openapi_common import _SOURCE_PATH_PARAMS as _PATH_PARAMS


def _int_param(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }


_DZI = {
    "type": "object",
    "required": ["ok", "collection", "snapshot", "source_id", "kind", "dzi"],
    "properties": {
        "ok": {"const": True},
        "collection": _STR,
        "snapshot": _STR,
        "source_id": _STR,
        "source": {"type": ["string", "null"]},
        "kind": {"const": "slide"},
        "mpp": {"type": ["number", "null"]},
        "dzi": {
            "type": "object",
            "description": "deep-zoom pyramid; pixel coordinates at level levels-1 are the "
            "slide's level-0 pixels",
            "properties": {
                "width": _INT,
                "height": _INT,
                "tile_size": _INT,
                "overlap": _INT,
                "levels": _INT,
                "level_tiles": {"type": "array", "items": {"type": "array", "items": _INT}},
                "level_dimensions": {"type": "array", "items": {"type": "array", "items": _INT}},
                "format": {"enum": ["jpeg", "png"]},
                "tiles": {
                    "type": "string",
                    "description": "tile URL template relative to .../sources/{source_id}/",
                },
            },
        },
    },
}

VIEWER_PATHS: dict[str, Any] = {
    "/collections/{c}/sources/{source_id}/dzi": {
        "get": {
            "summary": "Deep-zoom descriptor of an indexed slide (JSON, or DZI XML with "
            "format=xml); 404 NOT_A_SLIDE for photos",
            "parameters": [
                *_PATH_PARAMS,
                {"name": "format", "in": "query", "schema": {"enum": ["json", "xml"]}},
                {"name": "tile_format", "in": "query", "schema": {"enum": ["jpeg", "png"]}},
            ],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {
                        "application/json": {"schema": _DZI},
                        "application/xml": {"schema": _STR},
                    },
                },
                **_ERRORS,
            },
        }
    },
    "/collections/{c}/sources/{source_id}/dz/{level}/{col}_{row}.{fmt}": {
        "get": {
            "summary": "One deep-zoom tile (OpenSlide DeepZoomGenerator, 254 px + 1 px "
            "overlap); 404 DZ_TILE_NOT_FOUND outside the pyramid",
            "parameters": [
                *_PATH_PARAMS,
                _int_param("level"),
                _int_param("col"),
                _int_param("row"),
                {
                    "name": "fmt",
                    "in": "path",
                    "required": True,
                    "schema": {"enum": ["jpeg", "png"]},
                },
            ],
            "responses": {
                "200": {
                    "description": "the tile image",
                    "content": {
                        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                        "image/png": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                **_ERRORS,
            },
        }
    },
}
