"""Arrow tables of segment rows: building them from row dicts and concatenating parts whose
metadata columns differ (core columns typed as given, first; other columns unified)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


def rows_table(rows: list[dict[str, Any]], core: dict[str, pa.DataType]) -> pa.Table:
    """Build a table with typed core columns first and metadata columns (inferred) after."""
    names = list(core)
    extra: list[str] = []
    for r in rows:
        for k in r:
            if k not in core and k not in extra:
                extra.append(k)
    arrays = [pa.array([r.get(n) for r in rows], type=core[n]) for n in names]
    for n in extra:
        values = [r.get(n) for r in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays.append(pa.array([None if v is None else str(v) for v in values], pa.string()))
    return pa.Table.from_arrays(arrays, names=names + extra)


def common_type(types: list[pa.DataType]) -> pa.DataType:
    """One type for a column typed differently in different parts (as views unify them):
    integers -> int64, integers and floats -> float64, anything else -> string."""
    known = [t for t in types if not pa.types.is_null(t)]
    if not known:
        return pa.null()
    if all(t == known[0] for t in known):
        return known[0]
    if all(pa.types.is_integer(t) for t in known):
        return pa.int64()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in known):
        return pa.float64()
    return pa.string()


def concat_tables(parts: list[pa.Table], core: dict[str, pa.DataType]) -> pa.Table:
    """Concatenate tables (in order) whose metadata columns may differ: core columns typed as
    ``core``, first, then every other column in order of appearance (absent -> null, types
    unified by :func:`common_type`).

    Parts are conformed once per distinct schema (thousands of small parts usually share a few
    schemas), then put back in their order with one ``take`` when schemas interleave.
    """
    groups: dict[pa.Schema, list[int]] = {}
    for i, t in enumerate(parts):
        groups.setdefault(t.schema, []).append(i)
    names = list(core)
    types: dict[str, list[pa.DataType]] = {}
    for schema in groups:
        for f in schema:
            if f.name not in core and f.name not in types:
                names.append(f.name)
            types.setdefault(f.name, []).append(f.type)
    target = {n: core.get(n) or common_type(types[n]) for n in names}
    starts = np.concatenate([[0], np.cumsum([t.num_rows for t in parts])]).astype(np.int64)
    conformed, positions = [], []
    for idx in groups.values():
        conformed.append(_conform(pa.concat_tables([parts[i] for i in idx]), names, target))
        positions.append(np.concatenate([np.arange(starts[i], starts[i + 1]) for i in idx]))
    out = pa.concat_tables(conformed) if conformed else _conform(pa.table({}), names, target)
    pos = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    if not np.array_equal(pos, np.arange(len(pos))):
        out = out.take(pa.array(np.argsort(pos, kind="stable")))
    return out.combine_chunks()


def _conform(table: pa.Table, names: list[str], target: dict[str, pa.DataType]) -> pa.Table:
    """``table`` with exactly the columns ``names``, typed as ``target`` (absent -> nulls)."""
    arrays = []
    for n in names:
        typ = target[n]
        if n not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, typ))
            continue
        col = table.column(n).combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if col.type != typ:
            col = (
                pa.array([None if v is None else str(v) for v in col.to_pylist()], typ)
                if pa.types.is_string(typ)
                else col.cast(typ)
            )
        arrays.append(col)
    return pa.Table.from_arrays(arrays, names=names)
