"""The OpenAPI 3.1 description of the HTTP API (served at /api/v1/openapi.json).

This module assembles the document: the service paths here, the others by area
(openapi_collections, openapi_search, openapi_cohorts, openapi_viewer, openapi_qc), the
component schemas from openapi_schemas; the shared helpers live one floor down in
openapi_common."""

from __future__ import annotations

from typing import Any

from lamina.api.openapi_cohorts import COHORT_PATHS
from lamina.api.openapi_collections import COLLECTION_PATHS
from lamina.api.openapi_common import _OBJ, _STR, _json, _ok, _op, _ref
from lamina.api.openapi_qc import QC_PATHS
from lamina.api.openapi_schemas import SCHEMAS
from lamina.api.openapi_search import SEARCH_PATHS
from lamina.api.openapi_viewer import VIEWER_PATHS

PATHS: dict[str, Any] = {
    "/health": {
        "get": _op(
            "Liveness, version and a snapshot id of the whole home (no auth)",
            {"200": _json(_ok({"version": _STR, "snapshot": _STR}))},
            security=[],
        )
    },
    "/encoders": {
        "get": _op(
            "Registered encoders and whether their weights are present",
            {"200": _json(_ok({"encoders": {"type": "array", "items": _OBJ}}))},
        )
    },
    "/collections": {
        "get": _op(
            "Collections with encoder, counts and snapshot",
            {"200": _json(_ok({"collections": {"type": "array", "items": _OBJ}}))},
        )
    },
    "/openapi.json": {"get": _op("This document", {"200": _json(_OBJ)})},
}


def openapi_spec(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Lamina",
            "version": version,
            "description": "Embedding search for pathology slides and dermatology photos. "
            "Every search answer names its snapshot.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": {
            **PATHS,
            **COLLECTION_PATHS,
            **SEARCH_PATHS,
            **COHORT_PATHS,
            **VIEWER_PATHS,
            **QC_PATHS,
        },
        "components": {
            "schemas": SCHEMAS,
            "responses": {"Error": _json(_ref("Error"), "Error")},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "needed when LAMINA_API_TOKEN is set or tokens exist "
                    "(lamina token add); 401 without a valid token, 403 when its scope "
                    "(read, write, admin) does not cover the route",
                }
            },
        },
    }
