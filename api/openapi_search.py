"""The OpenAPI paths of similarity search (one query, a batch) and of tile and source
pictures (merged into ``api.openapi.openapi_spec``)."""

from __future__ import annotations

from typing import Any

from lamina.api.openapi_common import (
    _COLQ,
    _PNG,
    _STR,
    _TILE_PARAM,
    _json,
    _name_param,
    _ok,
    _op,
    _ref,
)

SEARCH_PATHS: dict[str, Any] = {
    "/collections/{c}/search": {
        "post": _op(
            "k nearest tiles (level=tile) or slides (level=slide: top-m mean of tile similarities)",
            {"200": _json(_ref("SearchResult"))},
            parameters=[_name_param("c")],
            requestBody={
                "required": True,
                "content": {
                    "application/json": {"schema": _ref("SearchJson")},
                    "multipart/form-data": {"schema": _ref("SearchForm")},
                },
            },
        )
    },
    "/collections/{c}/search/batch": {
        "post": _op(
            "k nearest tiles for each of up to 1000 query vectors or stored tiles, one snapshot",
            {"200": _json(_ref("BatchResult"))},
            parameters=[_name_param("c")],
            requestBody={
                "required": True,
                "content": {"application/json": {"schema": _ref("BatchSearch")}},
            },
        )
    },
    "/tiles/{tile_id}": {
        "get": _op(
            "Metadata of one tile",
            {"200": _json(_ok({"collection": _STR, "snapshot": _STR, "tile": _ref("Tile")}))},
            parameters=[_TILE_PARAM, _COLQ],
        )
    },
    "/tiles/{tile_id}/image": {
        "get": _op(
            "PNG of the tile, re-read from its source",
            {"200": _PNG},
            parameters=[_TILE_PARAM, _COLQ],
        )
    },
    "/sources/{source_id}/thumbnail": {
        "get": _op(
            "PNG thumbnail of a source (never the label or macro image)",
            {"200": _PNG},
            parameters=[_name_param("source_id"), _COLQ],
        )
    },
}
