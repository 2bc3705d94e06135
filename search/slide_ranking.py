"""Slide-level retrieval: rank sources (slides, photos) by the evidence of their tiles.

Method ("top-m mean", in the spirit of RetCCL / SISH's slide aggregation): for every query
vector q_j (one for an image/tile/region query; up to ``max_queries`` tiles of a query slide)
and every candidate slide s, take the cosine similarities of q_j to the tiles of s that pass
the filters, keep the ``top_m`` largest and average them. A slide's score is the mean of those
per-query scores over the query vectors. A slide with one lucky outlier tile is outranked by a
slide whose tiles consistently resemble the query. Slides with fewer than ``top_m`` matching
tiles average over what they have. Exact (brute force, chunked) over the filtered tiles.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from search.errors import InvalidQueryError
from search.filters import compile_conditions, parse_filters, quote_ident
from search.service import MAX_K, Group, SearchResult, SearchService, _hit
from search.views import CollectionView

_CHUNK = 65_536
_SOURCE_CODES: weakref.WeakKeyDictionary[CollectionView, tuple[np.ndarray, list[str]]] = (
    weakref.WeakKeyDictionary()
)


def _source_codes(view: CollectionView) -> tuple[np.ndarray, list[str]]:
    """(code of each index position, source ids by code); cached per immutable view."""
    cached = _SOURCE_CODES.get(view)
    if cached is not None:
        return cached
    rows = view.sql("SELECT tile_id, source_id FROM tiles")
    codes = np.full(view.n_tiles, -1, np.int64)
    names: list[str] = []
    if rows:
        ids = np.array([r["tile_id"] for r in rows], np.int64)
        src = [str(r["source_id"]) for r in rows]
        uniq, inverse = np.unique(np.array(src, dtype=object), return_inverse=True)
        names = [str(u) for u in uniq]
        codes[view.positions_of(ids)] = inverse
    _SOURCE_CODES[view] = (codes, names)
    return codes, names


def _unit(vectors: np.ndarray, dim: int) -> np.ndarray:
    q = np.asarray(vectors, dtype=np.float64).reshape(-1, dim)
    if not np.all(np.isfinite(q)):
        raise InvalidQueryError("query vector contains NaN or infinity")
    scale = np.abs(q).max(axis=1, keepdims=True)
    if np.any(scale == 0):
        raise InvalidQueryError("query vector is all zeros")
    q = q / scale
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def slide_scores(
    vectors: np.ndarray, codes: np.ndarray, n_sources: int, queries: np.ndarray, top_m: int
) -> tuple[np.ndarray, np.ndarray]:
    """(score per source code, number of tiles per source code) by the top-m mean method."""
    totals = np.zeros(n_sources, np.float64)
    counts = np.bincount(codes, minlength=n_sources) if len(codes) else np.zeros(n_sources, int)
    used = np.minimum(counts, top_m)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if n_sources else counts
    for q in queries:
        sims = np.empty(len(codes), np.float32)
        for lo in range(0, len(codes), _CHUNK):
            sims[lo : lo + _CHUNK] = vectors[lo : lo + _CHUNK] @ q
        order = np.lexsort((-sims, codes))  # by source, best first within a source
        rank = np.arange(len(order)) - starts[codes[order]]
        keep = order[rank < top_m]
        totals += np.bincount(codes[keep], weights=sims[keep], minlength=n_sources)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(used > 0, totals / np.maximum(used, 1), 0.0)
    return mean / max(len(queries), 1), counts


def rank_slides(
    service: SearchService,
    collection: str,
    *,
    vectors: np.ndarray | None = None,
    tile_id: int | None = None,
    source_id: str | None = None,
    k: int = 10,
    top_m: int = 5,
    filters: Sequence[str] | None = None,
    filter_json: Mapping[str, Any] | None = None,
    exclude_same: str | None = None,
    fingerprint: str | None = None,
    per_group: int = 3,
    max_queries: int = 64,
) -> SearchResult:
    """The k sources whose tiles best match the query (a vector, a stored tile or a whole slide).

    A ``source_id`` query uses up to ``max_queries`` of that slide's tiles and leaves the slide
    itself out of the ranking. ``exclude_same=COL`` leaves out sources sharing the query's COL.
    """
    view = service.view(collection)
    col = view.collection
    if fingerprint is not None:
        col.check_fingerprint(fingerprint)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise InvalidQueryError(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
    if not isinstance(top_m, int) or isinstance(top_m, bool) or not 1 <= top_m <= 1000:
        raise InvalidQueryError(f"top_m must be an integer between 1 and 1000, got {top_m!r}")
    given = sum(x is not None for x in (vectors, tile_id, source_id))
    if given != 1:
        raise InvalidQueryError("give exactly one of a vector, a tile_id or a source_id")
    query_row: dict[str, Any] | None = None
    if tile_id is not None:
        query_row = view.tile(int(tile_id))
        queries = view.tile_vectors([int(tile_id)])
    elif source_id is not None:
        view.source(source_id)
        ids = view.column(
            "SELECT tile_id FROM tiles WHERE source_id = ? ORDER BY tile_id", [source_id]
        ).astype(np.int64)
        if len(ids) == 0:
            raise InvalidQueryError(f"source {source_id!r} has no tiles")
        if len(ids) > max_queries:  # deterministic, evenly spaced subsample
            ids = ids[np.linspace(0, len(ids) - 1, max_queries).round().astype(int)]
        query_row = view.tile(int(ids[0]))
        queries = view.tile_vectors(ids.tolist())
    else:
        queries = np.asarray(vectors, dtype=np.float64)
        if queries.ndim not in (1, 2) or queries.shape[-1] != col.dim:
            raise InvalidQueryError(
                f"query vector has shape {queries.shape}; collection {col.name!r} has {col.dim} dims"
            )
    q = _unit(queries, col.dim)

    where, params = compile_conditions(parse_filters(filters, filter_json), view.schema)
    if source_id is not None:
        where, params = f"({where}) AND source_id <> ?", [*params, source_id]
    if exclude_same:
        if exclude_same not in view.schema:
            raise InvalidQueryError(f"exclude_same: unknown column {exclude_same!r}")
        if query_row is None:
            raise InvalidQueryError("exclude_same needs a stored query (tile_id or source_id)")
        value = query_row.get(exclude_same)
        if value is not None:
            where = f"({where}) AND {quote_ident(exclude_same)} IS DISTINCT FROM ?"
            params = [*params, value]
    allowed = (
        np.arange(view.n_tiles)
        if where == "TRUE"
        else np.sort(view.matching_positions(where, params))
    )
    codes_all, names = _source_codes(view)
    codes = codes_all[allowed]
    scores, counts = slide_scores(view.vectors[allowed], codes, len(names), q, top_m)
    present = np.flatnonzero(counts > 0)
    ranked = present[np.lexsort((present, -scores[present]))][:k]

    groups: list[Group] = []
    hits = []
    for code in ranked:
        pos = allowed[codes == code]
        sims = view.vectors[pos] @ q.T
        best = sims.max(axis=1)
        top = np.argsort(-best, kind="stable")[:per_group]
        tile_ids = view.index.tile_ids[pos[top]]
        rows = view.tile_rows(tile_ids.tolist())
        g_hits = [
            _hit(view, rows[int(t)], float(best[i])) for t, i in zip(tile_ids, top, strict=True)
        ]
        groups.append(
            Group(
                key="slide",
                value=names[code],
                score=round(float(scores[code]), 6),
                n_hits=int(counts[code]),
                hits=g_hits,
            )
        )
        hits.append(g_hits[0])
    query = {"level": "slide", "method": "top_m_mean", "top_m": top_m, "n_queries": len(q)}
    return SearchResult(
        collection=col.name,
        snapshot=view.snapshot.id,
        encoder=col.fingerprint,
        hits=hits,
        groups=groups,
        query=query,
    )
