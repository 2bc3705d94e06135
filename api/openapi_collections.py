"""The OpenAPI paths that read and manage one collection: its settings, column roles,
facets, index, compaction, metadata edits, deletions, imports, and the home's roots (merged
into ``api.openapi.openapi_spec``)."""

from __future__ import annotations

from typing import Any

from lamina.api.openapi_common import (
    _ACCEPTED,
    _INT,
    _NSTR,
    _OBJ,
    _STR,
    _json,
    _name_param,
    _ok,
    _op,
    _ref,
)

COLLECTION_PATHS: dict[str, Any] = {
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
            "deleted rows are written again without them; erase=true removes the replaced "
            "files at once, and retrain_index=true (with erase; else 422 INVALID_QUERY) trains "
            "the ANN index again on the remaining vectors",
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
                                "retrain_index": {"type": "boolean"},
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
}
