"""Metadata filters: the CLI's EXPR strings and the API's JSON form, compiled to parameterised SQL.

Values never reach the SQL text: they are bound as parameters. Column names are checked
against the collection's schema and then quoted, so user input cannot change the query.

EXPR: ``COL=V1[,V2...]``, ``COL!=V1[,V2...]``, ``COL>=N``, ``COL<=N``, ``COL>N``, ``COL<N``
JSON: ``{"label": {"in": ["MEL", "BCC"]}, "age": {"gte": 50}, "site": {"ne": "A"}, "x": "v"}``
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from search.errors import FilterError

OPERATORS = ("eq", "ne", "in", "nin", "gt", "gte", "lt", "lte")
_SQL_OP = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_EXPR_RE = re.compile(r"^\s*([^!<>=]+?)\s*(!=|>=|<=|=|>|<)(.*)$", re.S)
_EXPR_OP = {"=": "in", "!=": "nin", ">=": "gte", "<=": "lte", ">": "gt", "<": "lt"}
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
            f"cannot parse filter {expr!r}: expected COL=V1[,V2], COL!=V, COL>=N, COL<=N, COL>N or COL<N"
        )
    col, sym, raw = m.group(1).strip(), m.group(2), m.group(3).strip()
    if not col:
        raise FilterError(f"filter {expr!r} names no column")
    if raw == "":
        raise FilterError(f"filter {expr!r} has no value")
    op = _EXPR_OP[sym]
    values = tuple(_split_values(raw)) if op in ("in", "nin") else (raw,)
    return Condition(col, op, values)


def parse_json(spec: Mapping[str, Any]) -> list[Condition]:
    """Parse the JSON filter form (``{"col": {"op": value}}`` or ``{"col": value}``)."""
    if not isinstance(spec, Mapping):
        raise FilterError("filter must be a JSON object mapping column names to conditions")
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
            if op in ("in", "nin"):
                if not isinstance(value, list | tuple):
                    raise FilterError(f"{col}.{op} needs a list of values")
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


def _coerce(value: Any, sql_type: str, cond: Condition) -> Any:
    base = sql_type.upper().split("(")[0]
    if value is None:
        return None
    if base in NUMERIC_TYPES:
        if isinstance(value, bool):
            raise FilterError(f"column {cond.column!r} is numeric; got {value!r}")
        if isinstance(value, int | float):
            return value
        try:
            num = float(str(value))
        except ValueError:
            raise FilterError(
                f"column {cond.column!r} is numeric; {value!r} is not a number"
            ) from None
        return (
            int(num)
            if num.is_integer() and base not in ("FLOAT", "DOUBLE", "REAL", "DECIMAL")
            else num
        )
    if base == "BOOLEAN":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise FilterError(f"column {cond.column!r} is boolean; {value!r} is not true/false")
    if cond.op in ("gt", "gte", "lt", "lte") and isinstance(value, bool):
        raise FilterError(f"cannot compare text column {cond.column!r} with {value!r}")
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
        if cond.op in ("in", "nin"):
            non_null = [v for v in vals if v is not None]
            has_null = len(non_null) != len(vals)
            parts = []
            if non_null:
                parts.append(f"{col} IN ({', '.join('?' for _ in non_null)})")
                params.extend(non_null)
            if has_null:
                parts.append(f"{col} IS NULL")
            inner = " OR ".join(parts) if parts else "FALSE"
            clauses.append(f"({inner})" if cond.op == "in" else f"NOT coalesce(({inner}), FALSE)")
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


def conditions_to_json(conds: Iterable[Condition]) -> dict[str, dict[str, Any]]:
    """Canonical JSON form (used to record cohort definitions)."""
    out: dict[str, dict[str, Any]] = {}
    for c in conds:
        val: Any = list(c.values) if c.op in ("in", "nin") else c.values[0]
        out.setdefault(c.column, {})[c.op] = val
    return out
