"""The query planner: filter column-wise, choose exact or ANN by selectivity, rank, merge.

For a batch of unit query vectors, k and a list of filter conditions:

1. **Filter.** Each segment evaluates the conditions on its Arrow columns (masks cached per
   segment and condition set); ``matched`` is the number of passing tiles.
2. **Plan.** ``exact`` when the collection has no ANN index, the request forces it, or the
   filter leaves at most ``exact_below`` tiles in the indexed segments (ranking them all costs
   about what the ANN would; a quarter of that for float16 vectors, whose conversion to float32
   dominates an exact scan). Otherwise ``ann``: IVF families (own IVF lists, or a FAISS IVF
   code index such as IVF-PQ) probe lists in centroid order -- ``nprobe`` lists unfiltered;
   filtered, only lists holding a matching tile, until as many *matching* candidates were seen
   as an unfiltered search scans (so breadth follows selectivity and correlation). A FAISS IVF
   code index is searched on exactly those lists (``search_preassigned``, the filter as a
   bitmap) for ``k * refine`` candidates; other code indexes (HNSW, or IVF behind a transform)
   search with the filter as a bitmap and ``nprobe`` / ``ef_search`` scaled by 1/selectivity.
   Segments not (yet) indexed are always
   ranked exactly, so a stale index never hides new data.
3. **Rank.** Every candidate is scored exactly (float32 inner product with the segment's
   vectors, float16 storage converted to float32) and the per-segment top-k are merged; ties go
   to the lower tile id. If the ANN yields fewer than ``min(k, matched)`` hits the query is
   re-run exactly, so k hits come back whenever k tiles match.

The returned :class:`Plan` is reported in every answer (strategy, breadth, candidates scanned,
milliseconds per stage), like EXPLAIN ANALYZE.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import faiss
import numpy as np

from lamina.search.ann import AnnIndex, SegmentANN
from lamina.search.filters import Condition
from lamina.search.params import effective
from lamina.search.scan import Backend, default_backend
from lamina.search.views import CollectionView


@dataclass
class Plan:
    strategy: str = "exact"
    index: str = "Flat"
    reason: str = ""
    matched: int = 0
    total: int = 0
    selectivity: float = 1.0
    nprobe: int | None = None
    ef_search: int | None = None
    candidates: int = 0
    segments_indexed: int = 0
    segments_exact: int = 0
    fallback: bool = False
    backend: str = "numpy"
    ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in _PLAN_FIELDS}
        out["ms"] = {k: round(v, 3) for k, v in self.ms.items()}
        out["selectivity"] = round(self.selectivity, 6)
        return {k: v for k, v in out.items() if v is not None}


_PLAN_FIELDS = fields(Plan)


@dataclass
class Ranked:
    """Top-k of one query: exact scores (descending) and global positions."""

    scores: np.ndarray
    positions: np.ndarray


def search(
    view: CollectionView,
    queries: np.ndarray,
    k: int,
    conds: Sequence[Condition] = (),
    params: Mapping[str, Any] | None = None,
    backend: Backend | None = None,
) -> tuple[list[Ranked], Plan]:
    """Rank the view's tiles for each query row (unit float32 vectors). See the module doc."""
    backend = backend or default_backend()
    p = effective(view.collection.index_params, params)
    t0 = time.perf_counter()
    masks = view.segment_masks(conds)
    key = view.mask_key(conds)
    counts = (
        [int(np.count_nonzero(m)) for m in masks]
        if masks is not None
        else [r.n for r in view.readers]
    )
    matched = sum(counts)
    plan = Plan(
        index=view.collection.index_factory,
        matched=matched,
        total=view.n_tiles,
        selectivity=matched / view.n_tiles if view.n_tiles else 0.0,
        backend=backend.name,
    )
    t1 = time.perf_counter()
    plan.ms["filter"] = (t1 - t0) * 1000
    nq = len(queries)
    if matched == 0:
        plan.reason = "no tile matches the filter"
        return [Ranked(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in range(nq)], plan
    k = min(k, matched)
    ann = view.ann
    parts = [ann.segment(r.segment_id) if ann is not None else None for r in view.readers]
    covered_matched = sum(c for c, part in zip(counts, parts, strict=True) if part is not None)
    covered_total = sum(r.n for r, part in zip(view.readers, parts, strict=True) if part)
    float16 = bool(view.readers) and view.readers[0].vectors.dtype == np.float16
    strategy, plan.reason = _choose(ann, p, covered_matched, covered_total, k, float16)
    plan.strategy = strategy
    probes: list[np.ndarray] = []
    if strategy == "ann" and ann is not None and ann.centroids is not None:
        list_counts = None
        if masks is not None:
            list_counts = _list_counts(view, ann, key, masks, parts)
        top = None if list_counts is not None else p["nprobe"]
        orders = ann.probe_orders(queries, top)
        probes = [
            _probe_lists(ann, o, list_counts, p, covered_total, covered_matched) for o in orders
        ]
        plan.nprobe = max(len(x) for x in probes)
    per_query: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(nq)]
    for i, reader in enumerate(view.readers):
        mask = masks[i] if masks is not None else None
        if counts[i] == 0:
            continue
        part = parts[i] if strategy == "ann" else None
        if part is None:
            plan.segments_exact += 1
            found = backend.exact(reader, queries, k, mask)
            plan.candidates += counts[i] * nq
        else:
            plan.segments_indexed += 1
            assert ann is not None
            found = _ann_segment(
                view, ann, part, i, queries, k, mask, key, p, plan, probes, backend
            )
        for j, (scores, rows) in enumerate(found):
            per_query[j].append((scores, rows + view.offsets[i]))
    t2 = time.perf_counter()
    plan.ms["search"] = (t2 - t1) * 1000
    out = [_merge(view, parts_q, k) for parts_q in per_query]
    if strategy == "ann" and any(len(r.scores) < k for r in out):
        plan.fallback = True
        plan.reason += "; ANN returned fewer than k matching hits, re-ranked exactly"
        exact = [backend.exact(r, queries, k, m) for r, m in _seg_iter(view, masks)]
        out = []
        for j in range(nq):
            merged = [(found[j][0], found[j][1] + view.offsets[i]) for i, found in exact if found]
            out.append(_merge(view, merged, k))
    plan.ms["merge"] = (time.perf_counter() - t2) * 1000
    return out, plan


