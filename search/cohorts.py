"""Cohorts: saved, versioned sets of tiles defined by metadata filters and/or similarity.

Definition, applied in this order:

1. ``filters`` (CLI EXPR strings and/or the JSON form) select the candidate tiles; no filter
   means every tile of the collection.
2. Without example queries, the cohort is every candidate.
3. With examples (image vectors embedded by the caller, and/or stored tile ids), each
   example ranks the candidates by inner product (exact, brute force). With ``k`` each
   example contributes its k nearest candidates; with ``min_score`` each contributes every
   candidate scoring at least ``min_score``. The cohort is the union over examples, and a
   member's score is its best (maximum) score over all examples. If neither is given,
   ``k`` defaults to :data:`DEFAULT_K`.

Re-creating a cohort of the same name stores a new version (old versions stay); every
version records the snapshot and encoder fingerprint it was computed on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from search.catalog import Catalog, now_utc
from search.errors import InvalidQueryError
from search.filters import compile_conditions, conditions_to_json, parse_filters, quote_ident
from search.service import SearchService
from search.store import NAME_RE
from search.views import CollectionView

DEFAULT_K = 100
LABEL_MAX_DISTINCT = 20
_CHUNK = 65_536


def patient_column(view: CollectionView) -> str | None:
    col = str(view.collection.info.get("patient_column") or "patient_id")
    return col if col in view.schema else None


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    q = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if q.ndim != 2 or not np.all(np.isfinite(q)) or np.any(norms == 0):
        raise InvalidQueryError("example vectors must be finite and non-zero")
    return q / norms


def best_scores(vectors: np.ndarray, queries: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(n_queries, len(positions)) inner products, computed in chunks."""
    out = np.empty((len(queries), len(positions)), np.float32)
    for start in range(0, len(positions), _CHUNK):
        chunk = positions[start : start + _CHUNK]
        out[:, start : start + len(chunk)] = queries @ vectors[chunk].T
    return out


