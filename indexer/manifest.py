"""The metadata table joined to sources: a manifest whose rows name files.

The file is read by :func:`lamina.search.manifests.read_manifest` (CSV, TSV, Excel-exported
CSV, Parquet; NA markers; inferred or declared column types). Columns named like a core column
of the store (``source``, ``kind``, ...) are kept as ``meta_<name>``.

Matching a file to a row (both sides Unicode-normalised to NFC, path separators ``/`` or
``\\``). A row's value matches a file when its path parts equal the trailing parts of the
file's path, where the last part is the file name or the file name without its extension
(``a/b.jpg`` matches rows ``b.jpg``, ``a/b.jpg``, ``b`` and ``a/b``). Of several matching rows
the one naming the most path parts wins; two rows as specific are ambiguous (an error for that
file). Matching is case-sensitive; only when no row matches that way is a case-insensitive
match used, and only when exactly one row matches so (``IMG_1.JPG`` finds row ``img_1.jpg``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from lamina.indexer.errors import ManifestError
from lamina.search.manifests import ManifestTable, read_manifest
from lamina.search.segments import RESERVED_COLUMNS

UNMATCHED_SHOWN = 20
"""How many unmatched files and rows the text report lists (all of them are in ``--json``)."""


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _parts(value: str) -> tuple[str, ...]:
    return tuple(
        p for p in PurePosixPath(_nfc(value).replace("\\", "/")).parts if p not in ("", "/", ".")
    )


def _file_parts(file: Path) -> tuple[str, ...]:
    p = Path(file)
    parts = p.resolve().parts if p.is_absolute() else p.parts
    return tuple(_nfc(x) for x in parts)


def _fold(parts: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p.casefold() for p in parts)


@dataclass
class MatchReport:
    """How the files of a run match the manifest's rows (computed before anything is read)."""

    files: int
    matched: int
    unmatched_files: list[str]
    unmatched_rows: list[dict[str, Any]]
    """``{"line": n, "value": ...}`` of rows that match no file of the run."""
    ambiguous: list[dict[str, Any]]
    case_insensitive: int
    """Files matched only ignoring case."""

    @property
    def unmatched_fraction(self) -> float:
        return len(self.unmatched_files) / self.files if self.files else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "matched": self.matched,
            "unmatched_files": list(self.unmatched_files),
            "unmatched_rows": list(self.unmatched_rows),
            "ambiguous": list(self.ambiguous),
            "case_insensitive": self.case_insensitive,
        }


