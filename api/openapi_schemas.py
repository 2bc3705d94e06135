"""The OpenAPI component schemas (``#/components/schemas/...``) of the HTTP API, merged into
``api.openapi.openapi_spec``."""

from __future__ import annotations

from typing import Any

from lamina.api.openapi_common import (
    _INT,
    _NSTR,
    _NUM,
    _OBJ,
    _PARTIAL,
    _SEED,
    _SOURCE,
    _STR,
    _ok,
    _ref,
)

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["ok", "status", "code", "error"],
        "properties": {"ok": {"const": False}, "status": _INT, "code": _STR, "error": _STR},
    },
    "Filter": {
        "type": "object",
        "description": 'e.g. {"label": {"in": ["MEL"]}, "age": {"gte": 50}}; '
        "operators eq, ne, in, nin, iin (in, ignoring case), gt, gte, lt, lte; a bare value "
        "means eq.",
        "additionalProperties": {},
    },
    "Hit": {
        "type": "object",
        "required": [
            "tile_id",
            "score",
            "source_id",
            "source",
            "x",
            "y",
            "size_px",
            "mpp",
            "metadata",
        ],
        "properties": {
            "tile_id": _INT,
            "score": _NUM,
            "source_id": _STR,
            "source": _SOURCE,
            "x": _INT,
            "y": _INT,
            "size_px": _INT,
            "mpp": {"type": ["number", "null"]},
            "metadata": _OBJ,
            "level": _INT,
            "tile_px": {"type": ["integer", "null"]},
            "kind": _STR,
            "tissue_fraction": {"type": ["number", "null"]},
        },
    },
    "Group": {
        "type": "object",
        "required": ["key", "value", "score", "n_hits", "hits"],
        "properties": {
            "key": _STR,
            "value": {},
            "score": _NUM,
            "n_hits": {"type": "integer", "description": "the group's tiles matching the filters"},
            "hits": {"type": "array", "items": _ref("Hit")},
            "name": {"type": "string", "description": "slide groups: the file, as hits show it"},
        },
    },
    "SearchParams": {
        "type": "object",
        "description": "Per-request overrides of the collection's search parameters; "
        "unknown names or out-of-range values are 422 INVALID_QUERY.",
        "additionalProperties": False,
        "properties": {
            "nprobe": {"type": "integer", "minimum": 1, "maximum": 1 << 20},
            "ef_search": {"type": "integer", "minimum": 1, "maximum": 1 << 16},
            "refine": {"type": "integer", "minimum": 1, "maximum": 1000},
            "strategy": {"enum": ["auto", "exact", "ann"]},
            "exact_below": {"type": ["integer", "null"], "minimum": 0},
        },
    },
    "Plan": {
        "type": "object",
        "description": "How the query was answered (see docs/api.md): exact scan or ANN, why, "
        "how many tiles matched the filter, breadth, candidates scored, milliseconds per stage.",
        "properties": {
            "strategy": {"enum": ["exact", "ann"]},
            "index": _STR,
            "reason": _STR,
            "matched": _INT,
            "total": _INT,
            "selectivity": _NUM,
            "nprobe": _INT,
            "ef_search": _INT,
            "candidates": _INT,
            "segments_indexed": _INT,
            "segments_exact": _INT,
            "fallback": {"type": "boolean"},
            "backend": _STR,
            "ms": {"type": "object", "additionalProperties": _NUM},
        },
    },
    "ColumnRoles": {
        "type": "object",
        "properties": {
            "name": _STR,
            "declared": {
                "type": "object",
                "properties": {
                    "patient_column": _NSTR,
                    "case_column": _NSTR,
                    "lesion_column": _NSTR,
                },
            },
            "patient_column": _NSTR,
            "case_column": _NSTR,
            "lesion_column": _NSTR,
            "metadata_columns": {"type": "object", "additionalProperties": _STR},
        },
    },
    "SearchResult": _ok(
        {
            "collection": _STR,
            "snapshot": _STR,
            "encoder": _STR,
            "hits": {"type": "array", "items": _ref("Hit")},
            "groups": {"type": "array", "items": _ref("Group")},
            "query": _OBJ,
            "plan": _ref("Plan"),
            "warnings": {
                "type": "array",
                "items": _STR,
                "description": "Filter values that match no value of their column (with the "
                "values differing only in case).",
            },
            "missing_segments": {
                "type": "array",
                "items": _STR,
                "description": "Damaged segments (quarantined) the answer does not cover; "
                "absent when every segment answered.",
            },
            "warning": _STR,
            "partial": {
                "type": "boolean",
                "description": "Sharded server, partial=true asked: some shards did not answer.",
            },
            "missing_shards": {
                "type": "array",
                "items": _INT,
                "description": "Shards that did not answer a partial=true search; absent "
                "when every shard answered.",
            },
        },
        ["collection", "snapshot", "encoder", "hits"],
    ),
    "BatchSearch": {
        "type": "object",
        "description": "Exactly one of vectors or tile_ids (1 to 1000 queries), all answered "
        "on one snapshot.",
        "properties": {
            "vectors": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1000,
                "items": {"type": "array", "items": _NUM},
            },
            "tile_ids": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1000,
                "items": {"type": "integer", "minimum": 0},
            },
            "k": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 10},
            "offset": {
                "type": "integer",
                "minimum": 0,
                "maximum": 9999,
                "default": 0,
                "description": "0-based rank of the first answer (hit, group or slide): "
                "the next page; offset + k <= 10000",
            },
            "filter": _ref("Filter"),
            "filters": {"type": "array", "items": _STR, "description": "CLI EXPR strings, ANDed"},
            "encoder": _STR,
            "params": _ref("SearchParams"),
            "partial": _PARTIAL,
        },
    },
    "BatchResult": _ok(
        {
            "collection": _STR,
            "snapshot": _STR,
            "encoder": _STR,
            "results": {"type": "array", "items": _ref("SearchResult")},
        }
    ),
    "SearchJson": {
        "type": "object",
        "description": "Exactly one of tile_id, vector, region, source_id "
        "(source_id only with level=slide: rank slides by a whole query slide).",
        "properties": {
            "tile_id": {"type": "integer", "minimum": 0},
            "vector": {"type": "array", "items": _NUM},
            "region": {
                "type": "object",
                "required": ["slide", "x", "y", "w", "h"],
                "properties": {"slide": _STR, "x": _INT, "y": _INT, "w": _INT, "h": _INT},
            },
            "source_id": _STR,
            "k": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 10},
            "offset": {
                "type": "integer",
                "minimum": 0,
                "maximum": 9999,
                "default": 0,
                "description": "0-based rank of the first answer (hit, group or slide): "
                "the next page; offset + k <= 10000",
            },
            "filter": _ref("Filter"),
            "filters": {"type": "array", "items": _STR, "description": "CLI EXPR strings, ANDed"},
            "group_by": {
                "type": ["string", "null"],
                "description": "slide, patient, case, lesion (the declared column) or any "
                "metadata column: k groups, one hit per group (its best tile)",
            },
            "exclude_same": _NSTR,
            "encoder": {
                "type": "string",
                "description": "fingerprint of the encoder that made "
                "`vector`; 409 ENCODER_MISMATCH if it is not the collection's",
            },
            "level": {"enum": ["tile", "slide"], "default": "tile"},
            "top_m": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 5},
            "params": _ref("SearchParams"),
            "partial": _PARTIAL,
        },
    },
    "SearchForm": {
        "type": "object",
        "required": ["image"],
        "properties": {
            "image": {"type": "string", "format": "binary"},
            "k": _INT,
            "offset": _INT,
            "filter": {"type": "string", "description": "filter JSON"},
            "filters": {
                "type": "string",
                "description": "EXPR lines (COL=V1,V2 / COL>=N ...), one per line; repeatable",
            },
            "group_by": _STR,
            "exclude_same": _STR,
            "level": {"enum": ["tile", "slide"]},
            "params": {"type": "string", "description": "SearchParams as JSON"},
            "partial": {"enum": ["true", "false"]},
        },
    },
    "Tile": {
        "type": "object",
        "properties": {
            "tile_id": _INT,
            "source_id": _STR,
            "source": _SOURCE,
            "kind": _STR,
            "x": _INT,
            "y": _INT,
            "level": _INT,
            "size_px": _INT,
            "tile_px": {"type": ["integer", "null"]},
            "mpp": {"type": ["number", "null"]},
            "tissue_fraction": {"type": ["number", "null"]},
            "metadata": _OBJ,
        },
    },
    "Cohort": {
        "type": "object",
        "properties": {
            "name": _STR,
            "version": _INT,
            "collection": _STR,
            "snapshot": _STR,
            "definition": _OBJ,
            "n_tiles": _INT,
            "n_sources": _INT,
            "n_patients": _INT,
            "created_at": _STR,
            "counts": {
                "type": "object",
                "properties": {
                    "per_slide": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"source_id": _STR, "source": _SOURCE, "n": _INT},
                        },
                    },
                    "per_patient": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"value": {}, "n": _INT}},
                    },
                    "per_label": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "array",
                            "items": {"type": "object", "properties": {"value": {}, "n": _INT}},
                        },
                    },
                },
            },
        },
    },
    "Facets": _ok(
        {
            "collection": _STR,
            "snapshot": _STR,
            "n_tiles": _INT,
            "columns": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "type", "kind", "count", "n_null"],
                    "properties": {
                        "name": _STR,
                        "type": _STR,
                        "kind": {"enum": ["numeric", "text"]},
                        "count": _INT,
                        "n_null": _INT,
                        "min": {"type": ["number", "null"]},
                        "max": {"type": ["number", "null"]},
                        "n_distinct": _INT,
                        "top": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"value": _STR, "n": _INT},
                            },
                        },
                        "truncated": {"type": "boolean"},
                    },
                },
            },
        }
    ),
    "CohortCreate": {
        "type": "object",
        "required": ["name", "collection"],
        "properties": {
            "name": _STR,
            "collection": _STR,
            "filter": _ref("Filter"),
            "filters": {
                "type": "array",
                "items": _STR,
                "description": "CLI EXPR strings, ANDed (two on one column both hold)",
            },
            "near_tile_ids": {"type": "array", "items": _INT},
            "k": _INT,
            "min_score": _NUM,
            "tile_ids": {
                "type": "array",
                "maxItems": 10000,
                "items": _INT,
                "description": "the members, named outright (those passing the filter); "
                "no examples, k or min_score with them",
            },
        },
    },
    "ExportRequest": {
        "type": "object",
        "required": ["collection"],
        "description": "label_column is required except with format trident-h5",
        "properties": {
            "collection": _STR,
            "cohort": _STR,
            "label_column": _STR,
            "neighbors": _INT,
            "split_by": _STR,
            "test_fraction": {"type": "number", "default": 0.2},
            "seed": _SEED,
            "format": {
                "enum": ["parquet", "csv", "npz", "trident-h5"],
                "description": "trident-h5: a zip of one TRIDENT .h5 per slide and slides.csv "
                "(label_column optional; split_by and neighbors refused)",
            },
        },
    },
    "ProbeRequest": {
        "type": "object",
        "required": ["collection", "label_column"],
        "properties": {
            "collection": _STR,
            "label_column": _STR,
            "cohort": _STR,
            "split_by": _STR,
            "fractions": {"type": "array", "items": _NUM},
            "seed": _SEED,
            "test_fraction": {"type": "number", "default": 0.2},
        },
    },
    "Job": {
        "type": "object",
        "required": ["id", "kind", "status", "progress", "message"],
        "properties": {
            "id": _STR,
            "kind": {"enum": ["probe", "export", "import"]},
            "collection": _NSTR,
            "status": {"enum": ["queued", "running", "done", "failed", "cancelled"]},
            "progress": _NUM,
            "message": _STR,
            "result": {
                "description": "when done: the probe report, export record or import report"
            },
            "error": {"description": "when failed: {status, code, error}"},
            "download": {
                "description": "when a done export: jobs/{id}/file (relative to /api/v1/)"
            },
        },
    },
    "JobAnswer": {
        "type": "object",
        "required": ["ok", "job"],
        "properties": {"ok": {"const": True}, "job": _ref("Job")},
    },
}
