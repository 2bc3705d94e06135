"""Cohorts, exports and probes over HTTP (blueprint ``bp``, mounted under /api/v1).

POST /cohorts (JSON, or multipart with example images in ``near`` file fields), GET /cohorts,
GET|DELETE /cohorts/<name>, POST /exports (returns the file), POST /probes (the report).
The app owns the catalog for its life (``state().catalog()``). Domain errors propagate to
the app's error handlers.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.app import state
from api.errors import ApiError

bp = Blueprint("cohorts", __name__)

MAX_EXAMPLES = 64
EXPORT_MIMETYPES = {
    "parquet": "application/vnd.apache.parquet",
    "csv": "text/csv",
    "npz": "application/octet-stream",
}


def _invalid(message: str) -> ApiError:
    return ApiError(message, 422, "INVALID_QUERY")


def _body() -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """(fields, uploaded example images) from a JSON or multipart request."""
    if request.mimetype == "multipart/form-data":
        fields: dict[str, Any] = {k: request.form.get(k) for k in request.form}
        for key in ("near_tile_ids", "filters"):
            if key in request.form:
                fields[key] = request.form.getlist(key)
        files = [(f.filename or "upload", f.read()) for f in request.files.getlist("near")]
        return fields, files
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(
            "the body must be a JSON object (or multipart/form-data)", 400, "BAD_REQUEST"
        )
    return body, []


def _int(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _invalid(f"{name} must be an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _invalid(f"{name} must be an integer, got {value!r}") from None


def _float(value: Any, name: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _invalid(f"{name} must be a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _invalid(f"{name} must be a number, got {value!r}") from None


def _str(value: Any, name: str, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise _invalid(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise _invalid(f"{name} must be a string")
    return value


def _filter(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else None
        except json.JSONDecodeError as exc:
            raise ApiError(f"filter is not valid JSON: {exc.msg}", 422, "INVALID_FILTER") from None
    if value is not None and not isinstance(value, dict):
        raise ApiError("filter must be a JSON object {column: {op: value}}", 422, "INVALID_FILTER")
    return value


def _tile_ids(value: Any) -> list[int]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    if not isinstance(value, list):
        raise _invalid("near_tile_ids must be a list of integers")
    out = []
    for v in value:
        if isinstance(v, str) and "," in v:
            out.extend(_tile_ids(v))
        else:
            out.append(_int(v, "near_tile_ids") or 0)
    return out


def _embed(collection: Any, files: list[tuple[str, bytes]]) -> tuple[list[Any], list[Any]]:
    from api.commands.cohorts import embed_examples
    from api.images import check_upload_pixels

    st = state()
    max_pixels = int(st.config.get("MAX_IMAGE_PIXELS") or 80_000_000)
    for _, data in files:
        check_upload_pixels(data, max_pixels)
    lock = getattr(st, "embed_lock", None)
    if lock is None:
        return embed_examples(collection, files)
    with lock:
        return embed_examples(collection, files)


@bp.post("/cohorts")
def create_cohort() -> Response:
    from search.cohorts import create_cohort as create

    fields, files = _body()
    if len(files) + len(_tile_ids(fields.get("near_tile_ids"))) > MAX_EXAMPLES:
        raise _invalid(f"at most {MAX_EXAMPLES} examples")
    name = _str(fields.get("name"), "name", required=True) or ""
    collection = _str(fields.get("collection"), "collection", required=True) or ""
    k, min_score = _int(fields.get("k"), "k"), _float(fields.get("min_score"), "min_score")
    exprs = fields.get("filters") or []
    if not isinstance(exprs, list) or not all(isinstance(e, str) for e in exprs):
        raise ApiError("filters must be a list of COL=V expressions", 422, "INVALID_FILTER")
    st = state()
    vectors, described = _embed(st.service.collection(collection), files) if files else ([], [])
    cohort = create(
        st.catalog(),
        st.service,
        name,
        collection,
        filters=exprs,
        filter_json=_filter(fields.get("filter")),
        near_vectors=vectors,
        near_images=described,
        near_tile_ids=_tile_ids(fields.get("near_tile_ids")),
        k=k,
        min_score=min_score,
    )
    return jsonify({"ok": True, "cohort": cohort})


@bp.get("/cohorts")
def list_cohorts() -> Response:
    return jsonify({"ok": True, "cohorts": state().catalog().cohorts()})


@bp.get("/cohorts/<name>")
def show_cohort(name: str) -> Response:
    from search.cohorts import show_cohort as show

    st = state()
    cohort = show(
        st.catalog(),
        st.service,
        name,
        version=_int(request.args.get("version"), "version"),
        label_column=_str(request.args.get("label_column"), "label_column"),
    )
    return jsonify({"ok": True, "cohort": cohort})


@bp.delete("/cohorts/<name>")
def delete_cohort(name: str) -> Response:
    state().catalog().delete_cohort(name)
    return jsonify({"ok": True, "deleted": name})


@bp.post("/exports")
def create_export() -> Response:
    from search.exports import FORMATS, export_labeled_set

    fields, _ = _body()
    fmt = _str(fields.get("format"), "format") or "parquet"
    if fmt not in FORMATS:
        raise _invalid(f"format must be one of {', '.join(FORMATS)}")
    st = state()
    view = st.service.view(_str(fields.get("collection"), "collection", required=True) or "")
    test_fraction = _float(fields.get("test_fraction"), "test_fraction")
    with tempfile.TemporaryDirectory(prefix="lamina-export-") as tmp:
        out = Path(tmp) / f"export.{fmt}"
        doc = export_labeled_set(
            view,
            st.catalog(),
            out,
            label_column=_str(fields.get("label_column"), "label_column", required=True) or "",
            cohort=_str(fields.get("cohort"), "cohort"),
            split_by=_str(fields.get("split_by"), "split_by"),
            test_fraction=0.2 if test_fraction is None else test_fraction,
            seed=_int(fields.get("seed"), "seed") or 0,
            neighbors=_int(fields.get("neighbors"), "neighbors"),
            fmt=fmt,
            record_path=False,
        )
        data = out.read_bytes()
    meta = doc["meta"]
    resp = Response(data, mimetype=EXPORT_MIMETYPES[fmt])
    resp.headers["Content-Disposition"] = f'attachment; filename="{view.collection.name}.{fmt}"'
    resp.headers["X-Lamina-Snapshot"] = str(meta["snapshot"])
    resp.headers["X-Lamina-Encoder"] = str(meta["encoder"])
    resp.headers["X-Lamina-Meta"] = json.dumps(meta, sort_keys=True)
    resp.headers["X-Lamina-Export-Id"] = str(doc["export"]["id"])
    return resp


@bp.post("/probes")
def create_probe() -> Response:
    from search.probes import DEFAULT_FRACTIONS, probe_collection

    fields, _ = _body()
    fractions = fields.get("fractions") or list(DEFAULT_FRACTIONS)
    if isinstance(fractions, str):
        fractions = [f for f in fractions.split(",") if f.strip()]
    if not isinstance(fractions, list):
        raise _invalid("fractions must be a list of numbers in (0, 1]")
    st = state()
    cohort = _str(fields.get("cohort"), "cohort")
    test_fraction = _float(fields.get("test_fraction"), "test_fraction")
    report = probe_collection(
        st.service.view(_str(fields.get("collection"), "collection", required=True) or ""),
        st.catalog() if cohort else None,
        _str(fields.get("label_column"), "label_column", required=True) or "",
        cohort=cohort,
        split_by=_str(fields.get("split_by"), "split_by"),
        fractions=[_float(f, "fractions") or 0.0 for f in fractions],
        seed=_int(fields.get("seed"), "seed") or 0,
        test_fraction=0.2 if test_fraction is None else test_fraction,
    )
    return jsonify({"ok": True, "report": report})
