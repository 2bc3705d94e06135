"""Metadata filters: the CLI's EXPR strings and the API's JSON form, compiled to parameterised SQL.

Values never reach the SQL text: they are bound as parameters. Column names are checked
against the collection's schema and then quoted, so user input cannot change the query.

EXPR: ``COL=V1[,V2...]``, ``COL!=V1[,V2...]``, ``COL~=V1[,V2...]``, ``COL>=N``, ``COL<=N``,
``COL>N``, ``COL<N``
JSON: ``{"label": {"in": ["MEL", "BCC"]}, "age": {"gte": 50}, "site": {"ne": "A"}, "x": "v"}``

Text matching: ``=`` / ``in`` / ``eq`` are exact (case and accents count); ``~=`` (JSON
``iin``, a list or one value) matches text case-insensitively (Unicode lower case of both
sides); on a numeric or boolean column it is ``=``. :func:`value_warnings` names the values of
``=``, ``!=`` and ``~=`` conditions that match no value of their column, with the column's
values that differ only in case.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lamina.search.errors import FilterError

OPERATORS = ("eq", "ne", "in", "nin", "iin", "gt", "gte", "lt", "lte")
LIST_OPERATORS = ("in", "nin", "iin")
_SQL_OP = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_EXPR_RE = re.compile(r"^\s*([^!<>=~]+?)\s*(!=|~=|>=|<=|=|>|<)(.*)$", re.S)
_EXPR_OP = {"=": "in", "!=": "nin", "~=": "iin", ">=": "gte", "<=": "lte", ">": "gt", "<": "lt"}
NUMERIC_TYPES = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "FLOAT",
    "DOUBLE",
    "DECIMAL",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "REAL",
)

FLOAT_TYPES = ("FLOAT", "DOUBLE", "REAL", "DECIMAL")
INT64_MAX = 2**63 - 1
MAX_JSON_CONDITIONS = 64
MAX_IN_VALUES = 10_000


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    values: tuple[Any, ...]


def _split_values(text: str) -> list[str]:
    """Split on commas not escaped with a backslash."""
    parts, cur, esc = [], [], False
    for ch in text:
        if esc:
            cur.append(ch)
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == ",":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def parse_expr(expr: str) -> Condition:
    """Parse one CLI filter expression."""
    m = _EXPR_RE.match(expr)
    if not m:
        raise FilterError(
            f"cannot parse filter {expr!r}: expected COL=V1[,V2], COL!=V, COL~=V (any case), "
            "COL>=N, COL<=N, COL>N or COL<N"
        )
    col, sym, raw = m.group(1).strip(), m.group(2), m.group(3).strip()
    if sym == "=" and raw.startswith("="):  # COL==V (as in SQL or pandas) means COL=V
        raw = raw[1:].strip()
    if not col:
        raise FilterError(f"filter {expr!r} names no column")
    if raw == "":
        raise FilterError(f"filter {expr!r} has no value")
    op = _EXPR_OP[sym]
    values = tuple(_split_values(raw)) if op in LIST_OPERATORS else (raw,)
    if len(values) > MAX_IN_VALUES:
        raise FilterError(
            f"filter on {col!r} lists {len(values)} values; the limit is {MAX_IN_VALUES}"
        )
    return Condition(col, op, values)


def parse_json(spec: Mapping[str, Any]) -> list[Condition]:
    """Parse the JSON filter form (``{"col": {"op": value}}`` or ``{"col": value}``)."""
    if not isinstance(spec, Mapping):
        raise FilterError("filter must be a JSON object mapping column names to conditions")
    if len(spec) > MAX_JSON_CONDITIONS:
        raise FilterError(f"filter has {len(spec)} columns; the limit is {MAX_JSON_CONDITIONS}")
    out: list[Condition] = []
    for col, cond in spec.items():
        if not isinstance(col, str) or not col:
            raise FilterError("filter column names must be non-empty strings")
        if not isinstance(cond, Mapping):
            cond = {"in" if isinstance(cond, list) else "eq": cond}
        if not cond:
            raise FilterError(f"filter on {col!r} has no operator")
        for op, value in cond.items():
            if op not in OPERATORS:
                raise FilterError(
                    f"unknown filter operator {op!r} on {col!r}; use one of {OPERATORS}"
                )
            if op == "iin" and not isinstance(value, list | tuple | Mapping):
                value = [value]
            if op in LIST_OPERATORS:
                if not isinstance(value, list | tuple):
                    raise FilterError(f"{col}.{op} needs a list of values")
                if len(value) > MAX_IN_VALUES:
                    raise FilterError(
                        f"{col}.{op} lists {len(value)} values; the limit is {MAX_IN_VALUES}"
                    )
                vals = tuple(value)
            else:
                if isinstance(value, list | tuple | Mapping):
                    raise FilterError(f"{col}.{op} needs a single value")
                vals = (value,)
            out.append(Condition(col, op, vals))
    return out


def parse_filters(
    exprs: Iterable[str] | None = None, spec: Mapping[str, Any] | None = None
) -> list[Condition]:
    conds = [parse_expr(e) for e in (exprs or [])]
    if spec:
        conds.extend(parse_json(spec))
    return conds


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _coerce_number(value: Any, base: str, cond: Condition) -> int | float:
    """A filter value on a numeric column: a finite float, or an integer within int64 for an
    integer column (columns compare as int64 or float64); anything else is a FilterError."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FilterError(f"column {cond.column!r} is numeric; got {_short(value)}")
    num: int | float
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 64:
            raise FilterError(f"column {cond.column!r} is numeric; {_short(value)} is too long")
        try:
            num = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
        except ValueError:
            raise FilterError(
                f"column {cond.column!r} is numeric; {_short(value)} is not a number"
            ) from None
    else:
        num = value
    if isinstance(num, float):
        if not math.isfinite(num):
            raise FilterError(
                f"column {cond.column!r} is numeric; {_short(value)} is not a finite number"
            )
        if num.is_integer() and base not in FLOAT_TYPES and abs(num) <= 2**63:
            num = int(num)
    elif base in FLOAT_TYPES:
        try:
            return float(num)
        except OverflowError:
            raise FilterError(
                f"filter value {_short(num)} on column {cond.column!r} is outside the float range"
            ) from None
    if (
        isinstance(num, int)
        and not -INT64_MAX - 1 <= num <= INT64_MAX
        or (isinstance(num, float) and base not in FLOAT_TYPES and abs(num) > 2**63)
    ):
        raise FilterError(
            f"filter value {_short(value)} on column {cond.column!r} is outside the 64-bit "
            "integer range"
        )
    return num


