"""A collection's index settings and compaction over HTTP (blueprint ``bp``, under /api/v1).

GET /collections/<name>/index: the index factory, stored and effective search parameters,
vector dtype and how far the ANN index covers the committed segments
(``search.status.index_state``). PUT /collections/<name>/index (JSON ``index_factory`` and/or
``params``: nprobe, ef_search, refine, strategy, exact_below) stores new settings in
``collection.json`` without touching a vector (``Collection.set_index``); the server builds the
index in the background on its next snapshot. POST /collections/<name>/compact (JSON,
optional ``target_rows`` >= 2) merges small segments as a background job (202, see
api/jobs.py) whose result is ``search.compaction.compact``'s summary; it waits while an ingest
writes to the collection and, once merging, runs to its end (a cancel stops it only while
queued). Domain errors propagate to the app's error handlers.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from lamina.api.app import state
from lamina.api.errors import ApiError
from lamina.api.jobs import Job
from lamina.api.limits import int_in

bp = Blueprint("maintenance", __name__)


def _object() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if body is None and not request.get_data():
        return {}
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object", 400, "BAD_REQUEST")
    return body


@bp.get("/collections/<name>/index")
def index_settings(name: str) -> Response:
    from lamina.search.status import index_state

    return jsonify({"ok": True, "collection": index_state(state().store.collection(name))})


@bp.put("/collections/<name>/index")
def set_index_settings(name: str) -> Response:
    from lamina.search.params import check_params
    from lamina.search.status import index_state

    body = _object()
    unknown = sorted(set(body) - {"index_factory", "params"})
    if unknown:
        raise ApiError(f"unknown field(s): {', '.join(unknown)}", 422, "INVALID_QUERY")
    factory = body.get("index_factory")
    if factory is not None and (not isinstance(factory, str) or not factory.strip()):
        raise ApiError("index_factory must be a FAISS factory string", 422, "INVALID_INDEX_FACTORY")
    raw = body.get("params")
    if raw is not None and not isinstance(raw, dict):
        raise ApiError("params must be an object", 422, "INVALID_PARAMS")
    params = {k: v for k, v in check_params(raw).items() if v is not None}
    if factory is None and not params:
        raise ApiError("give index_factory and/or params to set", 422, "INVALID_QUERY")
    col = state().store.collection(name)
    col.set_index(factory, params or None)
    return jsonify({"ok": True, "collection": index_state(col)})


@bp.post("/collections/<name>/compact")
def compact_collection(name: str) -> Response:
    from lamina.api.routes.jobs import submit
    from lamina.search.compaction import DEFAULT_TARGET_ROWS, compact

    body = _object()
    target = int_in(body.get("target_rows"), "target_rows", 2, 1 << 40) or DEFAULT_TARGET_ROWS
    erase = body.get("erase", False)
    retrain = body.get("retrain_index", False)
    for key, value in (("erase", erase), ("retrain_index", retrain)):
        if not isinstance(value, bool):
            raise ApiError(f"{key} must be true or false", 422, "INVALID_QUERY")
    if retrain and not erase:
        raise ApiError("retrain_index goes with erase: true", 422, "INVALID_QUERY")
    col = state().store.collection(name)  # 404 now, not in the job

    def run(job: Job) -> dict[str, Any]:
        job.report(0.0, "compacting")

        def progress(stage: str, done: int, total: int) -> None:
            # no cancel point inside a merge: a merge either lands or is cleaned up
            job.progress = 0.0 if total <= 0 else min(1.0, done / total)
            job.message = f"{stage} {done}/{total} tiles"

        def waiting(holder: str) -> None:
            job.message = f"an ingest ({holder}) is writing to {name!r}; waiting for it"

        return dict(
            compact(
                col,
                target_rows=target,
                progress=progress,
                on_wait=waiting,
                erase=erase,
                retrain_index=retrain,
            )
        )

    return submit("compact", run, name)
