"""Shared pieces of the OpenAPI description (``api.openapi.openapi_spec``): JSON-schema
constants, the error responses every operation lists, and the helpers ``_op``, ``_json``,
``_ref``, ``_ok``, ``_name_param``. The lowest floor of the openapi_* modules: it imports none
of them."""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_OBJ = {"type": "object"}
_NSTR = {"type": ["string", "null"]}
_PARTIAL = {
    "type": "boolean",
    "default": False,
    "description": "Sharded server: answer without unreachable shards (listed in "
    "missing_shards) instead of 503 SHARD_UNAVAILABLE.",
}
_SOURCE = {
    "type": ["string", "null"],
    "description": "the source's path relative to the folder it was indexed from (else its "
    "file name), its file name, a keyed hash, or null: the server's LAMINA_SOURCE_PATHS",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["ok", *(required or list(props))],
        "properties": {"ok": {"const": True}, **props},
    }


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    str(s): {"$ref": "#/components/responses/Error"}
    for s in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
}
_SEED = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1, "default": 0}
_ACCEPTED = {
    "202": {
        "description": "queued as a background job: poll GET /jobs/{id} (Location header)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobAnswer"}}},
    }
}
_PNG = {
    "description": "PNG image",
    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
}
_COLQ = {
    "name": "collection",
    "in": "query",
    "required": False,
    "schema": _STR,
    "description": "Collection name; required when the home has more than one collection "
    "(tile ids are per collection).",
}


# /collections/{c}/sources/{source_id}/...: the slide routes (deep zoom, QC)
_SOURCE_PATH_PARAMS = [
    {"name": "c", "in": "path", "required": True, "schema": _STR},
    {"name": "source_id", "in": "path", "required": True, "schema": _STR},
]
# what the slide routes can answer besides 200 (no body to be 400/413/415)
_SLIDE_ERRORS = {
    str(s): {"$ref": "#/components/responses/Error"} for s in (401, 403, 404, 409, 422, 429, 503)
}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **_ERRORS}, **extra}


def _name_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _STR}


_TILE_PARAM = {
    "name": "tile_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}
