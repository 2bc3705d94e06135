"""A collection's column roles over HTTP (blueprint ``bp``, under /api/v1).

GET /collections/<name>/columns: the declared patient / case / lesion columns, the columns they
resolve to on the snapshot the server answers on (``search.columns``: the patient role falls
back to a ``patient_id`` column) and the metadata columns with their types.
PUT /collections/<name>/columns (admin; JSON ``patient_column``, ``case_column``,
``lesion_column``: a metadata column of the collection, or null to clear): stores the given
roles in ``collection.json`` (other roles keep theirs); nothing is re-embedded. An unknown
field, role value or column is 422 ``INVALID_QUERY`` naming the collection's columns.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from lamina.api.app import state
from lamina.api.errors import ApiError

bp = Blueprint("columns", __name__)

FIELDS = ("patient_column", "case_column", "lesion_column")


def columns_doc(view: Any) -> dict[str, Any]:
    """What GET answers: collection name, declared roles, resolved roles, metadata columns."""
    from lamina.search.columns import declared, role_columns

    col = view.collection
    return {
        "name": col.name,
        "declared": {f"{role}_column": c for role, c in declared(col).items()},
        **role_columns(col, view.schema),
        "metadata_columns": {c: view.schema[c] for c in view.metadata_columns},
    }


@bp.get("/collections/<name>/columns")
def column_roles(name: str) -> Response:
    view = state().service.view(name)
    return jsonify({"ok": True, "collection": columns_doc(view)})


@bp.put("/collections/<name>/columns")
def set_column_roles(name: str) -> Response:
    from lamina.search.columns import declare

    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object", 400, "BAD_REQUEST")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ApiError(
            f"unknown field(s): {', '.join(unknown)}; give {', '.join(FIELDS)}",
            422,
            "INVALID_QUERY",
        )
    if not body:
        raise ApiError(f"give at least one of {', '.join(FIELDS)}", 422, "INVALID_QUERY")
    svc = state().service
    view = svc.view(name, wait=True)  # the columns of the newest snapshot
    roles = {key.removesuffix("_column"): value for key, value in body.items()}
    declare(view.collection, roles, view.metadata_columns)
    return jsonify({"ok": True, "collection": columns_doc(svc.view(name, wait=True))})
