"""The OpenAPI 3.1 description of the HTTP API (served at /api/v1/openapi.json)."""

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
    "/collections/{c}": {
        "get": _op(
            "One collection as the server answers on it: counts, snapshot, index, metadata columns",
            {"200": _json(_ok({"collection": _OBJ}))},
            parameters=[_name_param("c")],
        ),
        "delete": _op(
            "Drop the collection with its cohorts and export records (admin); the query "
            "parameter confirm must repeat the name (else 422 CONFIRMATION_REQUIRED)",
            {
                "200": _json(
                    _ok(
                        {
                            "dropped": _STR,
                            "tiles": _INT,
                            "cohorts_deleted": {"type": "array", "items": _STR},
                        }
                    )
                )
            },
            parameters=[
                _name_param("c"),
                {"name": "confirm", "in": "query", "required": True, "schema": _STR},
            ],
        ),
    },
    "/collections/{c}/columns": {
        "get": _op(
            "The collection's column roles: declared patient/case/lesion columns, what they "
            "resolve to (patient falls back to patient_id), and its metadata columns",
            {"200": _json(_ok({"collection": _ref("ColumnRoles")}))},
            parameters=[_name_param("c")],
        ),
        "put": _op(
            "Declare column roles (admin); nothing is re-embedded. 422 INVALID_QUERY for another "
            "field or a column the collection does not have",
            {"200": _json(_ok({"collection": _ref("ColumnRoles")}))},
            parameters=[_name_param("c")],
            requestBody={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "patient_column": _NSTR,
                                "case_column": _NSTR,
                                "lesion_column": _NSTR,
                            },
                            "additionalProperties": False,
                        }
                    }
                },
            },
        ),
    },
    "/collections/{c}/facets": {
        "get": _op(
            "Filterable metadata columns with their values and tile counts: numeric columns "
            "min/max/count, text columns their most frequent values (capped by max_values)",
            {"200": _json(_ref("Facets"))},
            parameters=[
                _name_param("c"),
                {
                    "name": "max_values",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20},
                },
            ],
        )
    },
    "/collections/{c}/index": {
        "get": _op(
            "The collection's index settings: factory, stored and effective search parameters, "
            "vector dtype, and how far the ANN index covers the committed segments",
            {"200": _json(_ok({"collection": _OBJ}))},
            parameters=[_name_param("c")],
        ),
        "put": _op(
            "Store a new index factory and/or default search parameters (admin); vectors are "
            "never touched, the server builds the index in the background",
            {"200": _json(_ok({"collection": _OBJ}))},
            parameters=[_name_param("c")],
            requestBody={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "index_factory": _STR,
                                "params": {
                                    "type": "object",
                                    "properties": {
                                        "nprobe": _INT,
                                        "ef_search": _INT,
                                        "refine": _INT,
                                        "strategy": {"enum": ["auto", "exact", "ann"]},
                                        "exact_below": _INT,
                                    },
                                    "additionalProperties": False,
                                },
                            },
                            "additionalProperties": False,
                        }
                    }
                },
            },
        ),
    },
    "/collections/{c}/compact": {
        "post": _op(
            "Merge the collection's small segments, as a job whose result is the compaction "
            "summary (segments_before, segments_after, merged, erased_tiles); segments holding "
            "deleted rows are written again without them, and erase=true removes the replaced "
            "files at once and retrains the ANN index",
            _ACCEPTED,
            parameters=[_name_param("c")],
            requestBody={
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "target_rows": {"type": "integer", "minimum": 2},
                                "erase": {"type": "boolean"},
                            },
                        }
                    }
                },
            },
        )
    },
    "/collections/{c}/annotate": {
        "post": _op(
            "Update indexed sources' metadata from a manifest without re-embedding, as a job "
            "whose result lists every changed source (changes: {column: {old, new}})",
            _ACCEPTED,
            parameters=[_name_param("c")],
            requestBody={
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["manifest"],
                            "properties": {
                                "manifest": {"type": "string", "format": "binary"},
                                "source_column": _STR,
                                "column_type": {
                                    "type": "string",
                                    "description": "COLUMN=TYPE, comma-separated",
                                },
                                "na_values": _STR,
                            },
                        }
                    }
                },
            },
        )
    },
    "/collections/{c}/delete": {
        "post": _op(
            "Delete whole sources (names, paths, source ids, or those with a tile matching the "
            "filter): gone from searches at once, erased from disk by the next compaction",
            {
                "200": _json(
                    _ok(
                        {
                            "deleted": {"type": "array", "items": _OBJ},
                            "sources": _INT,
                            "tiles": _INT,
                            "snapshot": _STR,
                        }
                    )
                )
            },
            parameters=[_name_param("c")],
            requestBody={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "sources": {"type": "array", "items": _STR},
                                "filter": {"oneOf": [_STR, _OBJ]},
                                "dry_run": {"type": "boolean"},
                            },
                        }
                    }
                },
            },
        )
    },
    "/collections/{c}/search": {
        "post": _op(
            "k nearest tiles (level=tile) or slides (level=slide: top-m mean of tile similarities)",
            {"200": _json(_ref("SearchResult"))},
            parameters=[_name_param("c")],
            requestBody={
                "required": True,
                "content": {
                    "application/json": {"schema": _ref("SearchJson")},
                    "multipart/form-data": {"schema": _ref("SearchForm")},
                },
            },
        )
    },
    "/collections/{c}/search/batch": {
        "post": _op(
            "k nearest tiles for each of up to 1000 query vectors or stored tiles, one snapshot",
            {"200": _json(_ref("BatchResult"))},
            parameters=[_name_param("c")],
            requestBody={
                "required": True,
                "content": {"application/json": {"schema": _ref("BatchSearch")}},
            },
        )
    },
    "/collections/{c}/import": {
        "post": _op(
            "Import precomputed embeddings (.h5, .parquet, .npz, .json files) into a collection "
            "bound to the declared encoder; 422 IMPORT_FAILED with the run report when a file "
            "fails a check",
            _ACCEPTED,
            parameters=[_name_param("c")],
            requestBody={
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file", "encoder_name"],
                            "properties": {
                                "file": {
                                    "type": "array",
                                    "items": {"type": "string", "format": "binary"},
                                },
                                "encoder_name": {
                                    "type": "string",
                                    "description": "a registered encoder key, or "
                                    "external/<name> with dim",
                                },
                                "dim": _INT,
                                "table_source_column": _STR,
                                "vector_column": _STR,
                                "patch_px_level0": _INT,
                            },
                        }
                    }
                },
            },
        )
    },
    "/tiles/{tile_id}": {
        "get": _op(
            "Metadata of one tile",
            {"200": _json(_ok({"collection": _STR, "snapshot": _STR, "tile": _ref("Tile")}))},
            parameters=[_TILE_PARAM, _COLQ],
        )
    },
    "/tiles/{tile_id}/image": {
        "get": _op(
            "PNG of the tile, re-read from its source",
            {"200": _PNG},
            parameters=[_TILE_PARAM, _COLQ],
        )
    },
    "/sources/{source_id}/thumbnail": {
        "get": _op(
            "PNG thumbnail of a source (never the label or macro image)",
            {"200": _PNG},
            parameters=[_name_param("source_id"), _COLQ],
        )
    },
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
    "/roots": {
        "get": _op(
            "The home's roots (admin): name, whether its folder exists, how often it moved; "
            "the table's version (folder paths are not shown)",
            {
                "200": _json(
                    _ok({"version": {"type": "integer"}, "roots": {"type": "array", "items": _OBJ}})
                )
            },
        )
    },
    "/roots/relocate": {
        "post": _op(
            "A root's folder moved (admin): to (absolute folder on the server) and root (its "
            "name) or from (the folder as indexed). No segment written, nothing re-embedded; "
            "404 ROOT_NOT_FOUND, 422 INVALID_ROOT",
            {
                "200": _json(
                    _ok(
                        {
                            "root": _STR,
                            "version": {"type": "integer"},
                            "sources": {"type": "integer"},
                            "checked": {"type": "integer"},
                            "found": {"type": "integer"},
                            "missing": {"type": "array", "items": _STR},
                        }
                    )
                )
            },
            requestBody={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"to": _STR, "root": _STR, "from": _STR},
                            "required": ["to"],
                            "additionalProperties": False,
                        }
                    }
                },
            },
        )
    },
    "/openapi.json": {"get": _op("This document", {"200": _json(_OBJ)})},
}


def openapi_spec(version: str) -> dict[str, Any]:
    from lamina.api.openapi_qc import QC_PATHS
    from lamina.api.openapi_viewer import VIEWER_PATHS

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
        "paths": {**PATHS, **VIEWER_PATHS, **QC_PATHS},
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
