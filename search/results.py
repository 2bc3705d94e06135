"""What a search answers: hits, groups, results, rankings, and the checks every query passes.

Shared by the single-process service (``service``), slide ranking (``slide_ranking``) and the
sharded service (``sharded``, ``sharded_slides``), so each builds hits and validates queries
the same way.

Units and invariants: ``score`` is the inner product of unit vectors (cosine similarity, rounded
to 6 decimals); ``x``, ``y`` and ``size_px`` are level-0 pixels of the source, ``tile_px`` the
pixels the encoder saw, ``mpp`` microns per level-0 pixel. A page of results is a slice
``offset .. offset + k - 1`` of one top-``offset + k`` ranking, so ``offset + k <= MAX_K``.
Query vectors are scaled to unit length in float32 (:func:`unit_queries`); zero, NaN or
infinite vectors and a wrong dimension are refused (``InvalidQueryError``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lamina.search.errors import InvalidQueryError
from lamina.search.views import CollectionView

MAX_K = 10_000


@dataclass
class Hit:
    tile_id: int
    score: float
    source_id: str
    source: str
    x: int
    y: int
    size_px: int
    mpp: float | None
    metadata: dict[str, Any]
    level: int = 0
    tile_px: int | None = None
    kind: str = "photo"
    tissue_fraction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Group:
    """One group of a grouped answer: ``key`` the column (``slide`` for sources), ``value``
    its value (a source id for slides), ``score`` its best tile's score, ``n_hits`` its tiles
    matching the query's filters, ``hits`` up to ``per_group`` of its best tiles among those
    ranked (the first is its best), ``name`` (slides only) the source file as hits show it."""

    key: str
    value: Any
    score: float
    n_hits: int
    hits: list[Hit]
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "key": self.key,
            "value": self.value,
            "score": self.score,
            "n_hits": self.n_hits,
            "hits": [h.to_dict() for h in self.hits],
        }
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass
class SearchResult:
    collection: str
    snapshot: str
    encoder: str
    hits: list[Hit]
    groups: list[Group] | None = None
    query: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    missing_segments: list[str] = field(default_factory=list)
    """Damaged (quarantined) segments of the snapshot: the answer covers the others only."""
    missing_shards: list[int] = field(default_factory=list)
    """Shards that did not answer a ``partial=true`` sharded search (``search.sharded``)."""
    warnings: list[str] = field(default_factory=list)
    """Filter values matching no value of their column (``search.filters.value_warnings``)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": True,
            "collection": self.collection,
            "snapshot": self.snapshot,
            "encoder": self.encoder,
            "hits": [h.to_dict() for h in self.hits],
            "warnings": list(self.warnings),
        }
        if self.groups is not None:
            out["groups"] = [g.to_dict() for g in self.groups]
        if self.query:
            out["query"] = self.query
        if self.plan:
            out["plan"] = self.plan
        if self.missing_segments:
            out["missing_segments"] = self.missing_segments
            out["warning"] = (
                f"{len(self.missing_segments)} damaged segment(s) are quarantined and not "
                "searched; `lamina verify` lists them, `lamina repair` re-indexes their sources"
            )
        if self.missing_shards:
            out["partial"] = True
            out["missing_shards"] = self.missing_shards
        return out


@dataclass
class Ranking:
    """Top hits of each query row, the plan, the tiles matching the filter and the shards
    that did not answer (sharded partial answers only)."""

    hits: list[list[Hit]]
    plan: dict[str, Any]
    matched: int
    missing_shards: list[int] = field(default_factory=list)


def check_offset(offset: Any, k: int) -> None:
    """``offset`` (0-based rank of the first answer) is an integer >= 0 and ``offset + k``
    stays within :data:`MAX_K` (a page is a slice of one top-``offset + k`` ranking)."""
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InvalidQueryError(f"offset must be an integer >= 0, got {offset!r}")
    if offset + k > MAX_K:
        raise InvalidQueryError(
            f"offset + k must be at most {MAX_K} (got offset {offset} + k {k}): "
            "narrow the filter to reach later results"
        )


def unit_queries(q: np.ndarray, dim: int, name: str) -> np.ndarray:
    """Validate (n, dim) query vectors and scale them to unit length (float32)."""
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != dim:
        raise InvalidQueryError(
            f"query vector has {q.shape[-1]} dimensions; collection {name!r} has {dim}"
        )
    if not np.all(np.isfinite(q)):
        raise InvalidQueryError("query vector contains NaN or infinity")
    scale = np.abs(q).max(axis=1, keepdims=True)
    if np.any(scale == 0):
        raise InvalidQueryError("query vector is all zeros")
    q = q / scale
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def hit_from_row(view: CollectionView, row: dict[str, Any], score: float) -> Hit:
    """The hit of one tile row of ``view`` at ``score`` (NaN mpp/tissue share become None)."""
    mpp = row.get("mpp")
    tf = row.get("tissue_fraction")
    return Hit(
        tile_id=int(row["tile_id"]),
        score=round(score, 6),
        source_id=str(row["source_id"]),
        source=str(row["source"]),
        x=int(row["x"]),
        y=int(row["y"]),
        size_px=int(row["size_px"]),
        mpp=None if mpp is None or mpp != mpp else float(mpp),
        metadata=view.metadata_of(row),
        level=int(row.get("level") or 0),
        tile_px=None if row.get("tile_px") is None else int(row["tile_px"]),
        kind=str(row.get("kind") or "photo"),
        tissue_fraction=None if tf is None or tf != tf else round(float(tf), 4),
    )
