"""Correcting and removing data: annotate, delete sources, drop a collection (blueprint ``bp``).

- ``POST /collections/<name>/annotate`` (write): multipart/form-data with a ``manifest`` file
  (CSV, TSV or Parquet, read by ``indexer.manifest``) and the fields ``source_column``
  (default ``file``), ``column_type`` (repeatable ``COLUMN=TYPE``) and ``na_values``. Runs as a
  background job (202 and a job id); its result names every changed source with its old and new
  values (``search.rewrite.annotate``: a new snapshot sharing the vectors, nothing re-embedded),
  and counts the collection's sources without a manifest row (left as they are).
- ``POST /collections/<name>/delete`` (write): JSON ``{"sources": [names], "filter": EXPR or
  JSON filter, "dry_run": bool}``; the names are resolved at once (an unknown or ambiguous one
  is an error and nothing is deleted; ``dry_run`` answers what would go), then the deletion
  runs as a background job (it waits for the collection's ingest lock) whose result lists the
  deleted sources: tombstones in a new snapshot, erased from disk by the next ``lamina
  compact``. The names and filter travel in the body, so the audit log (which records paths,
  never bodies) keeps none of them.
- ``DELETE /collections/<name>?confirm=<name>`` (admin): drops the collection: its directory,
  and the cohorts and export records of it in the catalog. The name is repeated in ``confirm``
  (else ``422 CONFIRMATION_REQUIRED``), so a mistaken DELETE never drops a collection.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request

from lamina.api.app import state
from lamina.api.errors import ApiError
from lamina.api.jobs import Job

bp = Blueprint("edits", __name__)

MAX_NAMES = 10_000


@bp.post("/collections/<name>/annotate")
def annotate_collection(name: str) -> Response:
    if request.mimetype != "multipart/form-data":
        raise ApiError("send multipart/form-data with a 'manifest' file", 415,
                       "UNSUPPORTED_MEDIA_TYPE")  # fmt: skip
    upload = request.files.get("manifest")
    if upload is None:
        raise ApiError("no 'manifest' file in the request", 422, "INVALID_QUERY")
    from lamina.search.manifests import parse_column_types, parse_na_values

    specs = [s for v in request.form.getlist("column_type") for s in v.split(",") if s.strip()]
    column_types = parse_column_types(specs)
    na_values = parse_na_values(request.form.get("na_values"))
    source_column = request.form.get("source_column") or "file"
    st = state()
    store = st.store
    store.collection(name)  # 404 before any work when it does not exist
    from lamina.api.routes.jobs import queue, submit

    prepared = queue().workdir()
    path = prepared[1] / (Path(upload.filename or "manifest.csv").name or "manifest.csv")
    try:
        upload.save(path)
    except BaseException:
        shutil.rmtree(prepared[1], ignore_errors=True)
        raise

    def run(job: Job) -> dict[str, Any]:
        from lamina.indexer.manifest import Manifest
        from lamina.search.rewrite import annotate

        job.report(0.05, "reading the manifest")
        manifest = Manifest.load(path, source_column, column_types, na_values)
        col = store.collection(name)
        updates: dict[tuple[str, str], dict[str, Any]] = {}
        unmatched = 0
        for key in sorted(_committed(col)):
            row = manifest.match(Path(key[1]))
            if row is None:
                unmatched += 1
            else:
                updates[key] = row
        if not updates and unmatched:
            raise ApiError(
                f"no source of collection {name!r} matches a row of {path.name} (column "
                f"{source_column!r}); nothing was changed. Check --source-column and the manifest",
                422,
                "INVALID_MANIFEST",
            )
        job.report(0.3, f"updating {len(updates)} sources")
        result = annotate(col, updates)
        _refresh(st, name)
        return {
            "ok": True,
            "collection": name,
            "manifest": path.name,
            "matched_sources": len(updates),
            "unmatched_sources": unmatched,
            "changed": result["changed"],
            "unchanged_sources": len(updates) - len(result["changed"]),
            "segments_rewritten": len(result["segments"]),
            "snapshot": result["snapshot"],
        }

    return submit("annotate", run, name, prepared)


def _refresh(st: Any, name: str) -> None:
    """Make this server answer from the new snapshot now (not after a background refresh)."""
    for service in {id(st.service): st.service, id(st.searcher): st.searcher}.values():
        service.view(name, wait=True)


def _committed(col: Any) -> set[tuple[str, str]]:
    return {(sid, p) for sid, paths in col.committed_sources().items() for p in paths}


@bp.post("/collections/<name>/delete")
def delete_sources(name: str) -> Response:
    from lamina.search.filters import parse_filters
    from lamina.search.rewrite import delete, planned_deletion, resolve_sources

    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object", 400, "BAD_REQUEST")
    names = body.get("sources") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ApiError("'sources' must be a list of source names or ids", 422, "INVALID_QUERY")
    if len(names) > MAX_NAMES:
        raise ApiError(f"at most {MAX_NAMES} sources per request", 422, "INVALID_QUERY")
    spec = body.get("filter")
    if spec is not None and not isinstance(spec, str | dict):
        raise ApiError("'filter' must be an expression or a JSON filter", 422, "INVALID_QUERY")
    exprs = [line for line in spec.splitlines() if line.strip()] if isinstance(spec, str) else []
    conds = parse_filters(exprs, spec if isinstance(spec, dict) else None)
    if not names and not conds:
        raise ApiError("name sources or give a filter: nothing to delete", 422, "INVALID_QUERY")
    st = state()
    view = st.service.view(name, wait=True)
    keys = resolve_sources(view, names, conds)
    if body.get("dry_run") is True:
        planned = planned_deletion(view, keys)
        return jsonify(
            {
                "ok": True,
                "dry_run": True,
                "collection": name,
                "deleted": planned,
                "sources": len(planned),
                "tiles": sum(d["tiles"] for d in planned),
                "snapshot": view.snapshot.id,
            }
        )
    from lamina.api.routes.jobs import submit

    col = st.store.collection(name)

    def run(job: Job) -> dict[str, Any]:
        job.report(0.1, f"deleting {len(keys)} sources")
        result = delete(col, keys)
        _refresh(st, name)
        return {
            "ok": True,
            "collection": name,
            "deleted": result["deleted"],
            "sources": len(result["deleted"]),
            "tiles": sum(d["tiles"] for d in result["deleted"]),
            "snapshot": result["snapshot"],
            "erased": False,
            "note": "gone from searches now; erased from disk by the next `lamina compact`",
        }

    return submit("delete", run, name)


@bp.delete("/collections/<name>")
def drop_collection(name: str) -> Response:
    from lamina.search.rewrite import drop

    if request.args.get("confirm") != name:
        raise ApiError(
            f"dropping a collection removes it for good: repeat its name as ?confirm={name}",
            422,
            "CONFIRMATION_REQUIRED",
        )
    st = state()
    result = drop(st.store, name, st.catalog())
    st.service.forget(name)
    return jsonify({"ok": True, **result})
