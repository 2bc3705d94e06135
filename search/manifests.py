"""Reading a metadata manifest as it comes: CSV, TSV, Excel-exported CSV, Parquet.

One reader (:func:`read_manifest`) for every place a manifest enters the store (``lamina
index --manifest``, ``lamina annotate --manifest``). It returns typed rows and a report.

Method.

- Format: ``.parquet``/``.pq`` is read with pyarrow; anything else is delimited text. The
  encoding is UTF-8 (a byte-order mark is dropped), else Windows-1252 (what Excel writes), said
  in the report. The separator is tab for ``.tsv``/``.tab``; otherwise the one of ``,``, ``;``,
  tab that occurs most often outside quotes in the header line (``,`` on a tie). Quoted fields
  (separators, doubled quotes and line breaks inside quotes) and CRLF line ends are read as
  RFC 4180 says.
- Ragged rows: a row shorter than the header is padded with nulls (as pandas does); a row
  longer than the header is an error naming the file and line, unless every extra field is
  empty (trailing separators), which are dropped. Extra fields usually mean an unquoted
  separator inside a value: the row's values would be shifted, so they are never kept.
- Values are stripped of surrounding white space. A value equal, ignoring case, to one of the
  NA markers (default :data:`DEFAULT_NA_VALUES`; replaced by ``na_values``) is null; an empty
  field is always null. Parquet nulls are nulls, and NA markers in its text columns too.
- Types: each column's type is inferred from its non-null values: ``bool`` (true/false),
  ``int``, ``float``, ``date`` (ISO ``YYYY-MM-DD``), else ``text``. Integers written with a
  leading zero (``007``) are identifiers, so such a column is text. A column whose values are
  at least half numbers but not all is not silently made text: the first value that
  is not a number is an error naming file, line and column (declare the marker NA with
  ``na_values``, or the column ``text``). ``column_types`` overrides the inference per column;
  a value that does not fit its declared type is an error naming file, line and column.
  ``int`` accepts integral floats (``3.0``, as spreadsheets write them).
- Values come out as Python ``int``/``float``/``bool``/``str``/``None``; dates as ISO strings
  (they compare in date order as text).
- Lines are 1-based lines of the file (the header is line 1; a quoted field that spans lines
  counts them); Parquet rows are numbered from 1 after the header.

Invariants: every row has every column; a column's non-null values all have its reported type;
nothing is guessed silently: every inference is in the report.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.search.errors import ManifestFormatError

DEFAULT_NA_VALUES: tuple[str, ...] = (
    "NA",
    "N/A",
    "NaN",
    "unknown",
    "UNK",
    "none",
    "null",
    "-",
    "",
)
COLUMN_TYPES = ("int", "float", "bool", "date", "text")
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
TAB_SUFFIXES = frozenset({".tsv", ".tab"})
SPREADSHEET_SUFFIXES = frozenset({".xlsx", ".xls", ".ods"})

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TRUE = frozenset({"true"})
_FALSE = frozenset({"false"})


@dataclass
class ColumnReport:
    name: str
    type: str
    declared: bool
    nulls: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "declared": self.declared,
            "nulls": self.nulls,
        }


@dataclass
class ManifestTable:
    """A manifest read whole: its columns in file order, typed rows, and what was inferred."""

    path: Path
    format: str
    columns: list[str]
    types: dict[str, str]
    rows: list[dict[str, Any]]
    lines: list[int]
    """The 1-based file line (CSV) or row number (Parquet) of each row."""
    column_reports: list[ColumnReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    delimiter: str | None = None
    encoding: str | None = None
    na_values: tuple[str, ...] = DEFAULT_NA_VALUES

    def report(self) -> dict[str, Any]:
        """What was read and inferred (shown by ``lamina index`` and in ``--json``)."""
        return {
            "file": self.path.name,
            "format": self.format,
            "delimiter": self.delimiter,
            "encoding": self.encoding,
            "rows": len(self.rows),
            "columns": [c.to_dict() for c in self.column_reports],
            "na_values": list(self.na_values),
            "warnings": list(self.warnings),
        }


def _clip(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (error messages never echo a huge cell)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_column_types(specs: Iterable[str]) -> dict[str, str]:
    """``["age=int", "site=text"]`` -> ``{"age": "int", "site": "text"}`` (usage errors named)."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, kind = spec.partition("=")
        name, kind = name.strip(), kind.strip().lower()
        if not sep or not name or kind not in COLUMN_TYPES:
            raise ManifestFormatError(
                f"column type {spec!r}: write COLUMN=TYPE with TYPE one of {', '.join(COLUMN_TYPES)}"
            )
        out[name] = kind
    return out


def parse_na_values(text: str | None) -> tuple[str, ...]:
    """``"NA,unknown"`` -> ("NA", "unknown", "") (the empty field is always null)."""
    if text is None:
        return DEFAULT_NA_VALUES
    values = [v.strip() for v in text.split(",")]
    return tuple(dict.fromkeys([*(v for v in values if v), ""]))


