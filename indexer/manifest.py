"""The metadata table joined to sources: a CSV whose rows name files, typed by DuckDB's sniffer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from lamina.indexer.errors import ManifestError
from lamina.search.segments import RESERVED_COLUMNS


def _parts(value: str) -> tuple[str, ...]:
    return tuple(
        p for p in PurePosixPath(value.replace("\\", "/")).parts if p not in ("", "/", ".")
    )


@dataclass
class Manifest:
    """Rows keyed by the source column; matches a file by name or trailing path parts."""

    path: Path
    source_column: str
    columns: list[str]
    rows: list[dict[str, Any]]
    renamed: dict[str, str] = field(default_factory=dict)
    _by_name: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | Path, source_column: str = "file") -> Manifest:
        import duckdb

        path = Path(path)
        if not path.is_file():
            raise ManifestError(f"manifest {path} does not exist")
        con = duckdb.connect(":memory:")
        try:
            rel = con.execute(
                "SELECT * FROM read_csv(?, header=true, all_varchar=false, sample_size=-1)",
                [str(path)],
            )
            columns = [d[0] for d in rel.description]
            raw_rows = rel.fetchall()
        except duckdb.Error as exc:
            raise ManifestError(f"manifest {path}: cannot read CSV: {exc}") from None
        finally:
            con.close()
        if source_column not in columns:
            raise ManifestError(
                f"manifest {path} has no column {source_column!r} (columns: {', '.join(columns)}); "
                "pass --source-column"
            )
        renamed = {c: f"meta_{c}" for c in columns if c in RESERVED_COLUMNS and c != source_column}
        rows = []
        for raw in raw_rows:
            row = {}
            for c, v in zip(columns, raw, strict=True):
                if isinstance(v, float) and math.isnan(v):
                    v = None
                if hasattr(v, "isoformat"):
                    v = v.isoformat()
                row[renamed.get(c, c)] = v
            rows.append(row)
        m = cls(path, source_column, [renamed.get(c, c) for c in columns], rows, renamed)
        m._index()
        return m

    def _index(self) -> None:
        for i, row in enumerate(self.rows):
            value = row.get(self.source_column)
            if value is None:
                continue
            parts = _parts(str(value))
            if parts:
                self._by_name.setdefault(parts[-1], []).append(i)

    def match(self, file: Path) -> dict[str, Any] | None:
        """The manifest row for ``file``: its value equals the file name or a trailing part
        of its path. Raises ManifestError when several rows match."""
        fparts = Path(file).resolve().parts if Path(file).is_absolute() else Path(file).parts
        candidates = self._by_name.get(Path(file).name, [])
        hits = []
        for i in candidates:
            vparts = _parts(str(self.rows[i][self.source_column]))
            if len(vparts) <= len(fparts) and tuple(fparts[-len(vparts) :]) == vparts:
                hits.append(i)
        if len(hits) > 1:
            vals = sorted({str(self.rows[i][self.source_column]) for i in hits})
            raise ManifestError(
                f"{file}: ambiguous manifest match, {len(hits)} rows of {self.path.name} match "
                f"({', '.join(vals[:3])})"
            )
        return dict(self.rows[hits[0]]) if hits else None
