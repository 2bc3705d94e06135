"""Errors raised by the store. All derive from StoreError; api/errors.py maps them to HTTP codes.

Defined in :mod:`lamina.errors` (standard library only, so naming them imports no store code)
and re-exported here."""

from __future__ import annotations

from lamina.errors import (
    CatalogDamagedError,
    CatalogLockedError,
    CohortNotFoundError,
    CollectionDamagedError,
    CollectionExistsError,
    CollectionNotFoundError,
    DamagedStoreError,
    DiskFullError,
    EncoderMismatchError,
    FilterError,
    InvalidIndexFactoryError,
    InvalidQueryError,
    ManifestFormatError,
    RootError,
    RootNotFoundError,
    ShardUnavailableError,
    SourceNotFoundError,
    StaleCohortError,
    StoreError,
    StoreIOError,
    TileNotFoundError,
    io_failure,
)

__all__ = [
    "CatalogDamagedError",
    "CatalogLockedError",
    "CohortNotFoundError",
    "CollectionDamagedError",
    "CollectionExistsError",
    "CollectionNotFoundError",
    "DamagedStoreError",
    "DiskFullError",
    "EncoderMismatchError",
    "FilterError",
    "InvalidIndexFactoryError",
    "InvalidQueryError",
    "ManifestFormatError",
    "RootError",
    "RootNotFoundError",
    "ShardUnavailableError",
    "SourceNotFoundError",
    "StaleCohortError",
    "StoreError",
    "StoreIOError",
    "TileNotFoundError",
    "io_failure",
]
