"""Cohort, export and probe calls of :class:`lamina.api.client.Client`: saved cohorts, labelled
embedding sets written to disk atomically, and linear-probe reports (server jobs the calls wait
for). Standard library only."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lamina.api.client_base import ClientBase
from lamina.api.client_http import InvalidRequest, _file, _multipart, _q
from lamina.api.client_jobs import Progress, accepted_job, wait_for_job
from lamina.api.client_types import CohortInfo, ExportInfo, ProbeReport


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half a file)."""
    import os
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class DataMixin(ClientBase):
    """Cohorts, exports and linear probes."""

    def create_cohort(
        self,
        name: str,
        collection: str,
        filter: Mapping[str, Any] | None = None,
        near: Sequence[str | Path] | None = None,
        near_tiles: Sequence[int] | None = None,
        k: int | None = None,
        min_score: float | None = None,
        tile_ids: Sequence[int] | None = None,
        filters: Sequence[str] | None = None,
    ) -> CohortInfo:
        """Save a cohort: every tile passing ``filter`` (JSON) and ``filters`` (EXPR strings
        such as ``age>=60``, parsed by the server; every one holds, two on one column too),
        narrowed by examples (``near`` image files, ``near_tiles``; ``k`` or ``min_score``
        each), or exactly ``tile_ids``."""
        fields: dict[str, Any] = {
            "name": name,
            "collection": collection,
            "filter": dict(filter) if filter else None,
            "near_tile_ids": [int(t) for t in near_tiles] if near_tiles else None,
            "k": k,
            "min_score": min_score,
            "tile_ids": [int(t) for t in tile_ids] if tile_ids else None,
            "filters": list(filters) if filters else None,
        }
        if near:
            if filters:  # a form field: one EXPR a line, as the search form takes them
                fields["filters"] = "\n".join(filters)
            files = [("near", *_file(p)) for p in near]
            body, ctype = _multipart(fields, files)
            doc = json.loads(self._raw("POST", "/cohorts", body=body, content_type=ctype)[2])
        else:
            doc = self._json(
                "POST", "/cohorts", json_body={k_: v for k_, v in fields.items() if v is not None}
            )
        return CohortInfo(data=dict(doc["cohort"]), raw=doc)

    def cohorts(self) -> list[CohortInfo]:
        doc = self._json("GET", "/cohorts")
        return [CohortInfo(data=dict(c), raw=c) for c in doc["cohorts"]]

    def cohort(
        self, name: str, version: int | None = None, label_column: str | None = None
    ) -> CohortInfo:
        """Cohort ``name`` (its latest version, or ``version``) with counts per slide, per
        patient and per label (every low-cardinality column, or ``label_column`` only)."""
        doc = self._json(
            "GET",
            f"/cohorts/{_q(name)}",
            query={"version": version, "label_column": label_column},
        )
        return CohortInfo(data=dict(doc["cohort"]), raw=doc)

    def delete_cohort(self, name: str) -> str:
        return str(self._json("DELETE", f"/cohorts/{_q(name)}")["deleted"])

    def export(
        self,
        collection: str,
        cohort: str | None = None,
        label_column: str = "label",
        split_by: str | None = None,
        neighbors: int | None = None,
        test_fraction: float = 0.2,
        seed: int = 0,
        out: str | Path = "export.parquet",
        progress: Progress | None = None,
    ) -> ExportInfo:
        """Write the labeled embedding set to ``out``; the format follows its suffix.

        The server runs it as a background job: this waits for it (``progress(job)`` on each
        change, see api/client_jobs.py), then downloads the file."""
        out = Path(out)
        fmt = out.suffix.lstrip(".").lower()
        if fmt not in ("parquet", "csv", "npz"):
            raise InvalidRequest(0, "BAD_FORMAT", f"{out}: use a .parquet, .csv or .npz file name")
        body = {
            "collection": collection,
            "cohort": cohort,
            "label_column": label_column,
            "split_by": split_by,
            "neighbors": neighbors,
            "test_fraction": test_fraction,
            "seed": seed,
            "format": fmt,
        }
        _, _, data = self._raw(
            "POST", "/exports", json_body={k: v for k, v in body.items() if v is not None}
        )
        job = wait_for_job(self, accepted_job(data), progress)
        _, headers, data = self._raw("GET", f"/jobs/{_q(job['id'])}/file")
        result = job.get("result") or {}
        meta = dict(result.get("meta") or {})
        _write_atomically(out, data)
        if fmt == "csv":  # a CSV cannot carry its provenance: it goes beside it, as locally
            text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
            _write_atomically(Path(str(out) + ".meta.json"), text.encode())
        h = {k.lower(): v for k, v in headers.items()}
        return ExportInfo(
            path=out,
            snapshot=h.get("x-lamina-snapshot"),
            encoder=h.get("x-lamina-encoder"),
            n_bytes=len(data),
            export=dict(result.get("export") or {}),
            meta=meta,
        )

    def export_trident(
        self,
        collection: str,
        out_dir: str | Path,
        cohort: str | None = None,
        label_column: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Write one TRIDENT patch-feature ``.h5`` per slide (``features``, ``coords`` and their
        attributes, as TRIDENT writes them) and ``slides.csv`` into ``out_dir``.

        The server runs it as a job and sends a zip; this waits, downloads it and unpacks the
        files (plain names only). Returns the job's result: ``meta`` lists the slides written."""
        import io
        import zipfile

        body = {
            "collection": collection,
            "cohort": cohort,
            "label_column": label_column,
            "format": "trident-h5",
        }
        _, _, data = self._raw(
            "POST", "/exports", json_body={k: v for k, v in body.items() if v is not None}
        )
        job = wait_for_job(self, accepted_job(data), progress)
        _, _, data = self._raw("GET", f"/jobs/{_q(job['id'])}/file")
        out = Path(out_dir)
        written = []
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                name = info.filename
                if "/" in name or "\\" in name or name.startswith(".") or info.is_dir():
                    raise InvalidRequest(0, "BAD_ARCHIVE", f"unexpected entry {name!r} in export")
                _write_atomically(out / name, zf.read(info))
                written.append(str(out / name))
        result = dict(job.get("result") or {})
        result["files"] = written
        return result

    def probe(
        self,
        collection: str,
        label_column: str,
        cohort: str | None = None,
        split_by: str | None = None,
        fractions: Sequence[float] | None = None,
        seed: int = 0,
        progress: Progress | None = None,
        test_fraction: float | None = None,
    ) -> ProbeReport:
        """Run a probe as a server job and wait for its report (``progress(job)`` on change)."""
        body = {
            "collection": collection,
            "label_column": label_column,
            "cohort": cohort,
            "split_by": split_by,
            "fractions": list(fractions) if fractions else None,
            "seed": seed,
            "test_fraction": test_fraction,
        }
        _, _, data = self._raw(
            "POST", "/probes", json_body={k: v for k, v in body.items() if v is not None}
        )
        doc = wait_for_job(self, accepted_job(data), progress)["result"]
        return ProbeReport(data=dict(doc["report"]), raw=doc)
