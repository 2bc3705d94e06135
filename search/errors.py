"""Errors raised by the store. All derive from StoreError; api/errors.py maps them to HTTP codes."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the search package raises on purpose."""


class CollectionNotFoundError(StoreError):
    """No collection of that name exists in this home."""


class CollectionExistsError(StoreError):
    """A collection of that name exists with an incompatible encoder or settings."""


class EncoderMismatchError(StoreError):
    """A query or an ingest uses a different encoder fingerprint than the collection."""


class FilterError(StoreError, ValueError):
    """A filter expression could not be parsed or names an unknown column."""


class TileNotFoundError(StoreError):
    """No tile with that id in the collection's current snapshot."""


class SourceNotFoundError(StoreError):
    """No source with that id in the collection's current snapshot."""


class InvalidQueryError(StoreError, ValueError):
    """A search request is malformed (bad k, vector of the wrong size, ...)."""


class InvalidIndexFactoryError(StoreError, ValueError):
    """A FAISS factory string that FAISS cannot build."""


class CohortNotFoundError(StoreError):
    """No cohort of that name."""


class CatalogLockedError(StoreError):
    """Another process owns the catalog (a running server); talk to it through the client."""