def read_manifest(
    path: str | Path,
    column_types: Mapping[str, str] | None = None,
    na_values: Iterable[str] | None = None,
) -> ManifestTable:
    """Read a manifest file into typed rows; see the module docstring for every rule.

    Raises :class:`ManifestFormatError` (naming file, line and column where there is one)."""
    path = Path(path)
    declared = {k: v.lower() for k, v in (column_types or {}).items()}
    for name, kind in declared.items():
        if kind not in COLUMN_TYPES:
            raise ManifestFormatError(
                f"column type {name}={kind}: TYPE must be one of {', '.join(COLUMN_TYPES)}"
            )
    na = tuple(na_values) if na_values is not None else DEFAULT_NA_VALUES
    na_set = {v.strip().lower() for v in na} | {""}
    if not path.is_file():
        raise ManifestFormatError(f"manifest {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in SPREADSHEET_SUFFIXES:
        raise ManifestFormatError(
            f"manifest {path.name}: {suffix} workbooks are not read; save the sheet as CSV "
            "(any separator) or Parquet"
        )
    if suffix in PARQUET_SUFFIXES:
        table = _read_parquet(path, na_set)
    else:
        table = _read_delimited(path, na_set)
    table.na_values = na
    unknown = sorted(set(declared) - set(table.columns))
    if unknown:
        raise ManifestFormatError(
            f"manifest {path.name}: --column-type names {', '.join(unknown)}, which the "
            f"manifest does not have (columns: {', '.join(table.columns)})"
        )
    _type_columns(table, declared)
    return table


# -- delimited text ---------------------------------------------------------------------------


def _decode(path: Path) -> tuple[str, str]:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError as exc:
        raise ManifestFormatError(
            f"manifest {path.name}: not UTF-8 or Windows-1252 text (byte {exc.start}); "
            "save it as UTF-8 CSV"
        ) from None


def _sniff(header: str) -> str:
    counts = {",": 0, ";": 0, "\t": 0}
    quoted = False
    for ch in header:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    best = max(counts.values())
    if best == 0 or counts[","] == best:
        return ","
    return ";" if counts[";"] == best else "\t"


def _read_delimited(path: Path, na_set: set[str]) -> ManifestTable:
    text, encoding = _decode(path)
    if not text.strip():
        raise ManifestFormatError(f"manifest {path.name} is empty")
    first_line = text.lstrip("\r\n").splitlines()[0]
    delimiter = "\t" if path.suffix.lower() in TAB_SUFFIXES else _sniff(first_line)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False)
    warnings: list[str] = []
    header: list[str] | None = None
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    padded = 0
    trimmed = 0
    line_start = 1
    try:
        for record in reader:
            start, line_start = line_start, reader.line_num + 1
            if not record or all(not f.strip() for f in record):
                continue  # blank line
            if header is None:
                header = _header(path, record, start)
                continue
            n = len(header)
            if len(record) > n:
                extra = record[n:]
                if any(f.strip() for f in extra):
                    raise ManifestFormatError(
                        f"manifest {path.name}, line {start}: {len(record)} fields where the "
                        f"header has {n} (extra: {_show(extra)}); a value holding the separator "
                        f"{_sep_name(delimiter)} must be quoted"
                    )
                trimmed += 1
                record = record[:n]
            elif len(record) < n:
                padded += 1
                record = record + [""] * (n - len(record))
            row = {}
            for name, raw in zip(header, record, strict=True):
                value = raw.strip()
                row[name] = None if value.lower() in na_set else value
            rows.append(row)
            lines.append(start)
    except csv.Error as exc:
        raise ManifestFormatError(
            f"manifest {path.name}, line {reader.line_num}: cannot read CSV ({exc})"
        ) from None
    if header is None:
        raise ManifestFormatError(f"manifest {path.name} is empty")
    if padded:
        warnings.append(f"{padded} rows had fewer fields than the header: padded with nulls")
    if trimmed:
        warnings.append(f"{trimmed} rows ended in empty extra fields: dropped")
    fmt = "tsv" if delimiter == "\t" else "csv"
    return ManifestTable(
        path, fmt, header, {}, rows, lines, warnings=warnings, delimiter=delimiter,
        encoding=encoding,
    )  # fmt: skip


def _header(path: Path, record: list[str], line: int) -> list[str]:
    names = [f.strip() for f in record]
    while names and not names[-1]:
        names.pop()  # trailing separators of a spreadsheet export
    for i, name in enumerate(names):
        if not name:
            raise ManifestFormatError(
                f"manifest {path.name}, line {line}: header field {i + 1} is empty; "
                "every column needs a name"
            )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ManifestFormatError(
            f"manifest {path.name}, line {line}: column names repeat ({', '.join(dupes)})"
        )
    return names


def _show(values: list[str]) -> str:
    text = ", ".join(repr(v) for v in values[:3])
    return text + (", ..." if len(values) > 3 else "")


def _sep_name(delimiter: str) -> str:
    return {"\t": "(tab)", ",": "','", ";": "';'"}.get(delimiter, repr(delimiter))