def _seg_iter(
    view: CollectionView, masks: list[np.ndarray] | None
) -> list[tuple[Any, np.ndarray | None]]:
    return [(r, None if masks is None else masks[i]) for i, r in enumerate(view.readers)]


def _choose(
    ann: AnnIndex | None,
    p: Mapping[str, Any],
    covered_matched: int,
    covered_total: int,
    k: int,
    float16: bool = False,
) -> tuple[str, str]:
    if ann is None:
        return "exact", "no ANN index (Flat, or not built yet)"
    if p["strategy"] == "exact":
        return "exact", "strategy=exact requested"
    if covered_total == 0:
        return "exact", "no segment is indexed yet"
    if p["strategy"] == "ann":
        return "ann", "strategy=ann requested"
    limit = p["exact_below"]
    if limit is None:
        if ann.spec.kind == "ivf" or ann.spec.nlist:
            limit = 4 * p["nprobe"] * covered_total // max(ann.spec.nlist, 1)
        else:
            limit = 4 * max(p["ef_search"], k * p["refine"])
        if float16:  # converting float16 rows to float32 costs ~4x the float32 scan per row
            limit //= 4
    if covered_matched <= limit:
        return "exact", f"{covered_matched} matching tiles <= exact_below {limit}"
    return "ann", f"{covered_matched} matching tiles > exact_below {limit}"


def _ann_segment(
    view: CollectionView,
    ann: AnnIndex,
    part: SegmentANN,
    i: int,
    queries: np.ndarray,
    k: int,
    mask: np.ndarray | None,
    key: str | None,
    p: Mapping[str, Any],
    plan: Plan,
    probes: list[np.ndarray],
    backend: Backend,
) -> list[tuple[np.ndarray, np.ndarray]]:
    reader = view.readers[i]
    if ann.spec.kind == "ivf":
        order, offsets = part.lists(key, mask)
        out = []
        for q, lists in zip(queries, probes, strict=True):
            starts, ends = offsets[lists], offsets[lists + 1]
            lens = ends - starts
            total = int(lens.sum())
            plan.candidates += total
            if total == 0:
                out.append((np.zeros(0, np.float32), np.zeros(0, np.int64)))
                continue
            idx = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
            rows = order[idx + np.arange(total)]
            if not part.contiguous:
                rows = np.sort(rows)  # scattered rows: read in file order
            out.append(backend.rows(reader, rows, q, k))
        return out
    sel_bits = None
    if mask is not None:
        sel_bits = np.packbits(mask, bitorder="little")
    if part.ivf is not None and probes:
        return _ivf_codes(ann, part, reader, queries, k, sel_bits, p, plan, probes, backend)
    frac = max(plan.selectivity, 1e-9)
    kk = min(reader.n, max(k * p["refine"], k))
    nprobe = min(max(ann.spec.nlist, 1), int(np.ceil(p["nprobe"] / frac)))
    ef = min(1 << 16, int(np.ceil(max(p["ef_search"], kk) / frac)))
    params = _faiss_params(part.index, sel_bits, nprobe, ef)
    if ann.spec.nlist:
        plan.nprobe = nprobe
    else:
        plan.ef_search = ef
    q = np.ascontiguousarray(queries, dtype=np.float32)
    assert part.index is not None
    _, labels = part.index.search(q, kk, params=params)
    return _rerank(reader, q, labels, k, plan, backend)


