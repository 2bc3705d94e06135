"""POST /collections/<name>/import: precomputed embeddings uploaded as files (blueprint ``bp``).

multipart/form-data with one or more ``file`` fields (.h5, .parquet, .npz or .json, see
indexer/import_readers.py) and the fields ``encoder_name`` (required), ``dim``,
``table_source_column``, ``vector_column`` and ``patch_px_level0``. The files are saved and
the import runs as a background job (202 and a job id, see api/jobs.py); the job's result is
the run report, or, when some file failed, the error 422 ``IMPORT_FAILED`` with the report as
the result. No embedding happens here: files are parsed, checked and committed under the
collection's ingest lock, exactly as ``lamina import`` does. Slides are never looked up from a request (a client
cannot name server paths); import with the CLI to join slides. Uploads are limited by
MAX_CONTENT_LENGTH.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, request

from lamina.api.app import state
from lamina.api.errors import ApiError
from lamina.api.jobs import Job
from lamina.api.limits import int_in

bp = Blueprint("imports", __name__)

MAX_FILES = 256


def _int(value: Any, name: str) -> int | None:
    return int_in(value, name, 1, 1 << 20, code="INVALID_IMPORT")


@bp.post("/collections/<name>/import")
def import_files(name: str) -> Response:
    from lamina.indexer.import_readers import SUFFIXES
    from lamina.indexer.importer import (
        Import,
        ImportOptions,
        declare_encoder,
        open_import_collection,
    )

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
    from lamina.api.routes.jobs import queue, submit

    prepared = queue().workdir()
    tmp = prepared[1]
    try:
        paths = []
        for i, up in enumerate(uploads):
            base = Path(up.filename or f"upload-{i}").name
            if Path(base).suffix.lower() not in SUFFIXES:
                raise ApiError(
                    f"{base}: unknown embeddings format (known: {', '.join(sorted(SUFFIXES))})",
                    415,
                    "UNSUPPORTED_FORMAT",
                )
            folder = tmp / str(i)
            folder.mkdir()
            up.save(folder / base)
            paths.append(folder / base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    store = state().store

    def run(job: Job) -> dict[str, Any]:
        job.report(0.05, f"importing {len(paths)} file(s)")
        col = open_import_collection(store, name, declared)
        report = Import(col, declared, options).run(paths)
        doc = report.to_dict()
        for f in doc["failed"]:  # name the uploaded file, not the temporary copy
            f["file"] = Path(f["file"]).name
        if not report.ok:
            job.result = doc
            raise ApiError(
                "; ".join(f"{f['file']}: {f['reason']}" for f in doc["failed"]),
                422,
                "IMPORT_FAILED",
            )
        return doc

    return submit("import", run, name, prepared)
