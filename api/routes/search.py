"""POST /collections/{c}/search: by uploaded image (multipart) or by tile_id/vector/region/source_id
(JSON), at tile level (default) or slide level (``"level": "slide"``).

POST /collections/{c}/search/batch: up to 1000 query vectors (or stored tile ids) answered on one
snapshot. Both take ``params`` (nprobe, ef_search, refine, strategy, exact_below; validated by
``search.params.check_params``) and every tile-level answer carries the planner's ``plan``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Blueprint, Response, jsonify, request

from lamina.api.app import state
from lamina.api.errors import ApiError
from lamina.api.limits import acquire_within_deadline, field_json, guarded, short

bp = Blueprint("search", __name__)

QUERY_KEYS = ("tile_id", "vector", "region", "source_id")
MAX_FILTER_EXPRS = 64
MAX_BATCH = 1_000
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _invalid(message: str) -> ApiError:
    return ApiError(message, 422, "INVALID_QUERY")


def _int(value: Any, name: str, default: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise _invalid(f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and len(value) <= 40:
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _invalid(f"{name} must be an integer, got {short(value)}")


def _opt_str(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _invalid(f"{name} must be a string")
    return value


def _bool(value: Any, name: str) -> bool:
    """A boolean field: JSON true/false, or "true"/"false"/"1"/"0" (multipart)."""
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise _invalid(f"{name} must be true or false, got {short(value)}")


def _filters(spec: Any, exprs: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """Filter JSON (object, or a JSON string of one) and EXPR strings (list or newline-separated).

    Every EXPR item is split at line breaks, whichever way it came: a multipart field keeps
    the typed text's newlines (sent as CRLF), and one ``filters`` field holding two lines is
    two conditions, never one condition whose value list swallows the second line."""
    if isinstance(spec, str):
        text = spec.strip()
        if not text:
            spec = None
        elif text.startswith("{"):
            spec = field_json(text, "filter", "INVALID_FILTER")
        else:  # EXPR lines, as typed in the web page
            exprs, spec = text, None
    if spec is not None and not isinstance(spec, dict):
        raise ApiError("filter must be a JSON object {column: {op: value}}", 422, "INVALID_FILTER")
    if isinstance(exprs, str):
        exprs = exprs.replace(";", "\n").splitlines()
    exprs = exprs or []
    if not isinstance(exprs, list) or not all(isinstance(e, str) for e in exprs):
        raise ApiError("filters must be a list of COL=V expressions", 422, "INVALID_FILTER")
    exprs = [e for item in exprs for line in item.splitlines() if (e := line.strip())]
    if len(exprs) > MAX_FILTER_EXPRS:
        raise ApiError(f"at most {MAX_FILTER_EXPRS} filter expressions", 422, "INVALID_FILTER")
    return spec, exprs


def _params(value: Any) -> dict[str, Any] | None:
    """Per-request search parameters: an object (JSON) or a JSON string of one (multipart)."""
    from lamina.search.params import check_params

    if value is None or value == "":
        return None
    return check_params(field_json(value, "params")) or None


def _unit_vector(value: Any, dim: int, name: str = "vector") -> np.ndarray:
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise _invalid(f"{name} must be a list of numbers")
    if len(value) != dim:
        raise _invalid(f"{name} has {len(value)} dimensions; the collection has {dim}")
    try:
        v = np.asarray(value, dtype=np.float64)
    except OverflowError:
        v = np.asarray([_to_float(x) for x in value], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(v) | (np.abs(v) > FLOAT32_MAX))
    if len(bad):
        raise _invalid(
            f"{name}[{int(bad[0])}] = {short(value[int(bad[0])])} is not a finite float32 number"
        )
    scale = float(np.abs(v).max())
    if scale == 0:
        raise _invalid(f"{name} is all zeros")
    v = v / scale
    return (v / np.linalg.norm(v)).astype(np.float32)


def _to_float(x: float) -> float:
    try:
        return float(x)
    except OverflowError:
        return float("inf")


def _region(view: Any, spec: Any) -> tuple[str, tuple[int, int, int, int]]:
    """Resolve {"slide": source_id-or-path, x, y, w, h} to an indexed source path."""
    if not isinstance(spec, dict):
        raise _invalid('region must be an object {"slide", "x", "y", "w", "h"}')
    slide = spec.get("slide", spec.get("source_id"))
    if not isinstance(slide, str) or not slide:
        raise _invalid("region.slide must be a source_id or the path of an indexed slide")
    box = tuple(_int(spec.get(c), f"region.{c}") for c in ("x", "y", "w", "h"))
    if any(b is None for b in box):
        raise _invalid("region needs x, y, w and h")
    x, y, w, h = (int(b) for b in box)  # type: ignore[arg-type]
    if x < 0 or y < 0 or w <= 0 or h <= 0 or max(x, y, w, h) > 10_000_000 or w * h > 16_000_000:
        raise _invalid("region: x, y >= 0, w, h > 0, and at most 16 Mpx")
    rows = view.sql(
        "SELECT source_id, source, kind FROM sources WHERE source_id = ? OR source = ? LIMIT 1",
        [slide, slide],
    )
    if not rows:
        raise ApiError(
            f"{slide!r} is not an indexed source of this collection", 404, "SOURCE_NOT_FOUND"
        )
    from lamina.api.images import _source_path

    return str(_source_path(rows[0])), (x, y, w, h)  # where it is now, or 404


def _parse_request() -> tuple[dict[str, Any], bytes | None, str]:
    """(fields, uploaded image bytes or None, upload name)."""
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        fields: dict[str, Any] = {k: request.form.get(k) for k in request.form}
        if "filters" in request.form:
            fields["filters"] = request.form.getlist("filters")
        upload = request.files.get("image")
        if upload is None:
            for key in QUERY_KEYS:
                if key in fields and key != "tile_id":
                    raise _invalid(f"{key} queries are sent as JSON")
            if fields.get("tile_id"):
                return fields, None, ""
            raise _invalid("multipart search needs an image file field named 'image'")
        return fields, upload.read(), upload.filename or "upload"
    if request.mimetype == "application/json" or request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ApiError("the body must be a JSON object", 400, "BAD_REQUEST")
        return body, None, ""
    raise ApiError(
        "send multipart/form-data (image=@file) or application/json", 415, "UNSUPPORTED_MEDIA_TYPE"
    )


def _embed_upload(collection: Any, data: bytes, name: str) -> np.ndarray:
    from lamina.api.images import check_upload_pixels
    from lamina.api.queries import image_vector

    st = state()
    max_pixels = int(st.config["MAX_IMAGE_PIXELS"])
    check_upload_pixels(data, max_pixels)
    acquire_within_deadline(st.embed_lock)
    try:
        return image_vector(
            collection,
            data,
            name,
            max_pixels=max_pixels,
            device=str(st.config.get("DEVICE") or "auto"),
        )
    finally:
        st.embed_lock.release()


def _region_vector(collection: Any, path: str, box: tuple[int, int, int, int]) -> np.ndarray:
    from lamina.api.queries import region_vector

    st = state()
    acquire_within_deadline(st.embed_lock)
    try:
        vec, _ = region_vector(collection, path, box, device=str(st.config.get("DEVICE") or "auto"))
    finally:
        st.embed_lock.release()
    return vec


@bp.post("/collections/<name>/search")
@guarded
def search(name: str) -> Response:
    svc = state().searcher
    fields, upload, upload_name = _parse_request()
    view = svc.view(name)
    col = view.collection
    k = int(_int(fields.get("k"), "k", 10) or 0)  # never None with a default; 0 -> INVALID_QUERY
    offset = int(_int(fields.get("offset"), "offset", 0) or 0)
    spec, exprs = _filters(fields.get("filter"), fields.get("filters"))
    group_by = _opt_str(fields.get("group_by"), "group_by")
    exclude_same = _opt_str(fields.get("exclude_same"), "exclude_same")
    fingerprint = _opt_str(fields.get("encoder"), "encoder")
    params = _params(fields.get("params"))
    partial = _bool(fields.get("partial"), "partial")
    level = _opt_str(fields.get("level"), "level") or "tile"
    if level not in ("tile", "slide"):
        raise _invalid(f"level must be 'tile' or 'slide', not {level!r}")
    given = [key for key in QUERY_KEYS if fields.get(key) is not None]
    if upload is not None:
        given.append("image")
    if len(given) != 1:
        raise _invalid(
            "give exactly one query: image (multipart), tile_id, vector, region "
            f"or source_id (got {', '.join(given) or 'none'})"
        )
    what = given[0]
    common: dict[str, Any] = {"filters": exprs, "filter_json": spec, "exclude_same": exclude_same}
    tile_id = _int(fields.get("tile_id"), "tile_id") if what == "tile_id" else None
    if tile_id is not None and not 0 <= tile_id < 2**63:
        raise ApiError(f"tile {tile_id} does not exist", 404, "TILE_NOT_FOUND")
    if level == "slide":  # exact top-m ranking: params are validated but have nothing to tune
        if group_by:
            raise _invalid("group_by does not apply to level=slide (results are slides)")
        top_m = _int(fields.get("top_m"), "top_m", 5)
        kw: dict[str, Any] = {"k": k, "top_m": top_m, "fingerprint": fingerprint, **common}
        kw["partial"] = partial
        kw["offset"] = offset
        if what == "tile_id":
            res = svc.rank_slides(name, tile_id=tile_id, **kw)
        elif what == "source_id":
            res = svc.rank_slides(name, source_id=_opt_str(fields["source_id"], "source_id"), **kw)
        else:
            vec = _query_vector(what, fields, upload, upload_name, view, col)
            res = svc.rank_slides(name, vectors=vec, **kw)
        return jsonify(res.to_dict())
    if what == "source_id":
        raise _invalid('source_id queries rank slides: add "level": "slide"')
    if what == "tile_id":
        vec = view.tile_vectors([int(tile_id)])[0]  # type: ignore[arg-type]
        res = svc.search(
            name,
            vec,
            k,
            query_tile_id=tile_id,
            view=view,
            group_by=group_by,
            fingerprint=fingerprint,
            params=params,
            partial=partial,
            offset=offset,
            **common,
        )  # type: ignore[arg-type]
    else:
        vec = _query_vector(what, fields, upload, upload_name, view, col)
        res = svc.search(
            name,
            vec,
            k,
            view=view,
            group_by=group_by,
            fingerprint=fingerprint,
            params=params,
            partial=partial,
            offset=offset,
            **common,
        )  # type: ignore[arg-type]
    return jsonify(res.to_dict())


@bp.post("/collections/<name>/search/batch")
@guarded
def search_batch(name: str) -> Response:
    """Many queries, one snapshot: ``{"vectors": [[...], ...]}`` or ``{"tile_ids": [...]}``."""
    if not (request.mimetype == "application/json" or request.is_json):
        raise ApiError("send application/json", 415, "UNSUPPORTED_MEDIA_TYPE")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object", 400, "BAD_REQUEST")
    svc = state().searcher
    view = svc.view(name)
    col = view.collection
    k = int(_int(body.get("k"), "k", 10) or 0)
    offset = int(_int(body.get("offset"), "offset", 0) or 0)
    partial = _bool(body.get("partial"), "partial")
    spec, exprs = _filters(body.get("filter"), body.get("filters"))
    fingerprint = _opt_str(body.get("encoder"), "encoder")
    params = _params(body.get("params"))
    given = [key for key in ("vectors", "tile_ids") if body.get(key) is not None]
    if len(given) != 1:
        raise _invalid(
            f"give exactly one of vectors or tile_ids (got {', '.join(given) or 'none'})"
        )
    items = body[given[0]]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise _invalid(f"{given[0]} must be a list of 1 to {MAX_BATCH} queries")
    if given[0] == "vectors":
        q = np.stack([_unit_vector(v, col.dim, f"vectors[{i}]") for i, v in enumerate(items)])
    else:
        ids = [_int(t, f"tile_ids[{i}]") for i, t in enumerate(items)]
        for t in ids:
            if t is None or not 0 <= t < 2**63:
                raise ApiError(f"tile {t} does not exist", 404, "TILE_NOT_FOUND")
        q = view.tile_vectors([int(t) for t in ids])  # type: ignore[arg-type]
    results = svc.search_batch(
        name,
        q,
        k,
        filters=exprs,
        filter_json=spec,
        fingerprint=fingerprint,
        params=params,
        partial=partial,
        offset=offset,
    )
    docs = [r.to_dict() for r in results]
    return jsonify(
        {
            "ok": True,
            "collection": col.name,
            "snapshot": results[0].snapshot,
            "encoder": col.fingerprint,
            "results": docs,
        }
    )


def _query_vector(
    what: str, fields: dict[str, Any], upload: bytes | None, upload_name: str, view: Any, col: Any
) -> np.ndarray:
    if what == "image":
        return _embed_upload(col, upload or b"", upload_name)
    if what == "vector":
        return _unit_vector(fields["vector"], col.dim)
    path, box = _region(view, fields["region"])
    return _region_vector(col, path, box)
