"""The Lamina Python client: typed results over the HTTP API. Standard library only.

Importing this module imports neither Flask, torch, faiss, duckdb nor numpy, so querying a
remote server from a laptop stays cheap::

    from api.client import Client
    c = Client("http://127.0.0.1:8000", token=None)
    res = c.search_image("derm", "lesion.jpg", k=10, filter={"label": {"in": ["MEL"]}})
"""

from __future__ import annotations

import copy
import json
import mimetypes
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# transport(method, url, headers, body, timeout) -> (status, headers, body bytes)
Transport = Callable[
    [str, str, dict[str, str], bytes | None, float], tuple[int, dict[str, str], bytes]
]


class LaminaError(Exception):
    """An error answer of the server (or a failure to reach it: status 0, code UNREACHABLE)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class InvalidRequest(LaminaError):
    """400/415/422: the request is malformed (bad filter, bad k, unreadable image...)."""


class Unauthorized(LaminaError):
    """401: missing or wrong token."""


class NotFound(LaminaError):
    """404: no such collection, tile, source, cohort..."""


class Conflict(LaminaError):
    """409."""


class EncoderMismatch(Conflict):
    """409 ENCODER_MISMATCH: the query was embedded with another encoder."""


class PayloadTooLarge(LaminaError):
    """413: upload over the server's size or pixel limit."""


class ServerError(LaminaError):
    """5xx, or the server could not be reached."""


def _error_class(status: int, code: str) -> type[LaminaError]:
    if code == "ENCODER_MISMATCH":
        return EncoderMismatch
    by_status: dict[int, type[LaminaError]] = {
        401: Unauthorized,
        404: NotFound,
        409: Conflict,
        413: PayloadTooLarge,
    }
    if status in by_status:
        return by_status[status]
    if 400 <= status < 500:
        return InvalidRequest
    return ServerError


@dataclass
class Hit:
    tile_id: int
    score: float
    source_id: str
    source: str
    x: int
    y: int
    size_px: int
    mpp: float | None
    metadata: dict[str, Any]
    kind: str = "photo"
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Hit:
        return cls(
            tile_id=int(d["tile_id"]),
            score=float(d.get("score", 0.0)),
            source_id=str(d["source_id"]),
            source=str(d["source"]),
            x=int(d["x"]),
            y=int(d["y"]),
            size_px=int(d["size_px"]),
            mpp=d.get("mpp"),
            metadata=dict(d.get("metadata") or {}),
            kind=str(d.get("kind", "photo")),
            raw=copy.deepcopy(dict(d)),
        )

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)


@dataclass
class Group:
    key: str
    value: Any
    score: float
    n_hits: int
    hits: list[Hit]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)


@dataclass
class SearchResult:
    collection: str
    snapshot: str
    encoder: str
    hits: list[Hit]
    groups: list[Group] | None = None
    plan: dict[str, Any] = field(default_factory=dict, compare=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchResult:
        groups = None
        if d.get("groups") is not None:
            groups = [
                Group(
                    key=g["key"],
                    value=g["value"],
                    score=float(g["score"]),
                    n_hits=int(g["n_hits"]),
                    hits=[Hit.from_dict(h) for h in g["hits"]],
                    raw=copy.deepcopy(g),
                )
                for g in d["groups"]
            ]
        return cls(
            collection=d["collection"],
            snapshot=d["snapshot"],
            encoder=d["encoder"],
            hits=[Hit.from_dict(h) for h in d["hits"]],
            groups=groups,
            plan=copy.deepcopy(dict(d.get("plan") or {})),
            raw=copy.deepcopy(dict(d)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The server's JSON answer, exactly."""
        return copy.deepcopy(self.raw)

    def __len__(self) -> int:
        return len(self.hits)


@dataclass
class BatchResult:
    """Answers of one batch, in query order, all computed on ``snapshot``."""

    collection: str
    snapshot: str
    encoder: str
    results: list[SearchResult]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BatchResult:
        return cls(
            collection=d["collection"],
            snapshot=d["snapshot"],
            encoder=d["encoder"],
            results=[SearchResult.from_dict(r) for r in d["results"]],
            raw=copy.deepcopy(dict(d)),
        )

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)

    def __len__(self) -> int:
        return len(self.results)


@dataclass
class Document:
    """A typed wrapper around one JSON answer (``.data`` is the part named by the endpoint)."""

    data: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)


@dataclass
class CohortInfo(Document):
    @property
    def name(self) -> str:
        return str(self.data.get("name"))

    @property
    def n_tiles(self) -> int:
        return int(self.data.get("n_tiles") or 0)


@dataclass
class ProbeReport(Document):
    pass


@dataclass
class ExportInfo:
    path: Path
    snapshot: str | None
    encoder: str | None
    n_bytes: int


def urllib_transport(
    method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - user-given URL
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise ServerError(0, "UNREACHABLE", f"cannot reach {url}: {exc}") from None


def _multipart(
    fields: Mapping[str, Any], files: Sequence[tuple[str, str, bytes]]
) -> tuple[bytes, str]:
    boundary = "lamina-" + secrets.token_hex(12)
    out = bytearray()
    for name, value in fields.items():
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, dict | list) else str(value)
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{text}\r\n'
        ).encode()
    for name, filename, data in files:
        ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        safe = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{safe}"\r\nContent-Type: {ctype}\r\n\r\n'
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _file(path_or_bytes: str | Path | bytes, default_name: str = "image") -> tuple[str, bytes]:
    if isinstance(path_or_bytes, bytes | bytearray):
        return default_name, bytes(path_or_bytes)
    p = Path(path_or_bytes)
    return p.name, p.read_bytes()


