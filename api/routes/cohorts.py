"""Cohorts, exports and probes over HTTP (blueprint ``bp``, mounted under /api/v1).

POST /cohorts (JSON, or multipart with example images in ``near`` file fields), GET /cohorts,
GET|DELETE /cohorts/<name>; POST /exports and POST /probes are background jobs (202 and a job
id, see api/jobs.py): the export's file is fetched from /jobs/<id>/file, the probe report is
the job's result. Request fields are checked here, before queueing, so a bad request is a 4xx
at once. The catalog (``state().catalog()``) is shared with every other server and CLI
command on the home. Domain errors propagate to the app's error handlers.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, jsonify, request

from lamina.api.app import state
from lamina.api.errors import ApiError
from lamina.api.jobs import Job
from lamina.api.limits import (
    INT64_MAX,
    acquire_within_deadline,
    field_json,
    finite_float,
    guarded,
    int_in,
    seed_of,
    short,
)

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
        for key in ("near_tile_ids", "tile_ids", "filters"):
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


def _int(value: Any, name: str, lo: int = 0, hi: int = INT64_MAX) -> int | None:
    return int_in(value, name, lo, hi)


def _float(value: Any, name: str) -> float | None:
    return finite_float(value, name)


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
        value = field_json(value, "filter", "INVALID_FILTER") if value.strip() else None
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
    if len(value) > MAX_EXAMPLES:
        raise _invalid(f"at most {MAX_EXAMPLES} examples")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, str) and "," in v:
            out.extend(_tile_ids(v))
        else:
            out.append(_int(v, f"near_tile_ids[{i}]") or 0)
    return out


def _member_ids(value: Any) -> list[int]:
    """``tile_ids``: the members named outright (a list, or comma/space-separated text)."""
    from lamina.search.cohorts import MAX_TILE_IDS

    if value in (None, ""):
        return []
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, list):
        raise _invalid("tile_ids must be a list of integers")
    items = [p for v in value for p in (v.replace(",", " ").split() if isinstance(v, str) else [v])]
    if len(items) > MAX_TILE_IDS:
        raise _invalid(f"at most {MAX_TILE_IDS} tile_ids, got {len(items)}")
    return [_int(v, f"tile_ids[{i}]") or 0 for i, v in enumerate(items)]


def _embed(collection: Any, files: list[tuple[str, bytes]]) -> tuple[list[Any], list[Any]]:
    from lamina.api.images import check_upload_pixels
    from lamina.api.queries import embed_examples

    st = state()
    max_pixels = int(st.config.get("MAX_IMAGE_PIXELS") or 80_000_000)
    for _, data in files:
        check_upload_pixels(data, max_pixels)
    acquire_within_deadline(st.embed_lock)
    try:
        return embed_examples(collection, files)
    finally:
        st.embed_lock.release()


@bp.post("/cohorts")
@guarded
def create_cohort() -> Response:
    from lamina.search.cohorts import create_cohort as create

    fields, files = _body()
    if len(files) + len(_tile_ids(fields.get("near_tile_ids"))) > MAX_EXAMPLES:
        raise _invalid(f"at most {MAX_EXAMPLES} examples")
    name = _str(fields.get("name"), "name", required=True) or ""
    collection = _str(fields.get("collection"), "collection", required=True) or ""
    k = _int(fields.get("k"), "k", 1, INT64_MAX)
    min_score = _float(fields.get("min_score"), "min_score")
    exprs = fields.get("filters") or []
    if isinstance(exprs, str):
        exprs = [exprs]
    if not isinstance(exprs, list) or not all(isinstance(e, str) for e in exprs):
        raise ApiError("filters must be a list of COL=V expressions", 422, "INVALID_FILTER")
    exprs = [e for item in exprs for line in item.splitlines() if (e := line.strip())]
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
        tile_ids=_member_ids(fields.get("tile_ids")),
    )
    return jsonify({"ok": True, "cohort": cohort})


@bp.get("/cohorts")
def list_cohorts() -> Response:
    return jsonify({"ok": True, "cohorts": state().catalog().cohorts()})


@bp.get("/cohorts/<name>")
def show_cohort(name: str) -> Response:
    from lamina.search.cohorts import show_cohort as show

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
    """Queue an export; the job's file is the export (parquet, csv or npz; for trident-h5 a
    zip of one .h5 per slide, api/routes/trident_export.py)."""
    from lamina.api.exposure import source_namer
    from lamina.api.routes.jobs import submit
    from lamina.search.exports import FORMATS, check_columns, export_labeled_set

    fields, _ = _body()
    fmt = _str(fields.get("format"), "format") or "parquet"
    if fmt == "trident-h5":
        from lamina.api.routes.trident_export import create_trident_export

        return create_trident_export(fields)
    if fmt not in FORMATS:
        raise _invalid(f"format must be one of {', '.join(FORMATS)} or trident-h5")
    st = state()
    view = st.service.view(_str(fields.get("collection"), "collection", required=True) or "")
    test_fraction = _float(fields.get("test_fraction"), "test_fraction")
    kwargs: dict[str, Any] = {
        "label_column": _str(fields.get("label_column"), "label_column", required=True) or "",
        "cohort": _str(fields.get("cohort"), "cohort"),
        "split_by": _str(fields.get("split_by"), "split_by"),
        "test_fraction": 0.2 if test_fraction is None else test_fraction,
        "seed": seed_of(fields.get("seed")),
        "neighbors": _int(fields.get("neighbors"), "neighbors", 1, 1000),
        "fmt": fmt,
        "record_path": False,
        "source_name": source_namer(),  # the file shows sources as answers do
    }
    check_columns(view, kwargs["label_column"], kwargs["split_by"])
    catalog = st.catalog()
    name = view.collection.name

    def run(job: Job) -> dict[str, Any]:
        job.report(0.05, "building the labeled set")
        out = job.workdir / f"export.{fmt}"
        doc = export_labeled_set(view, catalog, out, **kwargs)
        job.report(0.95, "written")
        meta = doc["meta"]
        job.file, job.file_type = out, EXPORT_MIMETYPES[fmt]
        job.file_name = f"{name}.{fmt}"
        job.file_headers = {
            "X-Lamina-Snapshot": str(meta["snapshot"]),
            "X-Lamina-Encoder": str(meta["encoder"]),
            "X-Lamina-Meta": json.dumps(meta, sort_keys=True),
            "X-Lamina-Export-Id": str(doc["export"]["id"]),
        }
        return {"export": doc["export"], "meta": meta, "n_bytes": out.stat().st_size}

    return submit("export", run, name)


@bp.post("/probes")
def create_probe() -> Response:
    """Queue a probe; the job's result is the report."""
    from lamina.api.routes.jobs import submit
    from lamina.search.exports import check_columns
    from lamina.search.probes import DEFAULT_FRACTIONS, probe_collection

    fields, _ = _body()
    fractions = fields.get("fractions") or list(DEFAULT_FRACTIONS)
    if isinstance(fractions, str):
        fractions = [f for f in fractions.split(",") if f.strip()]
    if not isinstance(fractions, list) or len(fractions) > 64:
        raise _invalid("fractions must be a list of at most 64 numbers in (0, 1]")
    fracs = [_float(f, f"fractions[{i}]") or 0.0 for i, f in enumerate(fractions)]
    if any(not 0 < f <= 1 for f in fracs):
        raise _invalid(f"fractions must be in (0, 1], got {short(fracs)}")
    st = state()
    cohort = _str(fields.get("cohort"), "cohort")
    test_fraction = _float(fields.get("test_fraction"), "test_fraction")
    view = st.service.view(_str(fields.get("collection"), "collection", required=True) or "")
    label_column = _str(fields.get("label_column"), "label_column", required=True) or ""
    split_by = _str(fields.get("split_by"), "split_by")
    check_columns(view, label_column, split_by)
    kwargs: dict[str, Any] = {
        "cohort": cohort,
        "split_by": split_by,
        "fractions": fracs,
        "seed": seed_of(fields.get("seed")),
        "test_fraction": 0.2 if test_fraction is None else test_fraction,
    }
    catalog = st.catalog() if cohort else None

    def run(job: Job) -> dict[str, Any]:
        job.report(0.02, "building the labeled set")
        report = probe_collection(view, catalog, label_column, progress=job.report, **kwargs)
        return {"report": report}

    return submit("probe", run, view.collection.name)
