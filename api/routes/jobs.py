"""GET /jobs, GET|DELETE /jobs/{id}, GET /jobs/{id}/file: background jobs (see api/jobs.py).

``submit(kind, run, collection)`` is what the probe, export and import routes call: it queues
the job on the app's :class:`~api.jobs.JobQueue` and answers 202 with the job document and a
``Location`` header.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, send_file

from lamina.api.errors import ApiError
from lamina.api.jobs import Job, JobQueue

bp = Blueprint("jobs", __name__)
_LOCK = threading.Lock()


def queue() -> JobQueue:
    """The app's job queue, made on first use from JOB_WORKERS, JOB_QUEUE and JOB_KEEP_S."""
    ext = current_app.extensions
    found = ext.get("lamina_jobs")
    if found is None:
        with _LOCK:
            found = ext.get("lamina_jobs")
            if found is None:
                cfg = current_app.config
                found = ext["lamina_jobs"] = JobQueue(
                    workers=int(cfg.get("JOB_WORKERS") or 1),
                    max_queued=int(cfg.get("JOB_QUEUE") or 16),
                    keep_s=float(cfg.get("JOB_KEEP_S") or 3600),
                )
    return found  # type: ignore[no-any-return]


def accepted(job: Job) -> Response:
    resp = jsonify({"ok": True, "job": job.to_dict()})
    resp.status_code = 202
    resp.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return resp


def submit(
    kind: str,
    run: Callable[[Job], dict[str, Any]],
    collection: str | None = None,
    prepared: tuple[str, Path] | None = None,
) -> Response:
    try:
        job = queue().submit(kind, run, collection, prepared)
    except ApiError as exc:
        if exc.code != "JOB_QUEUE_FULL":
            raise
        from lamina.api.app import error_response

        resp = error_response(exc.status, exc.code, str(exc))
        resp.headers["Retry-After"] = "5"
        return resp
    return accepted(job)


@bp.get("/jobs")
def list_jobs() -> Response:
    q = queue()
    return jsonify(
        {"ok": True, "counts": q.counts(), "workers": q.workers, "max_queued": q.max_queued}
    )


@bp.get("/jobs/<job_id>")
def job_status(job_id: str) -> Response:
    return jsonify({"ok": True, "job": queue().get(job_id).to_dict()})


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str) -> Response:
    return jsonify({"ok": True, "job": queue().cancel(job_id).to_dict()})


@bp.get("/jobs/<job_id>/file")
def job_file(job_id: str) -> Response:
    job = queue().get(job_id)
    if job.status != "done" or job.file is None or not job.file.is_file():
        raise ApiError(f"job {job_id} has no file (status {job.status})", 409, "JOB_NOT_DONE")
    resp = send_file(
        job.file,
        mimetype=job.file_type or "application/octet-stream",
        as_attachment=True,
        download_name=job.file_name or job.file.name,
    )
    resp.headers.update(job.file_headers)
    return resp