@dataclass
class Manifest:
    """Rows keyed by the source column; matches a file by name, stem or trailing path parts."""

    path: Path
    source_column: str
    columns: list[str]
    rows: list[dict[str, Any]]
    renamed: dict[str, str] = field(default_factory=dict)
    table: ManifestTable | None = None
    _keys: list[tuple[str, ...] | None] = field(default_factory=list, repr=False)
    _by_name: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _by_folded: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(
        cls,
        path: str | Path,
        source_column: str = "file",
        column_types: Mapping[str, str] | None = None,
        na_values: Iterable[str] | None = None,
    ) -> Manifest:
        path = Path(path)
        if not path.is_file():
            raise ManifestError(f"manifest {path} does not exist")
        table = read_manifest(path, column_types, na_values)
        columns = table.columns
        if source_column not in columns:
            raise ManifestError(
                f"manifest {path} has no column {source_column!r} (columns: {', '.join(columns)}); "
                "pass --source-column"
            )
        if table.types.get(source_column) != "text":
            for row in table.rows:  # file names like 1001 are names, not numbers
                if row[source_column] is not None:
                    row[source_column] = str(row[source_column])
        renamed = {c: f"meta_{c}" for c in columns if c in RESERVED_COLUMNS and c != source_column}
        rows = [{renamed.get(c, c): v for c, v in row.items()} for row in table.rows]
        m = cls(path, source_column, [renamed.get(c, c) for c in columns], rows, renamed, table)
        return m

    def report(self) -> dict[str, Any]:
        """What the reader inferred (file, format, columns and their types, warnings)."""
        if self.table is None:
            return {"file": self.path.name, "rows": len(self.rows)}
        doc = self.table.report()
        doc["source_column"] = self.source_column
        doc["renamed"] = dict(self.renamed)
        return doc

    def _index(self) -> None:
        if self._keys:
            return
        for i, row in enumerate(self.rows):
            value = row.get(self.source_column)
            parts = _parts(str(value)) if value is not None else ()
            self._keys.append(parts or None)
            if parts:
                self._by_name.setdefault(parts[-1], []).append(i)
                self._by_folded.setdefault(parts[-1].casefold(), []).append(i)

    def _line(self, i: int) -> int:
        return self.table.lines[i] if self.table is not None else i + 2

    def _hits(self, fparts: tuple[str, ...], folded: bool) -> list[int]:
        """Rows matching ``fparts`` by name or stem, most specific first-equal only."""
        if not fparts:
            return []
        name = fparts[-1]
        stem = PurePosixPath(name).stem
        if folded:
            fparts, name, stem = _fold(fparts), name.casefold(), stem.casefold()
        index = self._by_folded if folded else self._by_name
        best: list[int] = []
        best_len = 0
        for last, whole in ((name, fparts), (stem, (*fparts[:-1], stem))):
            if last == name and whole is not fparts:
                continue  # a file without an extension: its stem is its name
            for i in index.get(last, []):
                key = self._keys[i]
                assert key is not None
                vparts = _fold(key) if folded else key
                n = len(vparts)
                if n <= len(whole) and tuple(whole[-n:]) == vparts:
                    if n > best_len:
                        best, best_len = [i], n
                    elif n == best_len and i not in best:
                        best.append(i)
        return best

    def find(self, file: Path) -> tuple[int | None, str]:
        """(row index or None, how): how is ``exact``, ``case-insensitive``, ``none`` or
        ``ambiguous`` (row index None)."""
        self._index()
        fparts = _file_parts(file)
        hits = self._hits(fparts, folded=False)
        how = "exact"
        if not hits:
            hits = self._hits(fparts, folded=True)
            how = "case-insensitive"
            if len(hits) > 1:
                return None, "none"  # ignoring case is only a fallback when it is unique
        if not hits:
            return None, "none"
        if len(hits) > 1:
            return None, "ambiguous"
        return hits[0], how

    def match(self, file: Path) -> dict[str, Any] | None:
        """The manifest row for ``file`` (see the module doc). Raises ManifestError when
        several rows match it equally."""
        i, how = self.find(file)
        if how == "ambiguous":
            self._index()
            hits = self._hits(_file_parts(file), folded=False)
            vals = [f"line {self._line(j)}: {self.rows[j][self.source_column]}" for j in hits]
            raise ManifestError(
                f"{file}: ambiguous manifest match, {len(hits)} rows of {self.path.name} match "
                f"({', '.join(vals[:3])})"
            )
        return dict(self.rows[i]) if i is not None else None

    def match_report(self, files: Iterable[Path]) -> MatchReport:
        """How ``files`` match the rows: matched, files matching no row, rows matching no file."""
        self._index()
        used: set[int] = set()
        files = list(files)
        unmatched: list[str] = []
        ambiguous: list[dict[str, Any]] = []
        folded = 0
        for f in files:
            i, how = self.find(f)
            if i is not None:
                used.add(i)
                folded += how == "case-insensitive"
            elif how == "ambiguous":
                hits = self._hits(_file_parts(f), folded=False)
                used.update(hits)
                ambiguous.append({"file": str(f), "lines": [self._line(j) for j in hits]})
            else:
                unmatched.append(str(f))
        rows = [
            {"line": self._line(i), "value": self.rows[i].get(self.source_column)}
            for i in range(len(self.rows))
            if i not in used
        ]
        return MatchReport(
            files=len(files),
            matched=len(files) - len(unmatched) - len(ambiguous),
            unmatched_files=unmatched,
            unmatched_rows=rows,
            ambiguous=ambiguous,
            case_insensitive=folded,
        )
