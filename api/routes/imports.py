"""POST /collections/<name>/import: precomputed embeddings uploaded as files (blueprint ``bp``).

multipart/form-data with one or more ``file`` fields (.h5, .parquet, .npz or .json, see
indexer/import_readers.py) and the fields ``encoder_name`` (required), ``dim``,
``table_source_column``, ``vector_column`` and ``patch_px_level0``. Answers the run report
(200 when every file imported, 422 ``IMPORT_FAILED`` with the report when some did not).
No embedding happens here: files are parsed, checked and committed under the collection's ingest
lock, exactly as ``lamina import`` does. Slides are never looked up from a request (a client
cannot name server paths); import with the CLI to join slides. Uploads are limited by
MAX_CONTENT_LENGTH.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.app import state
from api.errors import ApiError

bp = Blueprint("imports", __name__)

MAX_FILES = 256


def _int(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(f"{name} must be an integer, got {value!r}", 422, "INVALID_IMPORT") from None


@bp.post("/collections/<name>/import")
def import_files(name: str) -> Response:
    from indexer.import_readers import SUFFIXES
    from indexer.importer import Import, ImportOptions, declare_encoder, open_import_collection

    if request.mimetype != "multipart/form-data":
        raise ApiError("send multipart/form-data with 'file' fields", 415, "UNSUPPORTED_MEDIA_TYPE")
    uploads = request.files.getlist("file")
    if not uploads:
        raise ApiError("no 'file' field in the request", 422, "INVALID_IMPORT")
    if len(uploads) > MAX_FILES:
        raise ApiError(f"at most {MAX_FILES} files per request", 422, "INVALID_IMPORT")
    encoder_name = request.form.get("encoder_name") or ""
    if not encoder_name:
        raise ApiError("encoder_name is required", 422, "INVALID_IMPORT")
    declared = declare_encoder(encoder_name, _int(request.form.get("dim"), "dim"))
    options = ImportOptions(
        source_column=request.form.get("table_source_column") or "source",
        vector_column=request.form.get("vector_column") or None,
        patch_px_level0=_int(request.form.get("patch_px_level0"), "patch_px_level0"),
        progress=False,
    )
    with tempfile.TemporaryDirectory(prefix="lamina-import-") as tmp:
        paths = []
        for i, up in enumerate(uploads):
            base = Path(up.filename or f"upload-{i}").name
            if Path(base).suffix.lower() not in SUFFIXES:
                raise ApiError(
                    f"{base}: unknown embeddings format (known: {', '.join(sorted(SUFFIXES))})",
                    415,
                    "UNSUPPORTED_FORMAT",
                )
            folder = Path(tmp) / str(i)
            folder.mkdir()
            up.save(folder / base)
            paths.append(folder / base)
        col = open_import_collection(state().store, name, declared)
        report = Import(col, declared, options).run(paths)
    doc = report.to_dict()
    for f in doc["failed"]:  # name the uploaded file, not the temporary copy
        f["file"] = Path(f["file"]).name
    if report.ok:
        return jsonify(doc)
    resp = jsonify({**doc, "ok": False, "status": 422, "code": "IMPORT_FAILED",
                    "error": "; ".join(f"{f['file']}: {f['reason']}" for f in doc["failed"])})  # fmt: skip
    resp.status_code = 422
    return resp
