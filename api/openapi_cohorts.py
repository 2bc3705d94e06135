"""The OpenAPI paths of cohorts, exports, linear probes and background jobs (merged into
``api.openapi.openapi_spec``)."""

from __future__ import annotations

from typing import Any

from lamina.api.openapi_common import (
    _ACCEPTED,
    _INT,
    _NUM,
    _OBJ,
    _STR,
    _json,
    _name_param,
    _ok,
    _op,
    _ref,
)

COHORT_PATHS: dict[str, Any] = {
    "/cohorts": {
        "get": _op(
            "Saved cohorts",
            {"200": _json(_ok({"cohorts": {"type": "array", "items": _ref("Cohort")}}))},
        ),
        "post": _op(
            "Create (or version) a cohort from filters and/or similarity to examples",
            {"200": _json(_ok({"cohort": _ref("Cohort")}))},
            requestBody={
                "required": True,
                "content": {
                    "application/json": {"schema": _ref("CohortCreate")},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "name": _STR,
                                "collection": _STR,
                                "filter": _STR,
                                "filters": {
                                    "type": "string",
                                    "description": "EXPR lines (COL=V1,V2 / COL>=N ...), one "
                                    "per line; repeatable",
                                },
                                "k": _INT,
                                "min_score": _NUM,
                                "near_tile_ids": _STR,
                                "tile_ids": _STR,
                                "near": {
                                    "type": "array",
                                    "items": {"type": "string", "format": "binary"},
                                },
                            },
                        }
                    },
                },
            },
        ),
    },
    "/cohorts/{name}": {
        "get": _op(
            "A cohort (the latest version, or ?version=N) with counts per slide, patient and "
            "label (every low-cardinality column, or ?label_column=COL)",
            {"200": _json(_ok({"cohort": _ref("Cohort")}))},
            parameters=[
                _name_param("name"),
                {
                    "name": "version",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1},
                },
                {"name": "label_column", "in": "query", "required": False, "schema": _STR},
            ],
        ),
        "delete": _op(
            "Delete a cohort",
            {"200": _json(_ok({"deleted": _STR}))},
            parameters=[_name_param("name")],
        ),
    },
    "/exports": {
        "post": _op(
            "Labeled embedding set (train/test split without group leakage), as a job; the file "
            "is then GET /jobs/{id}/file",
            _ACCEPTED,
            requestBody={
                "required": True,
                "content": {"application/json": {"schema": _ref("ExportRequest")}},
            },
        )
    },
    "/probes": {
        "post": _op(
            "Linear-probe metrics (AUROC, accuracy, balanced accuracy, 95% CI), as a job whose "
            'result is {"report": ...}',
            _ACCEPTED,
            requestBody={
                "required": True,
                "content": {"application/json": {"schema": _ref("ProbeRequest")}},
            },
        )
    },
    "/jobs": {"get": _op("Job counts by status, workers and queue bound", {"200": _json(_OBJ)})},
    "/jobs/{job_id}": {
        "get": _op(
            "A job's status, progress and result",
            {"200": _json(_ref("JobAnswer"))},
            parameters=[_name_param("job_id")],
        ),
        "delete": _op(
            "Cancel a job (queued: never runs; running: stops at its next step)",
            {"200": _json(_ref("JobAnswer"))},
            parameters=[_name_param("job_id")],
        ),
    },
    "/jobs/{job_id}/file": {
        "get": _op(
            "A done export's file; headers X-Lamina-Snapshot, X-Lamina-Encoder, X-Lamina-Meta",
            {
                "200": {
                    "description": "the file",
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                }
            },
            parameters=[_name_param("job_id")],
        )
    },
}
