"""The slide viewer: deep-zoom descriptors and tiles of indexed slides, and the viewer page.

- ``GET /collections/{c}/sources/{source_id}/dzi``: the pyramid of a slide as JSON (level-0
  width and height, tile size, overlap, deep-zoom levels, µm/px, the tile URL template
  relative to ``.../sources/{source_id}/``);
  ``?format=xml`` answers the DZI XML document instead.
- ``GET /collections/{c}/sources/{source_id}/dz/{level}/{col}_{row}.{jpeg|png}``: one tile.
- ``GET /viewer?collection=C&tile=ID`` (or ``&source=SOURCE_ID``): the viewer page.

Slides are addressed by source id (sha256 of the file), never by server path. Deep-zoom pixel
coordinates at the finest level are level-0 pixels (``indexer.deepzoom``). Errors are 404 with
a stable code: ``SOURCE_NOT_FOUND`` (unknown id), ``NOT_A_SLIDE`` (a photo or an imported
vector without pixels: no pyramid; a photo's image is its thumbnail), ``DZ_TILE_NOT_FOUND``
(level, address or format outside the pyramid), ``SOURCE_FILE_MISSING`` (the file moved); a
file changed since indexing is 409 ``SOURCE_CHANGED``. Data routes take a slot of
``MAX_INFLIGHT`` (429 when none is free) and need ``read`` scope; the page is public (it holds
no data and fetches everything through the API with the caller's token).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template, request

from lamina.api.app import API_PREFIX, state
from lamina.api.errors import ApiError
from lamina.api.limits import guarded

bp = Blueprint("slides", __name__)
pages = Blueprint("viewer", __name__)

MIMETYPES = {"jpeg": "image/jpeg", "jpg": "image/jpeg", "png": "image/png"}
# a slide's bytes never change under one source id (its sha256): tiles may be cached
_TILE_HEADERS = {"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"}
_LOCK = threading.Lock()
MAX_ADDRESS = 1 << 31  # beyond any pyramid: refused without echoing a 10,000-digit number


def deepzoom() -> Any:
    """The process's :class:`~lamina.indexer.deepzoom.DeepZoomCache`, made on first use
    (``DZ_MAX_SLIDES`` open slides, ``DZ_CACHE_BYTES`` bytes of encoded tiles)."""
    ext = current_app.extensions
    found = ext.get("lamina_deepzoom")
    if found is None:
        with _LOCK:
            found = ext.get("lamina_deepzoom")
            if found is None:
                from lamina.indexer.deepzoom import (
                    DEFAULT_MAX_SLIDES,
                    DEFAULT_MAX_TILE_BYTES,
                    DeepZoomCache,
                )

                cfg = current_app.config
                found = ext["lamina_deepzoom"] = DeepZoomCache(
                    max_slides=int(cfg.get("DZ_MAX_SLIDES") or DEFAULT_MAX_SLIDES),
                    max_tile_bytes=int(cfg.get("DZ_CACHE_BYTES") or DEFAULT_MAX_TILE_BYTES),
                )
    return found


def _slide_source(name: str, source_id: str) -> tuple[Any, dict[str, Any]]:
    """(view, source row) of an indexed slide, or a 404 saying why there is no pyramid."""
    view = state().service.view(name)
    source = view.source(source_id)  # SourceNotFoundError -> 404 SOURCE_NOT_FOUND
    kind = str(source.get("kind") or "photo")
    if kind != "slide":
        hint = " (its image: GET sources/SOURCE_ID/thumbnail)" if kind == "photo" else ""
        raise ApiError(
            f"source {source_id[:12]} is a {kind}, not a slide: it has no deep-zoom pyramid{hint}",
            404,
            "NOT_A_SLIDE",
        )
    from lamina.api.images import located

    source = located(source)  # where the slide is now (the home's roots applied)
    if not Path(str(source.get("source") or "")).is_file():
        raise ApiError(
            f"the slide file of source {source_id[:12]} is no longer where it was indexed",
            404,
            "SOURCE_FILE_MISSING",
        )
    return view, source


def _range_error(exc: Exception) -> ApiError:
    return ApiError(str(exc), 404, "DZ_TILE_NOT_FOUND")


@bp.get("/collections/<name>/sources/<source_id>/dzi")
@guarded
def dzi(name: str, source_id: str) -> Response:
    from lamina.indexer.deepzoom import DeepZoomRangeError

    view, source = _slide_source(name, source_id)
    fmt = request.args.get("format", "json")
    tile_format = request.args.get("tile_format", "jpeg")
    if fmt not in ("json", "xml"):
        raise ApiError(f"format must be json or xml, not {fmt[:20]!r}", 422, "INVALID_QUERY")
    if tile_format not in ("jpeg", "png"):
        raise ApiError(
            f"tile_format must be jpeg or png, not {tile_format[:20]!r}", 422, "INVALID_QUERY"
        )
    dz = deepzoom()
    if fmt == "xml":
        try:
            xml = dz.dzi_xml(source, tile_format)
        except DeepZoomRangeError as exc:  # pragma: no cover - the format is checked above
            raise _range_error(exc) from None
        return Response(xml, mimetype="application/xml", headers=_TILE_HEADERS)
    info = dz.info(source)
    return jsonify(
        {
            "ok": True,
            "collection": name,
            "snapshot": view.snapshot.id,
            "source_id": source_id,
            "source": str(source.get("source")),
            "kind": "slide",
            "mpp": source.get("mpp"),
            "dzi": {
                **info.to_dict(),
                "format": tile_format,
                # relative to .../sources/{source_id}/ (a leading "/" would read as a path)
                "tiles": "dz/{level}/{col}_{row}." + tile_format,
            },
        }
    )


@bp.get("/collections/<name>/sources/<source_id>/dz/<int:level>/<int:col>_<int:row>.<fmt>")
@guarded
def dz_tile(name: str, source_id: str, level: int, col: int, row: int, fmt: str) -> Response:
    from lamina.indexer.deepzoom import DeepZoomRangeError

    if max(level, col, row) > MAX_ADDRESS:
        raise ApiError("deep-zoom tile address out of range", 404, "DZ_TILE_NOT_FOUND")
    if fmt not in MIMETYPES:
        raise ApiError(f"tile format {fmt[:20]!r}: use jpeg or png", 404, "DZ_TILE_NOT_FOUND")
    _, source = _slide_source(name, source_id)
    try:
        data = deepzoom().tile(source, level, col, row, fmt)
    except DeepZoomRangeError as exc:
        raise _range_error(exc) from None
    return Response(data, mimetype=MIMETYPES[fmt], headers=_TILE_HEADERS)


@pages.get("/viewer")
def page() -> str:
    """The viewer page; it reads ``collection``, ``tile`` or ``source``, ``hits`` and ``score``
    from its own URL in the browser (docs/api.md, "Slide viewer")."""
    return render_template(
        "viewer.html",
        api_prefix=API_PREFIX,
        auth=state().auth.enabled,
    )
