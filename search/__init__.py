"""The store: segments, FAISS indexes, DuckDB queries. No torch, no Flask."""

from lamina.search.errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    EncoderMismatchError,
    FilterError,
    InvalidQueryError,
    SourceNotFoundError,
    StoreError,
    TileNotFoundError,
)
from lamina.search.results import Group, Hit, SearchResult
from lamina.search.service import SearchService
from lamina.search.store import Collection, Snapshot, Store, default_home

__all__ = [
    "Collection",
    "CollectionExistsError",
    "CollectionNotFoundError",
    "EncoderMismatchError",
    "FilterError",
    "Group",
    "Hit",
    "InvalidQueryError",
    "SearchResult",
    "SearchService",
    "Snapshot",
    "SourceNotFoundError",
    "Store",
    "StoreError",
    "TileNotFoundError",
    "default_home",
]
