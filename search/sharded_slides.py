"""Slide-level ranking over shards: the same answer as :func:`search.slide_ranking.rank_slides`.

Method (see ``search.slide_ranking`` for the score): every shard returns, for each source with
matching tiles on it, its matching-tile count, its ``top_m`` best scores per query vector and
its ``per_group`` best tiles (score = max over the query vectors). A source's tiles can lie on
several shards (the same bytes indexed from several files); the coordinator concatenates the
per-shard lists, keeps the ``top_m`` largest per query and averages them with the same function
as one process (:func:`search.slide_ranking.mean_of_top`, summing in descending order), so the
scores are bit-identical. Ranking is (score desc, source id asc); a slide's best tiles are
ordered by (score desc, snapshot position), as in one process. Candidates: every matching
slide, or -- with an ANN index and more than ``EXACT_BELOW`` matching tiles -- the sources of
the merged tile search's top ``fetch`` hits, scored exactly over all their matching tiles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lamina.search.cohorts import checked_conditions
from lamina.search.errors import InvalidQueryError, SourceNotFoundError
from lamina.search.filters import parse_filters, value_warnings
from lamina.search.params import effective
from lamina.search.results import MAX_K, SearchResult, hit_from_row, unit_queries
from lamina.search.slide_ranking import (
    EXACT_BELOW,
    exclusion,
    mean_of_top,
    slide_query,
    slide_result,
)

if TYPE_CHECKING:
    from lamina.search.sharded import ClusterView, ShardedSearchService


def _query_vectors(
    svc: ShardedSearchService,
    view: ClusterView,
    vectors: np.ndarray | None,
    tile_id: int | None,
    source_id: str | None,
    max_queries: int,
) -> tuple[np.ndarray, dict[str, Any] | None]:
    col = view.collection
    if tile_id is not None:
        return view.tile_vectors([int(tile_id)]), view.tile(int(tile_id))
    if source_id is not None:
        found, _ = svc.fan(view, "source_tiles", lambda i: (source_id,))
        if not any(known for known, _ in found.values()):
            raise SourceNotFoundError(f"source {source_id!r} is not in collection {col.name!r}")
        ids = np.sort(np.concatenate([t for _, t in found.values()]).astype(np.int64))
        if len(ids) == 0:
            raise InvalidQueryError(f"source {source_id!r} has no tiles")
        if len(ids) > max_queries:  # deterministic, evenly spaced subsample
            ids = ids[np.linspace(0, len(ids) - 1, max_queries).round().astype(int)]
        return view.tile_vectors(ids), view.tile(int(ids[0]))
    queries = np.asarray(vectors, dtype=np.float64)
    if queries.ndim not in (1, 2) or queries.shape[-1] != col.dim:
        raise InvalidQueryError(
            f"query vector has shape {queries.shape}; collection {col.name!r} has {col.dim} dims"
        )
    return queries, None


def rank_slides_sharded(
    svc: ShardedSearchService,
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
    partial: bool = False,
) -> SearchResult:
    """The k sources whose tiles best match the query; arguments as ``rank_slides``."""
    view = svc.view(collection)
    col = view.collection
    if fingerprint is not None:
        col.check_fingerprint(fingerprint)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise InvalidQueryError(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
    if not isinstance(top_m, int) or isinstance(top_m, bool) or not 1 <= top_m <= 1000:
        raise InvalidQueryError(f"top_m must be an integer between 1 and 1000, got {top_m!r}")
    if sum(x is not None for x in (vectors, tile_id, source_id)) != 1:
        raise InvalidQueryError("give exactly one of a vector, a tile_id or a source_id")
    p = effective(col.index_params, params)
    raw, query_row = _query_vectors(svc, view, vectors, tile_id, source_id, max_queries)
    q = unit_queries(np.asarray(raw).reshape(-1, col.dim), col.dim, col.name)
    conds = checked_conditions(view, parse_filters(filters, filter_json))  # type: ignore[arg-type]
    warnings = value_warnings(conds, view.schema, view.distinct_values)
    conds += exclusion(view, exclude_same, query_row)

    def gather(only: list[str] | None) -> tuple[dict[int, Any], list[int]]:
        return svc.fan(
            view, "slides", lambda i: (q, conds, top_m, per_group, only), partial=partial
        )

    counted, _ = svc.fan(view, "count", lambda i: (conds, source_id), partial=partial)
    matched = sum(a - b for a, b in counted.values())
    use_ann = view.has_ann and (
        p["strategy"] == "ann" or (p["strategy"] == "auto" and matched > EXACT_BELOW)
    )
    plan: dict[str, Any] = {}
    if use_ann:
        fetch = min(matched, max(20 * k * top_m, 1000))
        ranking = svc._rank(view, q, fetch, conds, params, partial)
        plan = ranking.plan
        cand = sorted({h.source_id for hits in ranking.hits for h in hits} - {source_id})
        found, missing = gather(cand)  # type: ignore[arg-type]
    else:
        found, missing = gather(None)
    merged = _merge(found, view, top_m, per_group, len(q))
    if source_id is not None:
        merged.pop(source_id, None)
    scored = sorted(((-m["score"], name) for name, m in merged.items() if np.isfinite(m["score"])))
    ranked = [name for _, name in scored[:k]]
    want = [int(t) for name in ranked for t in merged[name]["tiles"]]
    rows = view.tile_rows(want) if want else {}
    slides = []
    for name in ranked:
        m = merged[name]
        g_hits = [
            hit_from_row(view, rows[int(t)], float(s))  # type: ignore[arg-type]
            for t, s in zip(m["tiles"], m["scores"], strict=True)
        ]
        slides.append((name, float(m["score"]), int(m["count"]), g_hits))
    query = slide_query(top_m, len(q), use_ann, matched)
    return slide_result(view, slides, query, plan, missing, warnings)


def _merge(
    found: dict[int, Any], view: ClusterView, top_m: int, per_group: int, nq: int
) -> dict[str, dict[str, Any]]:
    """Per source: merged score, matching-tile count and best tiles (see the module doc)."""
    parts: dict[str, list[tuple[int, int]]] = {}
    for i in sorted(found):
        for j, name in enumerate(found[i]["names"]):
            parts.setdefault(name, []).append((i, j))
    if not parts:
        return {}
    names = list(parts)
    width = max(len(v) for v in parts.values()) * top_m
    tops = np.full((nq, len(names), width), -np.inf, np.float32)
    out: dict[str, dict[str, Any]] = {}
    for n_i, name in enumerate(names):
        cands: list[tuple[float, int, int, int]] = []
        count = 0
        for at, (i, j) in enumerate(parts[name]):
            a = found[i]
            tops[:, n_i, at * top_m : (at + 1) * top_m] = a["top"][:, j, :]
            count += int(a["counts"][j])
            for s, t, seg, row in zip(
                a["best"][j], a["best_ids"][j], a["best_seg"][j], a["best_row"][j], strict=True
            ):
                if t >= 0:
                    cands.append(
                        (-float(s), view.segment_index.get(seg, 1 << 30), int(row), int(t))
                    )
        cands.sort()
        chosen = cands[:per_group]
        out[name] = {
            "count": count,
            "tiles": [c[3] for c in chosen],
            "scores": [np.float32(-c[0]) for c in chosen],
        }
    scores = mean_of_top(tops, top_m).mean(axis=0)  # (nq, n) -> (n,)
    for n_i, name in enumerate(names):
        out[name]["score"] = float(scores[n_i])
    return out