def compute_members(
    view: CollectionView,
    *,
    filters: Sequence[str] = (),
    filter_json: Mapping[str, Any] | None = None,
    queries: np.ndarray | None = None,
    k: int | None = None,
    min_score: float | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """-> (tile ids ascending, scores or None). See the module docstring for the rules."""
    conds = parse_filters(filters, filter_json)
    where, params = compile_conditions(conds, view.schema)
    positions = (
        np.arange(view.n_tiles, dtype=np.int64)
        if where == "TRUE"
        else np.asarray(view.matching_positions(where, params), dtype=np.int64)
    )
    tile_ids = view.index.tile_ids[positions]
    if queries is None or len(queries) == 0:
        order = np.argsort(tile_ids, kind="stable")
        return tile_ids[order].astype(np.int64), None
    if k is not None and min_score is not None:
        raise InvalidQueryError("give k or min_score, not both")
    if k is None and min_score is None:
        k = DEFAULT_K
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise InvalidQueryError(f"k must be a positive integer, got {k!r}")
    scores = best_scores(view.vectors, _unit_rows(queries), positions)
    chosen = np.zeros(len(positions), dtype=bool)
    for row in scores:
        if k is not None:
            kk = min(k, len(row))
            # rank by score desc, then tile id asc: deterministic under ties
            order = np.lexsort((tile_ids, -row))[:kk]
            chosen[order] = True
        else:
            chosen |= row >= float(min_score or 0.0)
    best = scores.max(axis=0) if len(positions) else np.zeros(0, np.float32)
    ids, sc = tile_ids[chosen], best[chosen]
    order = np.argsort(ids, kind="stable")
    return ids[order].astype(np.int64), sc[order].astype(np.float64)


def _member_cte(tile_ids: Sequence[int]) -> tuple[str, list[Any]]:
    return "WITH m AS (SELECT unnest(?::BIGINT[]) AS tile_id) ", [[int(t) for t in tile_ids]]


def summary_counts(view: CollectionView, tile_ids: Sequence[int]) -> dict[str, int | None]:
    cte, params = _member_cte(tile_ids)
    pcol = patient_column(view)
    pexpr = f"count(DISTINCT t.{quote_ident(pcol)})" if pcol else "NULL"
    row = view.sql(
        cte + f"SELECT count(*) AS n_tiles, count(DISTINCT t.source_id) AS n_sources, "
        f"{pexpr} AS n_patients FROM tiles t JOIN m USING (tile_id)",
        params,
    )[0]
    return {k: (None if v is None else int(v)) for k, v in row.items()}


def label_columns(view: CollectionView) -> list[str]:
    """Low-cardinality metadata columns: at most LABEL_MAX_DISTINCT distinct non-null values."""
    pcol = patient_column(view)
    cols = [c for c in view.metadata_columns if c != pcol]
    if not cols:
        return []
    exprs = ", ".join(f"count(DISTINCT {quote_ident(c)})" for c in cols)
    counts = list(view.sql(f"SELECT {exprs} FROM tiles")[0].values())
    return [c for c, n in zip(cols, counts, strict=True) if 0 < int(n) <= LABEL_MAX_DISTINCT]


def _value_counts(
    view: CollectionView, column: str, tile_ids: Sequence[int]
) -> list[dict[str, Any]]:
    cte, params = _member_cte(tile_ids)
    col = quote_ident(column)
    rows = view.sql(
        cte + f"SELECT t.{col} AS value, count(*) AS n FROM tiles t JOIN m USING "
        f"(tile_id) GROUP BY ALL ORDER BY n DESC, value NULLS LAST",
        params,
    )
    return [{"value": _plain(r["value"]), "n": int(r["n"])} for r in rows]


def cohort_counts(
    view: CollectionView, tile_ids: Sequence[int], label_column: str | None = None
) -> dict[str, Any]:
    """Counts per slide (source), per patient and per label column over the given tiles."""
    cte, params = _member_cte(tile_ids)
    per_slide = [
        {"source_id": r["source_id"], "source": r["source"], "n": int(r["n"])}
        for r in view.sql(
            cte + "SELECT t.source_id, any_value(t.source) AS source, "
            "count(*) AS n FROM tiles t JOIN m USING (tile_id) "
            "GROUP BY t.source_id ORDER BY n DESC, t.source_id",
            params,
        )
    ]
    pcol = patient_column(view)
    per_patient = _value_counts(view, pcol, tile_ids) if pcol else []
    if label_column is not None:
        if label_column not in view.schema:
            raise InvalidQueryError(f"unknown label column {label_column!r}")
        labels = [label_column]
    else:
        labels = label_columns(view)
    return {
        "patient_column": pcol,
        "per_slide": per_slide,
        "per_patient": per_patient,
        "per_label": {c: _value_counts(view, c, tile_ids) for c in labels},
    }


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def create_cohort(
    catalog: Catalog,
    service: SearchService,
    name: str,
    collection: str,
    *,
    filters: Sequence[str] = (),
    filter_json: Mapping[str, Any] | None = None,
    near_vectors: Sequence[np.ndarray] = (),
    near_images: Sequence[Mapping[str, Any]] = (),
    near_tile_ids: Sequence[int] = (),
    k: int | None = None,
    min_score: float | None = None,
) -> dict[str, Any]:
    """Compute and store a new version of cohort ``name``.

    ``near_vectors`` are the embeddings of example images (made by the caller with the
    collection's encoder), described for the record by ``near_images`` (name, sha256).
    """
    if not NAME_RE.match(name):
        raise InvalidQueryError(f"invalid cohort name {name!r}: letters, digits, '_', '.', '-'")
    view = service.view(collection)
    vecs = [np.asarray(v, np.float32).reshape(-1) for v in near_vectors]
    if near_tile_ids:
        vecs.extend(view.tile_vectors([int(t) for t in near_tile_ids]))
    for v in vecs:
        if v.shape[0] != view.dim:
            raise InvalidQueryError(f"example vector has {v.shape[0]} dims, collection {view.dim}")
    queries = np.stack(vecs) if vecs else None
    if queries is None and (k is not None or min_score is not None):
        raise InvalidQueryError("k / min_score need examples (near images or near tile ids)")
    if queries is not None and k is None and min_score is None:
        k = DEFAULT_K
    ids, scores = compute_members(
        view, filters=filters, filter_json=filter_json, queries=queries, k=k, min_score=min_score
    )
    definition = {
        "filter": conditions_to_json(parse_filters(filters, filter_json)),
        "near_images": [dict(m) for m in near_images],
        "near_tile_ids": [int(t) for t in near_tile_ids],
        "k": k,
        "min_score": min_score,
    }
    record = {
        "name": name,
        "collection": collection,
        "snapshot": view.snapshot.id,
        "encoder": view.collection.fingerprint,
        "definition": definition,
        "created_at": now_utc(),
        **summary_counts(view, ids.tolist()),
    }
    return catalog.add_cohort(record, ids.tolist(), None if scores is None else scores.tolist())


def show_cohort(
    catalog: Catalog,
    service: SearchService,
    name: str,
    *,
    version: int | None = None,
    label_column: str | None = None,
) -> dict[str, Any]:
    """The cohort record plus its counts per slide, patient and label column."""
    record = catalog.cohort(name, version)
    view = service.view(record["collection"])
    ids, _ = catalog.members(name, record["version"])
    record["counts"] = cohort_counts(view, ids, label_column)
    return record


def cohort_tile_ids(
    catalog: Catalog, name: str, collection: str
) -> tuple[list[int], dict[str, Any]]:
    """Members of the latest version of ``name``, checked to belong to ``collection``."""
    record = catalog.cohort(name)
    if record["collection"] != collection:
        raise InvalidQueryError(
            f"cohort {name!r} belongs to collection {record['collection']!r}, not {collection!r}"
        )
    ids, _ = catalog.members(name, record["version"])
    return ids, record
