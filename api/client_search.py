"""Search and picture calls of :class:`lamina.api.client.Client`: one query (tile, vector,
image, region, whole slide), a batch, a tile's metadata and image, a source's thumbnail and a
slide's QC picture. Filters go as typed: ``filters=[EXPR, ...]`` (parsed by the server, every
condition kept) and/or ``filter={JSON}``. Standard library only."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lamina.api.client_base import ClientBase
from lamina.api.client_http import _file, _multipart, _q
from lamina.api.client_types import BatchResult, SearchResult


def _common(
    k: int,
    filter: Mapping[str, Any] | None,
    filters: Sequence[str] | None,
    params: Mapping[str, Any] | None,
    partial: bool,
    offset: int,
) -> dict[str, Any]:
    """The fields every search request carries (None: left out of the request)."""
    return {
        "k": k,
        "filter": dict(filter) if filter else None,
        "filters": list(filters) if filters else None,
        "params": dict(params) if params else None,
        "partial": True if partial else None,
        "offset": offset or None,
    }


class SearchMixin(ClientBase):
    """Similarity search and the pictures of tiles and sources."""

    def _search_json(self, collection: str, body: dict[str, Any]) -> SearchResult:
        body = {k: v for k, v in body.items() if v is not None}
        doc = self._json("POST", f"/collections/{_q(collection)}/search", json_body=body)
        return SearchResult.from_dict(doc)

    def search_image(
        self,
        collection: str,
        path_or_bytes: str | Path | bytes,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        group_by: str | None = None,
        exclude_same: str | None = None,
        level: str | None = None,
        params: Mapping[str, Any] | None = None,
        partial: bool = False,
        offset: int = 0,
        filters: Sequence[str] | None = None,
    ) -> SearchResult:
        name, data = _file(path_or_bytes)
        fields = {
            **_common(k, filter, filters, params, partial, offset),
            "group_by": group_by,
            "exclude_same": exclude_same,
            "level": level,
        }
        # a form field per value: filters one expression per line, partial as text
        fields["filters"] = "\n".join(filters) if filters else None
        fields["partial"] = "true" if partial else None
        body, ctype = _multipart(fields, [("image", name, data)])
        _, _, raw = self._raw(
            "POST", f"/collections/{_q(collection)}/search", body=body, content_type=ctype
        )
        return SearchResult.from_dict(json.loads(raw))

    def search_tile(
        self,
        collection: str,
        tile_id: int,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        group_by: str | None = None,
        exclude_same: str | None = None,
        level: str | None = None,
        params: Mapping[str, Any] | None = None,
        partial: bool = False,
        offset: int = 0,
        filters: Sequence[str] | None = None,
    ) -> SearchResult:
        return self._search_json(
            collection,
            {
                "tile_id": int(tile_id),
                **_common(k, filter, filters, params, partial, offset),
                "group_by": group_by,
                "exclude_same": exclude_same,
                "level": level,
            },
        )

    def search_vector(
        self,
        collection: str,
        vector: Sequence[float],
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        group_by: str | None = None,
        encoder: str | None = None,
        level: str | None = None,
        params: Mapping[str, Any] | None = None,
        partial: bool = False,
        offset: int = 0,
        filters: Sequence[str] | None = None,
    ) -> SearchResult:
        return self._search_json(
            collection,
            {
                "vector": [float(v) for v in vector],
                **_common(k, filter, filters, params, partial, offset),
                "group_by": group_by,
                "encoder": encoder,
                "level": level,
            },
        )

    def search_region(
        self,
        collection: str,
        slide: str,
        region: Sequence[int],
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        group_by: str | None = None,
        params: Mapping[str, Any] | None = None,
        partial: bool = False,
        offset: int = 0,
        filters: Sequence[str] | None = None,
    ) -> SearchResult:
        x, y, w, h = (int(v) for v in region)
        return self._search_json(
            collection,
            {
                "region": {"slide": slide, "x": x, "y": y, "w": w, "h": h},
                **_common(k, filter, filters, params, partial, offset),
                "group_by": group_by,
            },
        )

    def search_batch(
        self,
        collection: str,
        vectors: Sequence[Sequence[float]] | None = None,
        *,
        tile_ids: Sequence[int] | None = None,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        encoder: str | None = None,
        params: Mapping[str, Any] | None = None,
        partial: bool = False,
        offset: int = 0,
        filters: Sequence[str] | None = None,
    ) -> BatchResult:
        """Up to 1000 query vectors (or stored tiles), all answered on one snapshot."""
        body = {
            **_common(k, filter, filters, params, partial, offset),
            "vectors": None if vectors is None else [[float(x) for x in v] for v in vectors],
            "tile_ids": None if tile_ids is None else [int(t) for t in tile_ids],
            "encoder": encoder,
        }
        doc = self._json(
            "POST",
            f"/collections/{_q(collection)}/search/batch",
            json_body={key: v for key, v in body.items() if v is not None},
        )
        return BatchResult.from_dict(doc)

    def search_slides(
        self,
        collection: str,
        *,
        source_id: str | None = None,
        tile_id: int | None = None,
        vector: Sequence[float] | None = None,
        k: int = 10,
        top_m: int = 5,
        filter: Mapping[str, Any] | None = None,
        exclude_same: str | None = None,
        partial: bool = False,
        offset: int = 0,
        filters: Sequence[str] | None = None,
    ) -> SearchResult:
        """Slide-level retrieval: ``groups`` ranks slides by the top-m mean of tile similarity."""
        return self._search_json(
            collection,
            {
                "level": "slide",
                "source_id": source_id,
                "tile_id": tile_id,
                "vector": None if vector is None else [float(v) for v in vector],
                **_common(k, filter, filters, None, partial, offset),
                "top_m": top_m,
                "exclude_same": exclude_same,
            },
        )

    def tile(self, tile_id: int, collection: str | None = None) -> dict[str, Any]:
        return dict(
            self._json("GET", f"/tiles/{int(tile_id)}", query={"collection": collection})["tile"]
        )

    def tile_image(self, tile_id: int, collection: str | None = None) -> bytes:
        return self._raw("GET", f"/tiles/{int(tile_id)}/image", query={"collection": collection})[2]

    def thumbnail(self, source_id: str, collection: str | None = None) -> bytes:
        return self._raw(
            "GET", f"/sources/{_q(source_id)}/thumbnail", query={"collection": collection}
        )[2]

    def slide_qc_png(self, collection: str, source_id: str, size: int | None = None) -> bytes:
        """PNG of a slide with its tissue contour and tile grid (kept tiles blue, rejected red),
        longest side ``size`` pixels (server default 1024) plus a legend band."""
        path = f"/collections/{_q(collection)}/sources/{_q(source_id)}/qc.png"
        return self._raw("GET", path, query={"size": size})[2]

    def slide_qc_geojson(self, collection: str, source_id: str) -> dict[str, Any]:
        """GeoJSON FeatureCollection (level-0 pixels, y down) of a slide's tissue polygons
        (``kind`` "tissue") and grid tiles (``kind`` "tile", ``kept``, ``tile_id``)."""
        return self._json(
            "GET", f"/collections/{_q(collection)}/sources/{_q(source_id)}/qc.geojson"
        )
