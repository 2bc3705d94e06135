"""Cohorts: saved, versioned sets of tiles defined by metadata filters and/or similarity.

Definition, applied in this order:

1. ``filters`` (CLI EXPR strings and/or the JSON form) select the candidate tiles; no filter
   means every tile of the collection.
2. Without example queries, the cohort is every candidate.
3. With ``tile_ids`` (tiles picked by hand, e.g. hits selected on the web page), the cohort
   is exactly those tiles that pass the filters (at most :data:`MAX_TILE_IDS`; every id
   must exist; no examples then).
4. With examples (image vectors embedded by the caller, and/or stored tile ids), each
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

from lamina.search.catalog import Catalog, now_utc
from lamina.search.columns import patient_column
from lamina.search.errors import FilterError, InvalidQueryError, StaleCohortError
from lamina.search.filters import Condition, conditions_to_json, parse_filters, value_warnings
from lamina.search.service import SearchService
from lamina.search.store import NAME_RE
from lamina.search.views import CollectionView

DEFAULT_K = 100
MAX_TILE_IDS = 10_000
LABEL_MAX_DISTINCT = 20
BLOCK = 262_144  # float32 rows per BLAS call (memory-mapped, not copied)
BLOCK_F16 = 32_768  # float16 rows converted per block
DENSE = 0.25
RUN = 64  # mean run length above which runs of rows are sliced, not gathered


def checked_conditions(view: CollectionView, conds: Sequence[Condition]) -> list[Condition]:
    """``conds`` after checking that every column exists in the view's schema."""
    for c in conds:
        if c.column not in view.schema:
            known = ", ".join(sorted(view.schema))
            raise FilterError(f"unknown filter column {c.column!r}; columns: {known}")
    return list(conds)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    q = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if q.ndim != 2 or not np.all(np.isfinite(q)) or np.any(norms == 0):
        raise InvalidQueryError("example vectors must be finite and non-zero")
    return q / norms


