"""The Lamina Python client: typed results over the HTTP API. Standard library only.

Importing this module imports neither Flask, torch, faiss, duckdb nor numpy, so querying a
remote server from a laptop stays cheap::

    from lamina.api.client import Client
    c = Client("http://127.0.0.1:8000")  # token: argument, $LAMINA_TOKEN or the config file
    res = c.search_image("derm", "lesion.jpg", k=10, filter={"label": {"in": ["MEL"]}})
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lamina.api.client_http import (
    ConfigError,
    Conflict,
    EncoderMismatch,
    Forbidden,
    InvalidRequest,
    LaminaError,
    NotFound,
    PayloadTooLarge,
    ServerError,
    Transport,
    Unauthorized,
    _error_class,
    _file,
    _multipart,
    _q,
    resolve_token,
    urllib_transport,
)
from lamina.api.client_jobs import Progress, accepted_job, wait_for_job
from lamina.api.client_types import (
    BatchResult,
    CohortInfo,
    Document,
    ExportInfo,
    Group,
    Hit,
    ProbeReport,
    SearchResult,
)

__all__ = [
    "BatchResult",
    "Client",
    "CohortInfo",
    "ConfigError",
    "Conflict",
    "Document",
    "EncoderMismatch",
    "ExportInfo",
    "Forbidden",
    "Group",
    "Hit",
    "InvalidRequest",
    "LaminaError",
    "NotFound",
    "PayloadTooLarge",
    "ProbeReport",
    "SearchResult",
    "ServerError",
    "Transport",
    "Unauthorized",
    "resolve_token",
    "urllib_transport",
]


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


class Client:
    """A Lamina server at ``url`` (e.g. ``http://127.0.0.1:8000``).

    ``token`` None looks one up (:func:`api.client_http.resolve_token`: ``$LAMINA_TOKEN``, then
    the 0600 config file); ``token=""`` sends none."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        transport: Transport | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.base = self.url + "/api/v1"
        self.token = resolve_token(self.url, token) if token is None else (token or None)
        self.transport: Transport = transport or urllib_transport
        self.timeout = timeout

    # -- plumbing ----------------------------------------------------------------------------
    def _raw(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: bytes | None = None,
        content_type: str | None = None,
        query: Mapping[str, Any] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        from urllib.parse import urlencode

        url = self.base + path
        q = {k: v for k, v in (query or {}).items() if v is not None}
        if q:
            url += "?" + urlencode(q)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            content_type = "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        status, resp_headers, data = self.transport(method, url, headers, body, self.timeout)
        if status >= 400:
            try:
                err = json.loads(data)
                code, message = str(err.get("code", "HTTP_ERROR")), str(err.get("error", ""))
            except (ValueError, AttributeError):
                code, message = "HTTP_ERROR", data[:200].decode("utf-8", "replace")
            raise _error_class(status, code)(status, code, message)
        return status, resp_headers, data

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        _, _, data = self._raw(method, path, **kwargs)
        return json.loads(data)  # type: ignore[no-any-return]

    # -- service -----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._json("GET", "/health")

    def encoders(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/encoders")["encoders"])

    def collections(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/collections")["collections"])

    def collection(self, name: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/collections/{_q(name)}")["collection"])

    def collection_columns(self, name: str) -> dict[str, Any]:
        """The declared patient / case / lesion columns, what they resolve to, and the
        metadata columns with their types."""
        return dict(self._json("GET", f"/collections/{_q(name)}/columns")["collection"])

    def set_collection_columns(self, name: str, **roles: str | None) -> dict[str, Any]:
        """Declare column roles (admin scope): ``patient_column=``, ``case_column=``,
        ``lesion_column=`` (a metadata column, or None to clear it); others keep theirs.
        Returns the new state as :meth:`collection_columns` does."""
        path = f"/collections/{_q(name)}/columns"
        return dict(self._json("PUT", path, json_body=dict(roles))["collection"])

    def collection_index(self, name: str) -> dict[str, Any]:
        """Index factory, stored/effective search parameters, dtype and index coverage."""
        return dict(self._json("GET", f"/collections/{_q(name)}/index")["collection"])

    def set_collection_index(
        self,
        name: str,
        index_factory: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store a new index factory and/or default search parameters (admin scope); vectors
        are never touched. Returns the new settings as :meth:`collection_index` does."""
        body = {"index_factory": index_factory, "params": dict(params) if params else None}
        return dict(
            self._json(
                "PUT",
                f"/collections/{_q(name)}/index",
                json_body={k: v for k, v in body.items() if v is not None},
            )["collection"]
        )

    def compact(
        self,
        name: str,
        target_rows: int | None = None,
        progress: Progress | None = None,
        erase: bool = False,
        retrain_index: bool = False,
    ) -> dict[str, Any]:
        """Merge ``name``'s small segments (a server job; waits for it): the summary. Segments
        holding deleted rows are always written again without them; ``erase`` also removes the
        replaced files at once (no grace period); ``retrain_index`` (with ``erase``) trains the
        ANN index again without the deleted vectors."""
        body: dict[str, Any] = {} if target_rows is None else {"target_rows": int(target_rows)}
        if erase:
            body["erase"] = True
        if retrain_index:
            body["retrain_index"] = True
        _, _, data = self._raw("POST", f"/collections/{_q(name)}/compact", json_body=body)
        return dict(wait_for_job(self, accepted_job(data), progress)["result"])

    def facets(self, collection: str, max_values: int | None = None) -> dict[str, Any]:
        """The collection's filterable metadata columns: numeric ones with min/max/count,
        text ones with their most frequent values and tile counts (capped at ``max_values``)."""
        return self._json(
            "GET", f"/collections/{_q(collection)}/facets", query={"max_values": max_values}
        )

    def openapi(self) -> dict[str, Any]:
        return self._json("GET", "/openapi.json")

    # -- search ------------------------------------------------------------------------------
    def _search_json(self, collection: str, body: dict[str, Any]) -> SearchResult:
        body = {k: v for k, v in body.items() if v is not None}
        doc = self._json("POST", f"/collections/{_q(collection)}/search", json_body=body)
        return SearchResult.from_dict(doc)

    def search_image(
        self,
        collection: str,
        path_or_bytes: str | Path | bytes,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        group_by: str | None = None,
        exclude_same: str | None = None,
        level: str | None = None,
        params: Mapping[str, Any] | None = None,
        partial: bool = False,
        offset: int = 0,
        filters: Sequence[str] | None = None,
    ) -> SearchResult:
        name, data = _file(path_or_bytes)
        fields = {
            "k": k,
            "filter": dict(filter) if filter else None,
            "filters": "\n".join(filters) if filters else None,
            "group_by": group_by,
            "exclude_same": exclude_same,
            "level": level,
            "params": dict(params) if params else None,
            "partial": "true" if partial else None,
            "offset": offset or None,
        }
        body, ctype = _multipart(fields, [("image", name, data)])
        _, _, raw = self._raw(
            "POST", f"/collections/{_q(collection)}/search", body=body, content_type=ctype
        )
        return SearchResult.from_dict(json.loads(raw))

    def search_tile(
        self,
        collection: str,
        tile_id: int,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        group_by: str | None = None,
        exclude_same: str | None = None,
        level: str | None = None,
        params: Mapping[str, Any] | None = None,
        partial: bool = False,
        offset: int = 0,
        filters: Sequence[str] | None = None,
    ) -> SearchResult:
        return self._search_json(
            collection,
            {
                "tile_id": int(tile_id),
                "k": k,
                "filter": filter,
                "filters": list(filters) if filters else None,
                "group_by": group_by,
                "exclude_same": exclude_same,
                "level": level,
                "params": params,
                "partial": True if partial else None,
                "offset": offset or None,
            },
        )

    def search_vector(
        self,
        collection: str,
        vector: Sequence[float],
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        group_by: str | None = None,
        encoder: str | None = None,
        level: str | None = None,
        params: Mapping[str, Any] | None = None,
        partial: bool = False,
        offset: int = 0,
        filters: Sequence[str] | None = None,
    ) -> SearchResult:
        return self._search_json(
            collection,
            {
                "vector": [float(v) for v in vector],
                "k": k,
                "filter": filter,
                "filters": list(filters) if filters else None,
                "group_by": group_by,
                "encoder": encoder,
                "level": level,
                "params": params,
                "partial": True if partial else None,
                "offset": offset or None,
            },
        )

    def search_region(
        self,
        collection: str,
        slide: str,
        region: Sequence[int],
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        group_by: str | None = None,
        params: Mapping[str, Any] | None = None,
        partial: bool = False,
        offset: int = 0,
        filters: Sequence[str] | None = None,
    ) -> SearchResult:
        x, y, w, h = (int(v) for v in region)
        return self._search_json(
            collection,
            {
                "region": {"slide": slide, "x": x, "y": y, "w": w, "h": h},
                "k": k,
                "filter": filter,
                "filters": list(filters) if filters else None,
                "group_by": group_by,
                "params": params,
                "partial": True if partial else None,
                "offset": offset or None,
            },
        )

    def search_batch(
        self,
        collection: str,
        vectors: Sequence[Sequence[float]] | None = None,
        *,
        tile_ids: Sequence[int] | None = None,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        encoder: str | None = None,
        params: Mapping[str, Any] | None = None,
        partial: bool = False,
        offset: int = 0,
        filters: Sequence[str] | None = None,
    ) -> BatchResult:
        """Up to 1000 query vectors (or stored tiles), all answered on one snapshot."""
        body = {
            "vectors": None if vectors is None else [[float(x) for x in v] for v in vectors],
            "tile_ids": None if tile_ids is None else [int(t) for t in tile_ids],
            "k": k,
            "filter": filter,
            "filters": list(filters) if filters else None,
            "encoder": encoder,
            "params": params,
            "partial": True if partial else None,
            "offset": offset or None,
        }
        doc = self._json(
            "POST",
            f"/collections/{_q(collection)}/search/batch",
            json_body={key: v for key, v in body.items() if v is not None},
        )
        return BatchResult.from_dict(doc)

    def search_slides(
        self,
        collection: str,
        *,
        source_id: str | None = None,
        tile_id: int | None = None,
        vector: Sequence[float] | None = None,
        k: int = 10,
        top_m: int = 5,
        filter: Mapping[str, Any] | None = None,
        exclude_same: str | None = None,
        partial: bool = False,
        offset: int = 0,
        filters: Sequence[str] | None = None,
    ) -> SearchResult:
        """Slide-level retrieval: ``groups`` ranks slides by the top-m mean of tile similarity."""
        return self._search_json(
            collection,
            {
                "level": "slide",
                "source_id": source_id,
                "tile_id": tile_id,
                "vector": None if vector is None else [float(v) for v in vector],
                "k": k,
                "top_m": top_m,
                "filter": filter,
                "filters": list(filters) if filters else None,
                "exclude_same": exclude_same,
                "partial": True if partial else None,
                "offset": offset or None,
            },
        )

    def tile(self, tile_id: int, collection: str | None = None) -> dict[str, Any]:
        return dict(
            self._json("GET", f"/tiles/{int(tile_id)}", query={"collection": collection})["tile"]
        )

    def tile_image(self, tile_id: int, collection: str | None = None) -> bytes:
        return self._raw("GET", f"/tiles/{int(tile_id)}/image", query={"collection": collection})[2]

    def thumbnail(self, source_id: str, collection: str | None = None) -> bytes:
        return self._raw(
            "GET", f"/sources/{_q(source_id)}/thumbnail", query={"collection": collection}
        )[2]

    def slide_qc_png(self, collection: str, source_id: str, size: int | None = None) -> bytes:
        """PNG of a slide with its tissue contour and tile grid (kept tiles blue, rejected red),
        longest side ``size`` pixels (server default 1024) plus a legend band."""
        path = f"/collections/{_q(collection)}/sources/{_q(source_id)}/qc.png"
        return self._raw("GET", path, query={"size": size})[2]

    def slide_qc_geojson(self, collection: str, source_id: str) -> dict[str, Any]:
        """GeoJSON FeatureCollection (level-0 pixels, y down) of a slide's tissue polygons
        (``kind`` "tissue") and grid tiles (``kind`` "tile", ``kept``, ``tile_id``)."""
        return self._json(
            "GET", f"/collections/{_q(collection)}/sources/{_q(source_id)}/qc.geojson"
        )

    # -- cohorts, exports, probes ------------------------------------------------------------
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
    ) -> CohortInfo:
        """Save a cohort: every tile passing ``filter``, narrowed by examples (``near`` image
        files, ``near_tiles``; ``k`` or ``min_score`` each), or exactly ``tile_ids``."""
        fields: dict[str, Any] = {
            "name": name,
            "collection": collection,
            "filter": dict(filter) if filter else None,
            "near_tile_ids": [int(t) for t in near_tiles] if near_tiles else None,
            "k": k,
            "min_score": min_score,
            "tile_ids": [int(t) for t in tile_ids] if tile_ids else None,
        }
        if near:
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

    # -- correcting and deleting data --------------------------------------------------------
    def annotate(
        self,
        collection: str,
        manifest: str | Path,
        *,
        source_column: str = "file",
        column_types: Sequence[str] | None = None,
        na_values: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Update the metadata of ``collection``'s sources from ``manifest`` without
        re-embedding (a server job; waits for it). The result lists every changed source with
        ``changes`` {column: {old, new}}; unchanged sources are not touched."""
        fields = {
            "source_column": source_column,
            "column_type": ",".join(column_types) if column_types else None,
            "na_values": na_values,
        }
        body, ctype = _multipart(fields, [("manifest", *_file(manifest))])
        _, _, data = self._raw(
            "POST", f"/collections/{_q(collection)}/annotate", body=body, content_type=ctype
        )
        return dict(wait_for_job(self, accepted_job(data), progress)["result"])

    def delete_sources(
        self,
        collection: str,
        sources: Sequence[str] = (),
        filter: str | Mapping[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Delete whole sources (names, paths or source ids, and/or every source with a tile
        matching ``filter``): gone from searches at once, erased from disk by the next
        compaction. Returns the deleted sources with their tile counts (``dry_run``: what
        would be deleted; nothing is)."""
        body: dict[str, Any] = {"sources": list(sources)}
        if dry_run:
            body["dry_run"] = True
        if filter is not None:
            body["filter"] = filter if isinstance(filter, str) else dict(filter)
        _, _, data = self._raw("POST", f"/collections/{_q(collection)}/delete", json_body=body)
        if dry_run:
            return dict(json.loads(data))
        return dict(wait_for_job(self, accepted_job(data))["result"])

    def drop_collection(self, name: str) -> dict[str, Any]:
        """Remove collection ``name`` with its cohorts and export records (admin scope)."""
        return self._json("DELETE", f"/collections/{_q(name)}", query={"confirm": name})

    # -- roots: where the source folders live -------------------------------------------------
    def roots(self) -> dict[str, Any]:
        """The home's roots: name, whether the folder exists, moves; and the version (admin)."""
        return self._json("GET", "/roots")

    def relocate(
        self, to: str, root: str | None = None, from_path: str | None = None
    ) -> dict[str, Any]:
        """Root ``root`` (or the folder ``from_path``, as indexed) now lives at ``to``, a
        folder on the server (admin scope). Nothing is re-embedded. Returns the root's name,
        the version, how many sources are under it and how many were found at ``to``."""
        body: dict[str, Any] = {"to": to}
        if root is not None:
            body["root"] = root
        if from_path is not None:
            body["from"] = from_path
        return self._json("POST", "/roots/relocate", json_body=body)

    # -- imports: bring your own embeddings --------------------------------------------------
    def import_embeddings(
        self,
        collection: str,
        files: Sequence[str | Path] | str | Path,
        encoder_name: str,
        dim: int | None = None,
        *,
        table_source_column: str | None = None,
        vector_column: str | None = None,
        patch_px_level0: int | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Upload precomputed embeddings (.h5, .parquet, .npz, .json) into ``collection``, bound
        to ``encoder_name`` (``external/<name>`` with ``dim``, or a registered key). Returns
        the run report; a file that fails a check raises :class:`InvalidRequest` (422) naming
        it and the row. Re-sending the same files imports nothing twice."""
        paths = [files] if isinstance(files, str | Path) else list(files)
        fields = {
            "encoder_name": encoder_name,
            "dim": dim,
            "table_source_column": table_source_column,
            "vector_column": vector_column,
            "patch_px_level0": patch_px_level0,
        }
        body, ctype = _multipart(fields, [("file", *_file(p)) for p in paths])
        _, _, data = self._raw(
            "POST", f"/collections/{_q(collection)}/import", body=body, content_type=ctype
        )
        return dict(wait_for_job(self, accepted_job(data), progress)["result"])