def is_text(sql_type: str) -> bool:
    """Whether a column of this DuckDB type holds text (``~=`` folds its case)."""
    return sql_type.upper().split("(")[0] in ("VARCHAR", "TEXT", "STRING")


def _coerce(value: Any, sql_type: str, cond: Condition) -> Any:
    base = sql_type.upper().split("(")[0]
    if value is None:
        return None
    if base in NUMERIC_TYPES:
        return _coerce_number(value, base, cond)
    if base == "BOOLEAN":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise FilterError(f"column {cond.column!r} is boolean; {_short(value)} is not true/false")
    if cond.op in ("gt", "gte", "lt", "lte") and isinstance(value, bool):
        raise FilterError(f"cannot compare text column {cond.column!r} with {_short(value)}")
    return value if isinstance(value, str) else str(value)


def compile_conditions(
    conds: Iterable[Condition], schema: Mapping[str, str], table_alias: str = ""
) -> tuple[str, list[Any]]:
    """-> (SQL boolean expression, parameters). ``schema`` maps column name to DuckDB type."""
    clauses: list[str] = []
    params: list[Any] = []
    prefix = f"{table_alias}." if table_alias else ""
    for cond in conds:
        if cond.column not in schema:
            known = ", ".join(sorted(schema))
            raise FilterError(f"unknown filter column {cond.column!r}; columns: {known}")
        col = prefix + quote_ident(cond.column)
        typ = schema[cond.column]
        vals = [_coerce(v, typ, cond) for v in cond.values]
        if cond.op == "iin" and is_text(typ):
            non_null = [v.lower() for v in vals if v is not None]
            parts = [f"lower({col}) IN ({', '.join('?' for _ in non_null)})"] if non_null else []
            params.extend(non_null)
            if len(non_null) != len(vals):
                parts.append(f"{col} IS NULL")
            clauses.append(f"({' OR '.join(parts) if parts else 'FALSE'})")
        elif cond.op in LIST_OPERATORS:
            non_null = [v for v in vals if v is not None]
            has_null = len(non_null) != len(vals)
            parts = []
            if non_null:
                parts.append(f"{col} IN ({', '.join('?' for _ in non_null)})")
                params.extend(non_null)
            if has_null:
                parts.append(f"{col} IS NULL")
            inner = " OR ".join(parts) if parts else "FALSE"
            clauses.append(f"({inner})" if cond.op != "nin" else f"NOT coalesce(({inner}), FALSE)")
        elif vals[0] is None:
            if cond.op not in ("eq", "ne"):
                raise FilterError(f"cannot compare {cond.column!r} with null")
            clauses.append(f"{col} IS {'NOT ' if cond.op == 'ne' else ''}NULL")
        elif cond.op == "ne":
            clauses.append(f"{col} IS DISTINCT FROM ?")
            params.append(vals[0])
        else:
            clauses.append(f"{col} {_SQL_OP[cond.op]} ?")
            params.append(vals[0])
    return (" AND ".join(clauses) if clauses else "TRUE"), params