class Client:
    """A Lamina server at ``url`` (e.g. ``http://127.0.0.1:8000``)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        transport: Transport | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.base = self.url + "/api/v1"
        self.token = token
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
    ) -> SearchResult:
        name, data = _file(path_or_bytes)
        fields = {
            "k": k,
            "filter": dict(filter) if filter else None,
            "group_by": group_by,
            "exclude_same": exclude_same,
            "level": level,
            "params": dict(params) if params else None,
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
    ) -> SearchResult:
        return self._search_json(
            collection,
            {
                "tile_id": int(tile_id),
                "k": k,
                "filter": filter,
                "group_by": group_by,
                "exclude_same": exclude_same,
                "level": level,
                "params": params,
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
    ) -> SearchResult:
        return self._search_json(
            collection,
            {
                "vector": [float(v) for v in vector],
                "k": k,
                "filter": filter,
                "group_by": group_by,
                "encoder": encoder,
                "level": level,
                "params": params,
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
    ) -> SearchResult:
        x, y, w, h = (int(v) for v in region)
        return self._search_json(
            collection,
            {
                "region": {"slide": slide, "x": x, "y": y, "w": w, "h": h},
                "k": k,
                "filter": filter,
                "group_by": group_by,
                "params": params,
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
    ) -> BatchResult:
        """Up to 1000 query vectors (or stored tiles), all answered on one snapshot."""
        body = {
            "vectors": None if vectors is None else [[float(x) for x in v] for v in vectors],
            "tile_ids": None if tile_ids is None else [int(t) for t in tile_ids],
            "k": k,
            "filter": filter,
            "encoder": encoder,
            "params": params,
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
                "exclude_same": exclude_same,
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
    ) -> CohortInfo:
        fields: dict[str, Any] = {
            "name": name,
            "collection": collection,
            "filter": dict(filter) if filter else None,
            "near_tile_ids": [int(t) for t in near_tiles] if near_tiles else None,
            "k": k,
            "min_score": min_score,
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

    def cohort(self, name: str) -> CohortInfo:
        doc = self._json("GET", f"/cohorts/{_q(name)}")
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
    ) -> ExportInfo:
        """Write the labeled embedding set to ``out``; the format follows its suffix."""
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
        _, headers, data = self._raw(
            "POST", "/exports", json_body={k: v for k, v in body.items() if v is not None}
        )
        out.write_bytes(data)
        h = {k.lower(): v for k, v in headers.items()}
        return ExportInfo(
            path=out,
            snapshot=h.get("x-lamina-snapshot"),
            encoder=h.get("x-lamina-encoder"),
            n_bytes=len(data),
        )

    def probe(
        self,
        collection: str,
        label_column: str,
        cohort: str | None = None,
        split_by: str | None = None,
        fractions: Sequence[float] | None = None,
        seed: int = 0,
    ) -> ProbeReport:
        body = {
            "collection": collection,
            "label_column": label_column,
            "cohort": cohort,
            "split_by": split_by,
            "fractions": list(fractions) if fractions else None,
            "seed": seed,
        }
        doc = self._json(
            "POST", "/probes", json_body={k: v for k, v in body.items() if v is not None}
        )
        return ProbeReport(data=dict(doc["report"]), raw=doc)

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
        return self._json(
            "POST", f"/collections/{_q(collection)}/import", body=body, content_type=ctype
        )


def _q(segment: str) -> str:
    from urllib.parse import quote

    return quote(str(segment), safe="")
