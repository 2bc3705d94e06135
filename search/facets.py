"""Facets: a collection's filterable metadata columns, with their values and counts.

Method: one pass per column over the view's tiles (DuckDB over the segments' Arrow tables,
``view.sql``). A numeric column (``filters.NUMERIC_TYPES``) is described by ``min``, ``max``,
``count`` (non-null tiles) and ``n_distinct`` (distinct non-null values); any other column by
its ``count``, ``n_distinct`` and its ``top`` values with their tile counts -- at most
``max_values`` of them, most frequent first, ties by value -- and ``truncated`` when more
values exist than are listed. ``n_null`` counts tiles without a value. Counts are tiles of
the view's snapshot, never sources. Only metadata columns are listed (the manifest's
columns, never core columns such as paths): every column listed is a valid filter column.

The answer is cached per view (a snapshot) and ``max_values``; it names the snapshot.
"""

from __future__ import annotations

from typing import Any

from lamina.search.filters import NUMERIC_TYPES, quote_ident
from lamina.search.views import CollectionView, _jsonable

MAX_VALUES = 20
MAX_VALUES_LIMIT = 200


def _numeric(view: CollectionView, name: str) -> dict[str, Any]:
    q = quote_ident(name)
    row = view.sql(
        f"SELECT min({q}) AS lo, max({q}) AS hi, count({q}) AS n, count(DISTINCT {q}) AS d "
        "FROM tiles"
    )[0]
    return {
        "min": _jsonable(row["lo"]),
        "max": _jsonable(row["hi"]),
        "count": int(row["n"]),
        "n_distinct": int(row["d"]),
    }


def _text(view: CollectionView, name: str, max_values: int) -> dict[str, Any]:
    q = quote_ident(name)
    head = view.sql(f"SELECT count({q}) AS n, count(DISTINCT {q}) AS d FROM tiles")[0]
    top = view.sql(
        f"SELECT CAST({q} AS VARCHAR) AS value, count(*) AS n FROM tiles "
        f"WHERE {q} IS NOT NULL GROUP BY 1 ORDER BY n DESC, value LIMIT ?",
        [max_values],
    )
    n_distinct = int(head["d"])
    return {
        "count": int(head["n"]),
        "n_distinct": n_distinct,
        "top": [{"value": r["value"], "n": int(r["n"])} for r in top],
        "truncated": n_distinct > len(top),
    }


def collection_facets(view: CollectionView, max_values: int = MAX_VALUES) -> dict[str, Any]:
    """``{"snapshot", "n_tiles", "columns": [{"name", "type", "kind", ...}]}`` (see module)."""
    if isinstance(max_values, bool) or not isinstance(max_values, int):
        raise TypeError("max_values must be an integer")
    max_values = max(1, min(int(max_values), MAX_VALUES_LIMIT))
    cache = view.cache("facets", limit=4)
    hit = cache.get(max_values)
    if hit is not None:
        return dict(hit)
    total = int(view.n_tiles)
    columns = []
    for name in view.metadata_columns:
        sql_type = view.schema[name]
        numeric = sql_type.split("(")[0] in NUMERIC_TYPES
        doc: dict[str, Any] = {"name": name, "type": sql_type}
        doc["kind"] = "numeric" if numeric else "text"
        doc.update(_numeric(view, name) if numeric else _text(view, name, max_values))
        doc["n_null"] = total - doc["count"]
        columns.append(doc)
    out = {"snapshot": view.snapshot.id, "n_tiles": total, "columns": columns}
    cache[max_values] = out
    return dict(out)