def conditions_to_json(
    conds: Iterable[Condition],
) -> dict[str, dict[str, Any]] | list[dict[str, dict[str, Any]]]:
    """Canonical JSON form of ANDed conditions (recorded in cohort definitions): one object
    ``{column: {op: value}}`` (:func:`parse_json` reads it back), or, when a column carries
    the same operator twice (``age>=70`` and ``age>=60``), which one object cannot hold, a list
    of one-condition objects in the order given. Every condition is kept either way."""
    conds = list(conds)

    def value(c: Condition) -> Any:
        return list(c.values) if c.op in LIST_OPERATORS else c.values[0]

    out: dict[str, dict[str, Any]] = {}
    for c in conds:
        if c.op in out.get(c.column, {}):
            return [{c.column: {c.op: value(c)}} for c in conds]
        out.setdefault(c.column, {})[c.op] = value(c)
    return out


MAX_WARNINGS = 10


def value_warnings(
    conds: Iterable[Condition],
    schema: Mapping[str, str],
    distinct: Callable[[str], Collection[Any]],
) -> list[str]:
    """One warning per value of an ``=``/``!=``/``~=`` (``in``/``nin``/``eq``/``ne``/``iin``)
    condition that equals no value of its column (``distinct(column)``: the column's distinct
    non-null values), naming the values that differ from it only in case. At most
    :data:`MAX_WARNINGS`; never raises for a value the filter itself accepts."""
    out: list[str] = []
    for cond in conds:
        if cond.op not in ("eq", "ne", *LIST_OPERATORS) or cond.column not in schema:
            continue
        typ = schema[cond.column]
        try:
            vals = [_coerce(v, typ, cond) for v in cond.values]
        except FilterError:
            continue
        vals = [v for v in vals if v is not None]
        if not vals:
            continue
        known = distinct(cond.column)
        text = is_text(typ)
        folded: dict[str, list[str]] | None = None
        for v in vals:
            if cond.op == "iin" and text:
                if folded is None:
                    folded = _fold(known)
                if str(v).lower() in folded:
                    continue
            elif v in known or (not text and str(v) in {str(k) for k in known}):
                continue
            if text:
                folded = _fold(known) if folded is None else folded
                variants = sorted(folded.get(str(v).lower(), []))
            else:
                variants = []
            what = f"no tile has {cond.column} {_short(v)}"
            if variants:
                shown = ", ".join(_short(x) for x in variants[:5])
                what += (
                    f" (values differing only in case: {shown}; `=` matches exactly, "
                    f"`{cond.column}~=...` matches any case)"
                )
            out.append(f"filter on {cond.column!r}: {what}")
            if len(out) >= MAX_WARNINGS:
                return out
    return out