# -- bulk exact scoring ---------------------------------------------------------------------------
def score_positions(view: CollectionView, queries: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(n_queries, len(positions)) float32 inner products of ``queries`` with the tiles at the
    given global positions (ascending). Per segment: a selection made of long runs of
    consecutive rows (a slide's tiles; mean run at least :data:`RUN`) is scored run by run on
    slices of the memory-mapped vectors (nothing copied); otherwise a dense selection (at least
    :data:`DENSE` of the rows) by a block scan, a sparse one by a gather. float16 storage is
    converted block by block."""
    qt = np.ascontiguousarray(np.asarray(queries, np.float32).T)
    pos = np.asarray(positions, dtype=np.int64)
    out = np.empty((qt.shape[1], len(pos)), np.float32)
    if len(pos) == 0:
        return out
    bounds = np.searchsorted(pos, view.offsets)
    for i, reader in enumerate(view.readers):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        if lo == hi:
            continue
        rows = pos[lo:hi] - view.offsets[i]
        vectors = reader.vectors
        starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)  # runs of consecutive rows
        if hi - lo < reader.n and len(rows) >= RUN * len(starts):  # long runs: slice, no copy
            ends = np.append(starts[1:], len(rows))
            one = qt[:, 0] if qt.shape[1] == 1 else qt
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                block = np.asarray(vectors[rows[a] : rows[a] + b - a], dtype=np.float32)
                out[:, lo + a : lo + b] = (block @ one).reshape(b - a, -1).T
        elif hi - lo >= DENSE * reader.n:  # scan the segment, keep the selected rows
            whole = hi - lo == reader.n
            step = BLOCK if vectors.dtype == np.float32 else BLOCK_F16
            for b in range(0, reader.n, step):
                block = np.asarray(vectors[b : b + step], dtype=np.float32)
                res = block @ (qt[:, 0] if qt.shape[1] == 1 else qt)  # gemv for one query
                res = res.reshape(len(block), -1)
                if whole:
                    out[:, lo + b : lo + b + len(block)] = res.T
                    continue
                sel = slice(*np.searchsorted(rows, [b, b + step]))
                out[:, lo + sel.start : lo + sel.stop] = res[rows[sel] - b].T
        else:
            for b in range(0, len(rows), BLOCK_F16):
                block = reader.gather(rows[b : b + BLOCK_F16])
                out[:, lo + b : lo + b + len(block)] = (block @ qt).T
    return out


def top_k_by_id(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best ``scores``, best first; ties to the lower id (deterministic)."""
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        keep = np.flatnonzero(scores >= scores[part].min())  # ties at the boundary
    else:
        keep = np.arange(len(scores))
    order = np.lexsort((ids[keep], -scores[keep]))[:k]
    return keep[order]


def compute_members(
    view: CollectionView,
    *,
    filters: Sequence[str] = (),
    filter_json: Mapping[str, Any] | None = None,
    queries: np.ndarray | None = None,
    k: int | None = None,
    min_score: float | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """-> (tile ids ascending, scores or None). See the module docstring for the rules.

    Filters are evaluated column-wise (``view.matching_positions``); examples are scored
    exactly over the matching tiles with :func:`score_positions`."""
    conds = checked_conditions(view, parse_filters(filters, filter_json))
    positions = np.asarray(view.matching_positions(conds), dtype=np.int64)
    tile_ids = view.tile_ids_at(positions)
    if queries is None or len(queries) == 0:
        order = np.argsort(tile_ids, kind="stable")
        return tile_ids[order].astype(np.int64), None
    if k is not None and min_score is not None:
        raise InvalidQueryError("give k or min_score, not both")
    if k is None and min_score is None:
        k = DEFAULT_K
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise InvalidQueryError(f"k must be a positive integer, got {k!r}")
    scores = score_positions(view, _unit_rows(queries), positions)
    chosen = np.zeros(len(positions), dtype=bool)
    for row in scores:
        if k is not None:
            # rank by score desc, then tile id asc: deterministic under ties
            chosen[top_k_by_id(row, tile_ids, k)] = True
        else:
            chosen |= row >= float(min_score or 0.0)
    best = scores.max(axis=0) if len(positions) else np.zeros(0, np.float32)
    ids, sc = tile_ids[chosen], best[chosen]
    order = np.argsort(ids, kind="stable")
    return ids[order].astype(np.int64), sc[order].astype(np.float64)


def chosen_members(
    view: CollectionView,
    tile_ids: Sequence[int],
    filters: Sequence[str] = (),
    filter_json: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """The given tile ids (each must exist: ``TileNotFoundError`` names the first that does
    not) that pass the filters, ascending and without repeats."""
    ids = np.unique(np.asarray([int(t) for t in tile_ids], dtype=np.int64))
    pos = view.positions_of(ids)
    conds = checked_conditions(view, parse_filters(filters, filter_json))
    mask = view.mask(conds)  # also drops deleted tiles
    return ids if mask is None else ids[mask[pos]]


# -- counts (column codes, no SQL) ----------------------------------------------------------------
def _positions(view: CollectionView, tile_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    ids = np.asarray(tile_ids, dtype=np.int64).reshape(-1)
    return view.positions_of(ids) if len(ids) else np.zeros(0, np.int64)


def _value_counts_at(view: CollectionView, column: str, pos: np.ndarray) -> list[dict[str, Any]]:
    """[{value, n}] of ``column`` over the positions: n descending, then value (nulls last)."""
    codes, values = view.codes(column)
    counts = np.bincount(codes[pos] + 1, minlength=len(values) + 1)
    out = [
        {"value": _plain(values[c]), "n": int(counts[c + 1])} for c in np.flatnonzero(counts[1:])
    ]
    if counts[0]:
        out.append({"value": None, "n": int(counts[0])})
    out.sort(
        key=lambda r: (-r["n"], r["value"] is None, r["value"] if r["value"] is not None else 0)
    )
    return out


def _n_distinct_at(view: CollectionView, column: str, pos: np.ndarray) -> int:
    codes, _ = view.codes(column)
    sel = codes[pos]
    return int(len(np.unique(sel[sel >= 0])))


def summary_counts(
    view: CollectionView, tile_ids: Sequence[int] | np.ndarray
) -> dict[str, int | None]:
    """Tiles, distinct sources and distinct non-null patients among the given tiles."""
    pos = _positions(view, tile_ids)
    pcol = patient_column(view)
    return {
        "n_tiles": int(len(pos)),
        "n_sources": _n_distinct_at(view, "source_id", pos),
        "n_patients": _n_distinct_at(view, pcol, pos) if pcol else None,
    }


def label_columns(view: CollectionView) -> list[str]:
    """Low-cardinality metadata columns: at most LABEL_MAX_DISTINCT distinct non-null values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pcol = patient_column(view)
    out = []
    for c in view.metadata_columns:
        if c == pcol:
            continue
        seen: set[Any] = set()
        for r in view.readers:
            if c not in r.table.column_names:
                continue
            col = r.table.column(c)
            if pa.types.is_dictionary(col.type):
                values = r.codes(c)[1]  # strings: the (cached) dictionary of the column
            elif int(pc.count_distinct(col).as_py()) > LABEL_MAX_DISTINCT:
                values = list(range(LABEL_MAX_DISTINCT + 1))
            else:
                values = pc.unique(col).to_pylist()
            seen.update(v for v in values if v is not None)
            if len(seen) > LABEL_MAX_DISTINCT:
                break
        if 0 < len(seen) <= LABEL_MAX_DISTINCT:
            out.append(c)
    return out


def cohort_counts(
    view: CollectionView, tile_ids: Sequence[int], label_column: str | None = None
) -> dict[str, Any]:
    """Counts per slide (source), per patient and per label column over the given tiles."""
    pos = _positions(view, tile_ids)
    src_codes, src_ids = view.codes("source_id")
    name_codes, names = view.codes("source")
    sel = src_codes[pos]
    n = np.bincount(sel, minlength=len(src_ids))
    first = np.full(len(src_ids), -1, np.int64)
    first[sel[::-1]] = pos[::-1]  # the first member position of each source
    per_slide = [
        {"source_id": src_ids[c], "source": names[name_codes[first[c]]], "n": int(n[c])}
        for c in np.flatnonzero(n)
    ]
    per_slide.sort(key=lambda r: (-r["n"], r["source_id"]))
    pcol = patient_column(view)
    per_patient = _value_counts_at(view, pcol, pos) if pcol else []
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
        "per_label": {c: _value_counts_at(view, c, pos) for c in labels},
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
    tile_ids: Sequence[int] = (),
) -> dict[str, Any]:
    """Compute and store a new version of cohort ``name``.

    ``near_vectors`` are the embeddings of example images (made by the caller with the
    collection's encoder), described for the record by ``near_images`` (name, sha256).
    ``tile_ids`` names the members outright (rule 3 of the module docstring).
    """
    if not NAME_RE.match(name):
        raise InvalidQueryError(f"invalid cohort name {name!r}: letters, digits, '_', '.', '-'")
    view = service.view(collection)
    if tile_ids:
        if near_vectors or near_tile_ids or k is not None or min_score is not None:
            raise InvalidQueryError(
                "tile_ids name the members: give no examples, k or min_score with them"
            )
        if len(tile_ids) > MAX_TILE_IDS:
            raise InvalidQueryError(
                f"at most {MAX_TILE_IDS} tile_ids, got {len(tile_ids)}: save a cohort by "
                "filter and examples instead"
            )
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
    if tile_ids:
        ids, scores = chosen_members(view, tile_ids, filters, filter_json), None
    else:
        ids, scores = compute_members(
            view,
            filters=filters,
            filter_json=filter_json,
            queries=queries,
            k=k,
            min_score=min_score,
        )
    definition: dict[str, Any] = {
        "filter": conditions_to_json(parse_filters(filters, filter_json)),
        "near_images": [dict(m) for m in near_images],
        "near_tile_ids": [int(t) for t in near_tile_ids],
        "k": k,
        "min_score": min_score,
        "collection_uuid": view.collection.uuid,
    }
    if tile_ids:
        definition["tile_ids"] = [int(t) for t in ids]
    if view.missing_segments:  # computed without the tiles of damaged segments: said so
        definition["missing_segments"] = view.missing_segments
    record = {
        "name": name,
        "collection": collection,
        "snapshot": view.snapshot.id,
        "encoder": view.collection.fingerprint,
        "definition": definition,
        "created_at": now_utc(),
        **summary_counts(view, ids),
    }
    stored = catalog.add_cohort(record, ids, scores)
    conds = parse_filters(filters, filter_json)  # values matching nothing: said, not stored
    return {**stored, "warnings": value_warnings(conds, view.schema, view.distinct_values)}


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
    check_identity(record, view.collection.uuid)
    if view.missing_segments:
        record["missing_segments"] = view.missing_segments
    ids, _ = catalog.members(name, record["version"])
    present = present_members(view, ids)
    record["deleted_members"] = len(ids) - len(present)
    record["counts"] = cohort_counts(view, present.tolist(), label_column)
    return record


def present_members(view: CollectionView, tile_ids: Sequence[int]) -> np.ndarray:
    """The cohort members still in the view (ascending): members deleted since the cohort was
    made (and erased, or tombstoned) are left out; ``show_cohort`` counts them."""
    ids = np.unique(np.asarray(tile_ids, dtype=np.int64).reshape(-1))
    found = np.zeros(len(ids), bool)
    for r in view.readers:
        inside = (ids >= r.min_id) & (ids <= r.max_id)
        if inside.any():
            found[np.flatnonzero(inside)[r.rows_of(ids[inside]) >= 0]] = True
    return ids[found]


def check_identity(record: Mapping[str, Any], collection_uuid: str) -> None:
    """Refuse a cohort made on an earlier collection of the same name (deleted and created
    again): its tile ids would name other tiles. Cohorts made before collections recorded
    their identity are not checked."""
    made_on = (record.get("definition") or {}).get("collection_uuid")
    if made_on and made_on != collection_uuid:
        raise StaleCohortError(
            f"cohort {record['name']!r} was made on an earlier collection named "
            f"{record['collection']!r}, since deleted and created again: its tile ids would "
            "name other tiles; create the cohort again on the current collection"
        )


def cohort_tile_ids(
    catalog: Catalog, name: str, collection: str, collection_uuid: str | None = None
) -> tuple[list[int], dict[str, Any]]:
    """Members of the latest version of ``name``, checked to belong to ``collection`` (and,
    given its ``collection_uuid``, to this very collection, not an earlier one of its name)."""
    record = catalog.cohort(name)
    if record["collection"] != collection:
        raise InvalidQueryError(
            f"cohort {name!r} belongs to collection {record['collection']!r}, not {collection!r}"
        )
    if collection_uuid is not None:
        check_identity(record, collection_uuid)
    ids, _ = catalog.members(name, record["version"])
    return ids, record
