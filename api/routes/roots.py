"""Roots over HTTP (blueprint ``bp``, under /api/v1): where the home's source folders live.

GET /roots (admin): the roots by name, whether each folder exists on the server, how often it
moved, and the table's version (``search.roots.list_roots``; folder paths are not shown).
POST /roots/relocate (admin; JSON ``to`` and either ``root``, a root's name, or ``from``, the
folder as it was indexed, for a store indexed before roots existed): the root now lives at
``to``, a folder on the server, for every collection of the home (``search.roots.
relocate_sources``). No segment is written and nothing is re-embedded; tile images,
thumbnails and region search read from the new place at once. Unknown root or folder: 404
``ROOT_NOT_FOUND``; ``to`` not a folder, a bad body: 422 ``INVALID_ROOT`` / ``INVALID_QUERY``.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from lamina.api.app import state
from lamina.api.errors import ApiError

bp = Blueprint("roots", __name__)

FIELDS = ("root", "from", "to")


@bp.get("/roots")
def list_roots() -> Response:
    from lamina.search.roots import list_roots as listing

    return jsonify({"ok": True, **listing(state().store.home)})


@bp.post("/roots/relocate")
def relocate() -> Response:
    from lamina.search.roots import relocate_sources

    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object", 400, "BAD_REQUEST")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ApiError(
            f"unknown field(s): {', '.join(unknown)}; give to and root (or from)",
            422,
            "INVALID_QUERY",
        )
    for key in FIELDS:
        value = body.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ApiError(f"{key} must be a non-empty string", 422, "INVALID_QUERY")
    if not body.get("to") or bool(body.get("root")) == bool(body.get("from")):
        raise ApiError(
            "give to (the new folder) and either root (a root's name) or from (the old folder)",
            422,
            "INVALID_QUERY",
        )
    to = str(body["to"])
    for key in ("to", "from"):
        value = str(body.get(key) or "")
        if value and (not value.startswith("/") or not value.strip("/")):
            raise ApiError(
                f"{key} must be an absolute folder path on the server (not /)", 422, "INVALID_ROOT"
            )
    out = relocate_sources(state().store.home, to, root=body.get("root"), old=body.get("from"))
    return jsonify({"ok": True, **out})