def _fold(values: Iterable[Any]) -> dict[str, list[str]]:
    """Lower-cased text -> the values that fold to it."""
    out: dict[str, list[str]] = {}
    for v in values:
        if isinstance(v, str):
            out.setdefault(v.lower(), []).append(v)
    return out


# -- column-wise evaluation (Arrow) ---------------------------------------------------------------
def _arrow_type(sql_type: str) -> Any:
    import pyarrow as pa

    base = sql_type.upper().split("(")[0]
    if base in ("FLOAT", "DOUBLE", "REAL", "DECIMAL"):
        return pa.float64()
    if base in NUMERIC_TYPES:
        return pa.int64()
    if base == "BOOLEAN":
        return pa.bool_()
    return pa.string()


def condition_mask(column: Any, cond: Condition, sql_type: str, n: int) -> Any:
    """Evaluate one condition over one Arrow column (or None: the column is absent, all null).

    Returns a numpy bool array of length ``n`` with SQL semantics: comparisons with null are
    false; ``ne`` is IS DISTINCT FROM (nulls kept); ``nin`` keeps nulls unless null is listed.
    Dictionary-encoded columns are evaluated on their dictionary, then expanded by index.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    vals = [_coerce(v, sql_type, cond) for v in cond.values]
    if column is None:
        column = pa.nulls(n, _arrow_type(sql_type))
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        dict_cond = condition_mask(column.dictionary, cond, sql_type, len(column.dictionary))
        idx = column.indices.to_numpy(zero_copy_only=False)
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        out = np.zeros(n, dtype=bool)
        out[valid] = dict_cond[idx[valid].astype(np.int64)]
        null_cond = condition_mask(pa.nulls(1, column.dictionary.type), cond, sql_type, 1)[0]
        out[~valid] = null_cond
        return out
    want = _arrow_type(sql_type)
    if want == pa.int64() and any(isinstance(v, float) and not v.is_integer() for v in vals):
        want = pa.float64()  # age >= 59.5 on an integer column compares as numbers
    if column.type != want:
        try:
            column = column.cast(want)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            column = pc.cast(column, pa.string())
            want = pa.string()
    is_null = column.is_null().to_numpy(zero_copy_only=False)

    def _cmp(fn: Any, value: Any) -> Any:
        try:
            res = fn(column, pa.scalar(value, type=want))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            raise FilterError(
                f"filter value {_short(value)} does not fit column {cond.column!r} ({sql_type})"
            ) from None
        return res.fill_null(False).to_numpy(zero_copy_only=False)

    folded = cond.op == "iin" and want == pa.string()
    if folded:
        column = pc.utf8_lower(column)
        vals = [v.lower() if isinstance(v, str) else v for v in vals]
    if cond.op in LIST_OPERATORS:
        non_null = [v for v in vals if v is not None]
        hit = np.zeros(n, dtype=bool)
        if non_null:
            try:
                value_set = pa.array(non_null, type=want)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                raise FilterError(
                    f"filter values {non_null!r} do not fit column {cond.column!r} ({sql_type})"
                ) from None
            hit = (
                pc.is_in(column, value_set=value_set)
                .fill_null(False)
                .to_numpy(zero_copy_only=False)
            )
            hit = hit & ~is_null
        if len(non_null) != len(vals):
            hit = hit | is_null
        return hit if cond.op != "nin" else ~hit
    if vals[0] is None:
        if cond.op not in ("eq", "ne"):
            raise FilterError(f"cannot compare {cond.column!r} with null")
        return ~is_null if cond.op == "ne" else is_null
    if cond.op == "ne":
        return _cmp(pc.not_equal, vals[0]) | is_null
    fn = {
        "eq": pc.equal,
        "gt": pc.greater,
        "gte": pc.greater_equal,
        "lt": pc.less,
        "lte": pc.less_equal,
    }[cond.op]
    return _cmp(fn, vals[0])


def conditions_key(conds: Iterable[Condition]) -> str:
    """A canonical text key of a list of conditions (for per-segment mask caches)."""
    return repr(sorted((c.column, c.op, tuple(repr(v) for v in c.values)) for c in conds))
