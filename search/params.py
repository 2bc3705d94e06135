"""Search parameters: stored with a collection, overridable per request.

- ``nprobe``     IVF lists probed for an unfiltered query (default 16). A filtered query probes
                 lists in centroid order until it has seen as many *matching* candidates as the
                 unfiltered search would scan (``nprobe * n / nlist``), so breadth follows the
                 selectivity and the correlation of the filter with the clusters.
- ``ef_search``  HNSW beam width (default 64); scaled by 1/selectivity for filtered queries.
- ``refine``     candidates re-ranked exactly per hit for code-only indexes (PQ, SQ): k*refine.
- ``strategy``   ``auto`` (the planner decides), ``exact`` or ``ann`` (forced).
- ``exact_below`` a filter matching at most this many tiles is always ranked exactly (default
                 ``4 * nprobe * n / nlist``: scanning them all costs about what the ANN would;
                 a quarter of that for float16 collections).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lamina.search.errors import InvalidQueryError

DEFAULTS: dict[str, Any] = {
    "nprobe": 16,
    "ef_search": 64,
    "refine": 10,
    "strategy": "auto",
    "exact_below": None,
}
_INT_LIMITS = {
    "nprobe": (1, 1 << 20),
    "ef_search": (1, 1 << 16),
    "refine": (1, 1000),
    "exact_below": (0, 1 << 40),
}
STRATEGIES = ("auto", "exact", "ann")


def check_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validated copy of ``params``; unknown names and out-of-range values are refused."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise InvalidQueryError('params must be an object such as {"nprobe": 32}')
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name not in DEFAULTS:
            raise InvalidQueryError(
                f"unknown search parameter {name!r}; known: {', '.join(DEFAULTS)}"
            )
        if value is None:
            out[name] = None
        elif name == "strategy":
            if value not in STRATEGIES:
                raise InvalidQueryError(f"strategy must be one of {STRATEGIES}, not {value!r}")
            out[name] = value
        else:
            lo, hi = _INT_LIMITS[name]
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise InvalidQueryError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
            out[name] = value
    return out


def effective(stored: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults < the collection's stored parameters < the request's overrides."""
    out = dict(DEFAULTS)
    out.update({k: v for k, v in stored.items() if v is not None and k in DEFAULTS})
    out.update({k: v for k, v in check_params(override).items() if v is not None})
    return out