# -- Parquet ----------------------------------------------------------------------------------


def _read_parquet(path: Path, na_set: set[str]) -> ManifestTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ManifestFormatError(f"manifest {path.name}: cannot read Parquet ({exc})") from None
    columns = [str(c) for c in table.column_names]
    fixed: dict[str, str] = {}
    data: dict[str, list[Any]] = {}
    for name, col in zip(columns, table.columns, strict=True):
        t = col.type
        values = col.to_pylist()
        if pa.types.is_boolean(t):
            fixed[name] = "bool"
        elif pa.types.is_integer(t):
            fixed[name] = "int"
        elif pa.types.is_floating(t):
            fixed[name] = "float"
            values = [None if v is None or math.isnan(v) else v for v in values]
        elif pa.types.is_date(t) or pa.types.is_timestamp(t):
            fixed[name] = "date"
            values = [None if v is None else v.isoformat() for v in values]
        else:  # text (and anything else, as text) goes through the NA markers and inference
            values = [None if v is None else str(v).strip() for v in values]
            values = [None if v is None or v.lower() in na_set else v for v in values]
        data[name] = values
    rows = [{name: data[name][i] for name in columns} for i in range(table.num_rows)]
    m = ManifestTable(path, "parquet", columns, fixed, rows, list(range(1, table.num_rows + 1)))
    return m


# -- types ------------------------------------------------------------------------------------


def _where(table: ManifestTable, i: int, column: str) -> str:
    unit = "row" if table.format == "parquet" else "line"
    return f"manifest {table.path.name}, {unit} {table.lines[i]}, column {column!r}"


def _infer(values: list[Any]) -> tuple[str, int | None]:
    """(type, index of a value breaking a mostly-numeric column or None)."""
    present = [(i, v) for i, v in enumerate(values) if v is not None]
    if not present:
        return "text", None
    texts = [(i, v) for i, v in present if isinstance(v, str)]
    if len(texts) < len(present):
        return "text", None  # mixed Parquet objects: left as text
    lowered = {v.lower() for _, v in texts}
    if lowered <= (_TRUE | _FALSE):
        return "bool", None
    ints = [bool(_INT.match(v)) and not _leading_zero(v) for _, v in texts]
    if all(ints):
        return "int", None
    floats = [bool(_FLOAT.match(v)) for _, v in texts]
    if all(floats):
        if any(_leading_zero(v) for _, v in texts if _INT.match(v)):
            return "text", None
        return "float", None
    if all(_DATE.match(v) and _date(v) is not None for _, v in texts):
        return "date", None
    if sum(floats) * 2 >= len(texts):
        bad = next(i for (i, _), ok in zip(texts, floats, strict=True) if not ok)
        return "text", bad
    return "text", None


def _leading_zero(v: str) -> bool:
    digits = v.lstrip("+-")
    return len(digits) > 1 and digits.startswith("0") and digits.isdigit()


def _date(v: str) -> str | None:
    try:
        return dt.date.fromisoformat(v).isoformat()
    except ValueError:
        return None


def _convert(value: Any, kind: str) -> Any:
    """``value`` as ``kind``; raises ValueError when it does not fit."""
    if kind == "text":
        return value if isinstance(value, str) else str(value)
    if isinstance(value, bool):
        if kind == "bool":
            return value
        raise ValueError
    if kind == "bool":
        low = str(value).strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError
    if kind == "int":
        if isinstance(value, int):
            return value
        if isinstance(value, str) and _INT.match(value.strip()):
            return int(value)
        f = float(value)
        if not math.isfinite(f) or f != int(f):
            raise ValueError
        return int(f)
    if kind == "float":
        f = float(value)
        if not math.isfinite(f):
            raise ValueError
        return f
    if kind == "date":
        out = _date(str(value))
        if out is None:
            raise ValueError
        return out
    raise ValueError


def _type_columns(table: ManifestTable, declared: Mapping[str, str]) -> None:
    reports = []
    for name in table.columns:
        values = [row[name] for row in table.rows]
        kind = declared.get(name) or table.types.get(name)
        if kind is None:
            kind, bad = _infer(values)
            if bad is not None:
                raise ManifestFormatError(
                    f"{_where(table, bad, name)}: {values[bad]!r} is not a number, but most of "
                    f"the column is; declare it missing with --na-values, or the column text "
                    f"with --column-type {name}=text"
                )
        for i, v in enumerate(values):
            if v is None:
                continue
            try:
                table.rows[i][name] = _convert(v, kind)
            except (ValueError, OverflowError):
                how = "declared" if name in declared else "inferred"
                raise ManifestFormatError(
                    f"{_where(table, i, name)}: {_clip(v)} is not a valid {kind} (the column is "
                    f"{how} {kind}); fix the value, declare it missing with --na-values, or "
                    f"set the column's type with --column-type {name}=TYPE"
                ) from None
        table.types[name] = kind
        nulls = sum(v is None for v in values)
        reports.append(ColumnReport(name, kind, name in declared, nulls))
    table.column_reports = reports
