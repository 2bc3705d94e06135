"""Read-only endpoints: health, encoders, collections, tiles, tile images, thumbnails, OpenAPI."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from lamina.api.app import state
from lamina.api.errors import ApiError
from lamina.api.limits import guarded

bp = Blueprint("collections", __name__)

_PNG_HEADERS = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lamina")
    except PackageNotFoundError:
        return "0.0.0+unknown"


@bp.get("/health")
def health() -> Response:
    from lamina.search.store import snapshot_id_of

    store = state().store
    ids: list[str] = []
    per: dict[str, str] = {}
    for name in store.names():
        try:
            segs = [s.segment_id for s in store.collection(name).segments()]
        except Exception:  # noqa: BLE001 - a collection being created must not fail health
            continue
        ids.extend(f"{name}/{s}" for s in segs)
        per[name] = snapshot_id_of(segs)
    doc: dict[str, Any] = {"ok": True, "version": _version(), "snapshot": snapshot_id_of(ids)}
    if not state().auth.enabled:  # health needs no token: say less when tokens are in use
        doc["snapshots"] = per
    return jsonify(doc)


@bp.get("/encoders")
def encoders() -> Response:
    from lamina.encoders import encoder_table

    return jsonify({"ok": True, "encoders": encoder_table()})


@bp.get("/collections")
@guarded
def collections() -> Response:
    from lamina.search.errors import CollectionDamagedError
    from lamina.search.status import collection_status

    st = state()
    cols = []
    for n in st.store.names():
        try:
            view = _status_view(st.service, n)
            col = st.store.collection(n) if view is None else view.collection
        except CollectionDamagedError as exc:  # listed, not fatal to the listing
            cols.append({"name": n, "error": str(exc)})
            continue
        doc = collection_status(col, runs=1, view=view)
        if view is not None:
            doc["snapshot"] = view.snapshot.id
        cols.append(doc)
    return jsonify({"ok": True, "collections": cols})


def _status_view(service: Any, name: str) -> Any:
    """The view a status answer reports on: the one this server answers on, brought to the
    current snapshot (a view made before another process compacted the collection names
    segment files that are gone; one listing when unchanged), or None when the server has not
    opened the collection: then the status comes from the segment files alone, without mapping
    vectors or hashing segments just to describe them."""
    return None if service.held_view(name) is None else service.view(name, wait=True)


@bp.get("/collections/<name>")
@guarded
def collection(name: str) -> Response:
    from lamina.search.status import collection_status, metadata_types

    svc = state().service
    view = _status_view(svc, name)
    if view is None:
        col = state().store.collection(name)
        doc = collection_status(col)
        doc["metadata_columns"] = metadata_types(col.snapshot().segments)
    else:
        doc = collection_status(view.collection, view=view)
        doc["snapshot"] = view.snapshot.id
        doc["metadata_columns"] = {c: view.schema[c] for c in view.metadata_columns}
    error = svc.build_error(name)
    if error:
        doc["index_build_error"] = error
    return jsonify({"ok": True, "collection": doc})


@bp.get("/collections/<name>/facets")
@guarded
def facets(name: str) -> Response:
    """The collection's filterable metadata columns with their values and counts
    (``search.facets``); ``?max_values=N`` (1-200, default 20) caps each text column's list."""
    from lamina.api.limits import int_in
    from lamina.search.facets import MAX_VALUES, MAX_VALUES_LIMIT, collection_facets

    cap = int_in(request.args.get("max_values"), "max_values", 1, MAX_VALUES_LIMIT)
    view = state().service.view(name)
    doc = collection_facets(view, MAX_VALUES if cap is None else cap)
    return jsonify({"ok": True, "collection": view.collection.name, **doc})


def resolve_collection(name: str | None) -> str:
    """``?collection=`` or, when the home has exactly one collection, that one."""
    if name:
        return name
    names = state().store.names()
    if len(names) == 1:
        return names[0]
    if not names:
        raise ApiError("there are no collections", 404, "COLLECTION_NOT_FOUND")
    raise ApiError(
        "tile ids are per collection: add ?collection=NAME",
        400,
        "COLLECTION_REQUIRED",
    )


def tile_doc(view: Any, row: dict[str, Any]) -> dict[str, Any]:
    def num(v: Any) -> float | None:
        return None if v is None or v != v else float(v)

    return {
        "tile_id": int(row["tile_id"]),
        "source_id": str(row["source_id"]),
        "source": str(row["source"]),
        "kind": str(row.get("kind") or "photo"),
        "x": int(row["x"]),
        "y": int(row["y"]),
        "level": int(row.get("level") or 0),
        "size_px": int(row["size_px"]),
        "tile_px": None if row.get("tile_px") is None else int(row["tile_px"]),
        "mpp": num(row.get("mpp")),
        "tissue_fraction": num(row.get("tissue_fraction")),
        "metadata": view.metadata_of(row),
    }


def _tile_row(tile_id: int) -> tuple[str, Any, dict[str, Any]]:
    name = resolve_collection(request.args.get("collection"))
    if tile_id >= 2**63:
        raise ApiError(f"tile {tile_id} does not exist", 404, "TILE_NOT_FOUND")
    view = state().service.view(name)
    return name, view, view.tile(tile_id)


@bp.get("/tiles/<int:tile_id>")
@guarded
def tile(tile_id: int) -> Response:
    name, view, row = _tile_row(tile_id)
    return jsonify(
        {"ok": True, "collection": name, "snapshot": view.snapshot.id, "tile": tile_doc(view, row)}
    )


@bp.get("/tiles/<int:tile_id>/image")
@guarded
def tile_image(tile_id: int) -> Response:
    from lamina.api.images import tile_png

    _, view, row = _tile_row(tile_id)
    source = view.source(str(row["source_id"]), path=str(row["source"]))
    row.update({k: source.get(k) for k in ("file_size", "file_mtime_ns")})  # changed-file check
    png = tile_png(row, int(state().config["MAX_IMAGE_PIXELS"]))
    return Response(png, mimetype="image/png", headers=_PNG_HEADERS)


@bp.get("/sources/<source_id>/thumbnail")
@guarded
def thumbnail(source_id: str) -> Response:
    from lamina.api.images import thumbnail_png

    name = resolve_collection(request.args.get("collection"))
    source = state().service.view(name).source(source_id)
    png = thumbnail_png(source, int(state().config["MAX_IMAGE_PIXELS"]))
    return Response(png, mimetype="image/png", headers=_PNG_HEADERS)


@bp.get("/openapi.json")
def openapi() -> Response:
    from lamina.api.openapi import openapi_spec

    return jsonify(openapi_spec(_version()))