def _ivf_codes(
    ann: AnnIndex,
    part: SegmentANN,
    reader: Any,
    queries: np.ndarray,
    k: int,
    sel_bits: np.ndarray | None,
    p: Mapping[str, Any],
    plan: Plan,
    probes: list[np.ndarray],
    backend: Backend,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A FAISS IVF code index searched on the lists the planner chose (``search_preassigned``;
    the filter as a bitmap), ``k * refine`` candidates re-ranked exactly."""
    assert ann.centroids is not None
    q = np.ascontiguousarray(queries, dtype=np.float32)
    width = max(len(x) for x in probes)
    lists = np.full((len(q), width), -1, np.int64)  # -1: no list (FAISS skips it)
    dis = np.zeros((len(q), width), np.float32)
    for j, chosen in enumerate(probes):
        lists[j, : len(chosen)] = chosen
        dis[j, : len(chosen)] = ann.centroids[chosen] @ q[j]
    kk = min(reader.n, max(k * p["refine"], k))
    params = _faiss_params(part.ivf, sel_bits, width, 0)
    vals = np.empty((len(q), kk), np.float32)
    labels = np.empty((len(q), kk), np.int64)
    part.ivf.search_preassigned_c(
        len(q),
        faiss.swig_ptr(q),
        kk,
        faiss.swig_ptr(lists),
        faiss.swig_ptr(dis),
        faiss.swig_ptr(vals),
        faiss.swig_ptr(labels),
        False,
        params,
    )
    return _rerank(reader, q, labels, k, plan, backend)


def _rerank(
    reader: Any, q: np.ndarray, labels: np.ndarray, k: int, plan: Plan, backend: Backend
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact top-k of each query among the rows a code index returned (-1: none)."""
    out = []
    for j in range(len(q)):
        rows = labels[j][labels[j] >= 0]
        plan.candidates += len(rows)
        out.append(backend.rows(reader, np.sort(rows), q[j], k))
    return out


def _probe_lists(
    ann: AnnIndex,
    order: np.ndarray,
    counts: np.ndarray | None,
    p: Mapping[str, Any],
    covered_total: int,
    covered_matched: int,
) -> np.ndarray:
    """IVF lists to probe for one query: ``nprobe`` unfiltered; filtered, lists in centroid
    order until the matching candidates reach what an unfiltered search would scan."""
    nprobe = min(p["nprobe"], len(order))
    if counts is None:
        return order[:nprobe]
    order = order[counts[order] > 0]  # lists without a matching tile cost a scan for nothing
    target = max(p["nprobe"] * covered_total / max(ann.spec.nlist, 1), 1.0)
    target = min(target, covered_matched)
    cum = np.cumsum(counts[order])
    n = int(np.searchsorted(cum, target)) + 1
    return order[: max(nprobe, min(n, len(order)))]


def _list_counts(
    view: CollectionView,
    ann: AnnIndex,
    key: str | None,
    masks: list[np.ndarray],
    parts: list[SegmentANN | None],
) -> np.ndarray:
    """Matching tiles per IVF list over the view's indexed segments (cached per view+filter)."""
    cache = view.cache("list_counts")
    hit = cache.get(key)
    if hit is not None:
        return hit
    total = np.zeros(ann.spec.nlist, np.int64)
    for part, m in zip(parts, masks, strict=True):
        if part is not None:
            total += part.list_counts(key, m)
    cache[key] = total
    return total


def _faiss_params(index: Any, sel_bits: np.ndarray | None, nprobe: int, ef: int) -> Any:
    sel = None
    if sel_bits is not None:
        sel = faiss.IDSelectorBitmap(len(sel_bits) * 8, faiss.swig_ptr(sel_bits))
    real = faiss.downcast_index(index)
    params: Any
    if isinstance(real, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
    elif isinstance(real, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch = ef
    else:
        params = faiss.SearchParameters()
    if sel is not None:
        params.sel = sel
        params._keep = (sel, sel_bits)  # the selector reads this buffer during the search
    return params


def _merge(view: CollectionView, parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> Ranked:
    if not parts:
        return Ranked(np.zeros(0, np.float32), np.zeros(0, np.int64))
    scores = np.concatenate([s for s, _ in parts]).astype(np.float32)
    pos = np.concatenate([r for _, r in parts]).astype(np.int64)
    if len(scores) > k:
        cut = np.argpartition(-scores, k - 1)[:k]
        kth = scores[cut].min()
        keep = np.flatnonzero(scores >= kth)  # keep ties at the boundary for the tile-id rule
        scores, pos = scores[keep], pos[keep]
    ids = view.tile_ids_at(pos)
    order = np.lexsort((ids, -scores))[:k]
    return Ranked(scores[order], pos[order])
