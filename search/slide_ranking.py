"""Slide-level retrieval: rank sources (slides, photos) by the evidence of their tiles.

Method ("top-m mean", in the spirit of RetCCL / SISH's slide aggregation): for every query
vector q_j (one for an image/tile/region query; up to ``max_queries`` tiles of a query slide)
and every candidate slide s, take the cosine similarities of q_j to the tiles of s that pass
the filters, keep the ``top_m`` largest and average them. A slide's score is the mean of those
per-query scores over the query vectors. A slide with one lucky outlier tile is outranked by a
slide whose tiles consistently resemble the query. Slides with fewer than ``top_m`` matching
tiles average over what they have. Ties go to the smaller source id.

Columnar evaluation: the matching positions are grouped by source code (``view.codes``) once
per view and filter (cached); groups of similar size share one padded (groups x length) index
matrix (lengths rounded up to a power of two, padding points at a -inf score), so the top-m of
every slide is one ``np.partition`` per size class. Scores are exact float32 inner products
from the memory-mapped vectors (:func:`search.cohorts.score_positions`).

Candidates: with no ANN index (or ``strategy=exact``, or at most :data:`EXACT_BELOW` matching
tiles) every matching tile is scored. Otherwise the planner's tile search (``fetch`` nearest
tiles per query) names the candidate slides and every matching tile of those slides is scored
exactly: the scores returned are always exact; a slide none of whose tiles reaches the tile
search's top ``fetch`` can be missed (the plan says so: ``query.candidates = "ann"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lamina.search import planner
from lamina.search.cohorts import checked_conditions, score_positions
from lamina.search.columns import column_by_name
from lamina.search.errors import InvalidQueryError
from lamina.search.filters import Condition, conditions_key, parse_filters, value_warnings
from lamina.search.params import effective
from lamina.search.results import MAX_K, Group, Hit, SearchResult, hit_from_row, unit_queries
from lamina.search.service import SearchService
from lamina.search.views import CollectionView

EXACT_BELOW = 200_000
NEG = np.float32(-np.inf)


@dataclass
class SlideGroups:
    """The matching positions of one (view, filter), grouped by source code."""

    names: list[str]  # source id by code
    name_rank: np.ndarray  # rank of each code's source id in sorted order (tie-break)
    positions: np.ndarray  # matching positions, grouped by code (ascending within a group)
    starts: np.ndarray  # per code: first index into ``positions``
    counts: np.ndarray  # per code: number of matching tiles
    sorted_order: np.ndarray | None  # ``positions`` order -> ascending order (None: identity)
    buckets: list[tuple[np.ndarray, np.ndarray]]  # (codes, (g, L) index matrix)


def _buckets(starts: np.ndarray, counts: np.ndarray, sentinel: int) -> list[tuple[Any, Any]]:
    """Index matrices over grouped scores, one per power-of-two size class; padding ->
    ``sentinel`` (the index of a -inf score)."""
    present = np.flatnonzero(counts > 0)
    if len(present) == 0:
        return []
    cls = np.ceil(np.log2(counts[present])).astype(np.int64)
    out = []
    for c in np.unique(cls):
        codes = present[cls == c]
        width = int(counts[codes].max())
        idx = starts[codes][:, None] + np.arange(width)[None, :]
        idx = np.where(np.arange(width)[None, :] < counts[codes][:, None], idx, sentinel)
        out.append((codes, idx.astype(np.intp)))
    return out


def slide_groups(view: CollectionView, conds: Sequence[Condition]) -> SlideGroups:
    """Matching positions grouped by source (cached per view and filter)."""
    cache = view.cache("slide_groups", limit=8)
    key = conditions_key(conds)
    hit = cache.get(key)
    if hit is not None:
        return hit
    codes_all, names = view.codes("source_id")
    allowed = view.matching_positions(conds).astype(np.int64)
    codes = codes_all[allowed]
    order = np.argsort(codes, kind="stable")
    positions = allowed[order]
    counts = np.bincount(codes, minlength=len(names)).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    identity = bool(np.all(order[1:] > order[:-1])) if len(order) else True
    rank = np.empty(len(names), np.int64)
    rank[np.argsort(np.asarray(names, dtype=object), kind="stable")] = np.arange(len(names))
    groups = SlideGroups(
        names=[str(n) for n in names],
        name_rank=rank,
        positions=positions,
        starts=starts,
        counts=counts,
        sorted_order=None if identity else np.argsort(positions, kind="stable"),
        buckets=_buckets(starts, counts, len(positions)),
    )
    cache[key] = groups
    return groups


def top_m_mean(
    sims: np.ndarray, buckets: list[tuple[np.ndarray, np.ndarray]], n_codes: int, top_m: int
) -> np.ndarray:
    """Per code: the mean over queries of the mean of its ``top_m`` best scores.

    ``sims`` is (n_queries, N + 1) with ``sims[:, N] == -inf`` (the padding target); codes
    not in any bucket score -inf."""
    out = np.full(n_codes, -np.inf, np.float64)
    for codes, idx in buckets:
        out[codes] = mean_of_top(sims[:, idx], top_m).mean(axis=0)  # (nq, g, L) -> (g,)
    return out


def top_values(vals: np.ndarray, top_m: int) -> np.ndarray:
    """The ``top_m`` largest values along the last axis, descending (-inf padded)."""
    width = vals.shape[-1]
    if width > top_m:
        vals = np.partition(vals, width - top_m, axis=-1)[..., width - top_m :]
    elif width < top_m:
        pad = np.full((*vals.shape[:-1], top_m - width), NEG, vals.dtype)
        vals = np.concatenate([vals, pad], axis=-1)
    return np.ascontiguousarray(np.sort(vals, axis=-1)[..., ::-1])


def mean_of_top(vals: np.ndarray, top_m: int) -> np.ndarray:
    """Mean of the ``top_m`` largest finite values along the last axis (float64). The values
    are summed in descending order, so any holder of the same values (a shard merge) gets the
    same bits."""
    top = top_values(vals, top_m)
    finite = np.isfinite(top)
    total = np.where(finite, top, 0).sum(axis=-1, dtype=np.float64)
    used = np.maximum(finite.sum(axis=-1), 1)
    return total / used  # type: ignore[no-any-return]


def _exact_all(
    view: CollectionView, g: SlideGroups, q: np.ndarray, top_m: int
) -> tuple[np.ndarray, np.ndarray]:
    """(score per code, grouped sims (nq, N + 1)) over every matching tile."""
    n = len(g.positions)
    asc = g.positions if g.sorted_order is None else g.positions[g.sorted_order]
    sims = np.empty((len(q), n + 1), np.float32)
    scored = score_positions(view, q, asc)
    if g.sorted_order is None:
        sims[:, :n] = scored
    else:
        sims[:, g.sorted_order] = scored
    sims[:, n] = NEG
    return top_m_mean(sims, g.buckets, len(g.names), top_m), sims


def _exact_codes(
    view: CollectionView, g: SlideGroups, q: np.ndarray, top_m: int, codes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact scores of the given codes only -> (scores per code, local sims, local starts)."""
    counts = np.zeros(len(g.names), np.int64)
    counts[codes] = g.counts[codes]
    local_starts = np.zeros(len(g.names), np.int64)
    local_starts[codes] = np.concatenate([[0], np.cumsum(g.counts[codes])[:-1]])
    pos = (
        np.concatenate([g.positions[g.starts[c] : g.starts[c] + g.counts[c]] for c in codes])
        if len(codes)
        else np.zeros(0, np.int64)
    )
    order = np.argsort(pos, kind="stable")
    sims = np.empty((len(q), len(pos) + 1), np.float32)
    sims[:, order] = score_positions(view, q, pos[order])
    sims[:, len(pos)] = NEG
    scores = top_m_mean(sims, _buckets(local_starts, counts, len(pos)), len(g.names), top_m)
    return scores, sims, local_starts, pos


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
    params: Mapping[str, Any] | None = None,
) -> SearchResult:
    """The k sources whose tiles best match the query (a vector, a stored tile or a whole slide).

    A ``source_id`` query uses up to ``max_queries`` of that slide's tiles and leaves the slide
    itself out of the ranking. ``exclude_same=COL`` leaves out tiles sharing the query's COL.
    ``params`` are the search parameters (``strategy=exact`` scores every matching tile).
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
    p = effective(col.index_params, params)
    query_row: dict[str, Any] | None = None
    if tile_id is not None:
        query_row = view.tile(int(tile_id))
        queries = view.tile_vectors([int(tile_id)])
    elif source_id is not None:
        view.source(source_id)
        codes_all, names = view.codes("source_id")
        pos = np.flatnonzero(codes_all == names.index(source_id))
        if len(pos) == 0:
            raise InvalidQueryError(f"source {source_id!r} has no tiles")
        ids = np.sort(view.tile_ids_at(pos))
        if len(ids) > max_queries:  # deterministic, evenly spaced subsample
            ids = ids[np.linspace(0, len(ids) - 1, max_queries).round().astype(int)]
        query_row = view.tile(int(ids[0]))
        queries = view.tile_vectors(ids)
    else:
        queries = np.asarray(vectors, dtype=np.float64)
        if queries.ndim not in (1, 2) or queries.shape[-1] != col.dim:
            raise InvalidQueryError(
                f"query vector has shape {queries.shape}; collection {col.name!r} has {col.dim} dims"
            )
    q = unit_queries(np.asarray(queries).reshape(-1, col.dim), col.dim, col.name)

    conds = checked_conditions(view, parse_filters(filters, filter_json))
    warnings = value_warnings(conds, view.schema, view.distinct_values)
    conds += exclusion(view, exclude_same, query_row)
    g = slide_groups(view, conds)
    excluded = g.names.index(source_id) if source_id is not None else -1
    matched = len(g.positions) - (int(g.counts[excluded]) if excluded >= 0 else 0)
    use_ann = view.ann is not None and (
        p["strategy"] == "ann" or (p["strategy"] == "auto" and matched > EXACT_BELOW)
    )
    plan: dict[str, Any] = {}
    if use_ann:
        fetch = min(matched, max(20 * k * top_m, 1000))
        ranked_tiles, tile_plan = planner.search(view, q, fetch, conds, params)
        plan = tile_plan.to_dict()
        codes_all, _ = view.codes("source_id")
        hits = np.concatenate([r.positions for r in ranked_tiles])
        cand = np.unique(codes_all[hits]) if len(hits) else np.zeros(0, np.int64)
        cand = cand[cand != excluded]
        scores, sims, starts, pos = _exact_codes(view, g, q, top_m, cand)
    else:
        scores, sims = _exact_all(view, g, q, top_m)
        starts, pos = g.starts, g.positions
    if excluded >= 0:
        scores[excluded] = -np.inf
    present = np.flatnonzero(np.isfinite(scores))
    ranked = present[np.lexsort((g.name_rank[present], -scores[present]))][:k]

    best_tiles: list[np.ndarray] = []
    best_scores: list[np.ndarray] = []
    for code in ranked:
        lo, n = int(starts[code]), int(g.counts[code])
        best = sims[:, lo : lo + n].max(axis=0)
        top = np.argsort(-best, kind="stable")[:per_group]
        best_tiles.append(pos[lo + top])
        best_scores.append(best[top])
    rows = view.rows_at(np.concatenate(best_tiles)) if best_tiles else []
    slides = []
    at = 0
    for code, tiles, sc in zip(ranked, best_tiles, best_scores, strict=True):
        g_hits = [hit_from_row(view, rows[at + i], float(s)) for i, s in enumerate(sc)]
        at += len(tiles)
        slides.append((g.names[code], float(scores[code]), int(g.counts[code]), g_hits))
    query = slide_query(top_m, len(q), use_ann, matched)
    return slide_result(view, slides, query, plan, warnings=warnings)


def exclusion(view: Any, exclude_same: str | None, query_row: Any) -> list[Condition]:
    """The condition leaving out tiles that share the query's value of ``exclude_same`` (a
    column, or a role such as ``patient``: :func:`search.columns.column_by_name`)."""
    if not exclude_same:
        return []
    column = column_by_name(view, exclude_same, "exclude_same")
    if query_row is None:
        raise InvalidQueryError("exclude_same needs a stored query (tile_id or source_id)")
    value = query_row.get(column)
    return [] if value is None else [Condition(column, "ne", (value,))]


def slide_query(top_m: int, n_queries: int, use_ann: bool, matched: int) -> dict[str, Any]:
    """The ``query`` block of a slide-level answer."""
    return {
        "level": "slide",
        "method": "top_m_mean",
        "top_m": top_m,
        "n_queries": n_queries,
        "candidates": "ann" if use_ann else "all",
        "matched": matched,
    }


def slide_result(
    view: Any,
    slides: Sequence[tuple[str, float, int, list[Hit]]],
    query: dict[str, Any],
    plan: dict[str, Any],
    missing_shards: list[int] | None = None,
    warnings: list[str] | None = None,
) -> SearchResult:
    """A slide-level answer: one group per ranked slide (source id, score, matching tiles, its
    best tiles, its file as ``name``), and each slide's best tile as the hit list."""
    col = view.collection
    groups = [
        Group(
            key="slide",
            value=name,
            score=round(score, 6),
            n_hits=count,
            hits=hits,
            name=hits[0].source if hits else None,
        )
        for name, score, count, hits in slides
    ]
    return SearchResult(
        collection=col.name,
        snapshot=view.snapshot.id,
        encoder=col.fingerprint,
        hits=[g.hits[0] for g in groups],
        groups=groups,
        query=query,
        plan=plan,
        missing_segments=view.missing_segments,
        missing_shards=list(missing_shards or []),
        warnings=list(warnings or []),
    )
