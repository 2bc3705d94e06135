"""Typed results of the Python client: hits, groups, search and batch answers, documents.
Standard library only; every result keeps the server's JSON answer (``to_dict()``)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Hit:
    tile_id: int
    score: float
    source_id: str
    source: str | None  # root-relative path, file name, keyed hash or None (server setting)
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
            source=None if d.get("source") is None else str(d["source"]),
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

    @property
    def missing_shards(self) -> list[int]:
        """Shards that did not answer a ``partial=True`` search of a sharded server."""
        return [int(s) for s in self.raw.get("missing_shards") or []]


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
    """A downloaded export: where it was written, and the server's record of it (``export``:
    id, args, rows, sha256...; ``meta``: what the file itself records)."""

    path: Path
    snapshot: str | None
    encoder: str | None
    n_bytes: int
    export: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The job's answer as the API gives it: ``{"ok", "export", "meta", "n_bytes"}``."""
        return {
            "ok": True,
            "export": copy.deepcopy(self.export),
            "meta": copy.deepcopy(self.meta),
            "n_bytes": self.n_bytes,
        }
