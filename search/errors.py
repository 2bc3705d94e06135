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


class CatalogDamagedError(StoreError):
    """The catalog file cannot be opened (names the file, the reason and what to do)."""


class DamagedStoreError(StoreError):
    """Part of the store failed an integrity check (see ``search.integrity``)."""


class CollectionDamagedError(DamagedStoreError):
    """A collection's ``collection.json`` is unreadable or incomplete."""


class StaleCohortError(StoreError):
    """A cohort was made on a collection since deleted and created again under its name: its
    tile ids would name other tiles."""


class ShardUnavailableError(StoreError):
    """A sharded search could not reach any replica of one or more shards (``missing``)."""

    def __init__(self, message: str, missing: list[int] | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing or [])


class StoreIOError(StoreError):
    """Reading or writing the store failed (disk full, read-only, I/O error). Nothing
    half-written is visible; ``details`` says what the operation committed before it failed."""

    def __init__(self, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.details = dict(details or {})


class DiskFullError(StoreIOError):
    """The filesystem holding the store ran out of space (ENOSPC / EDQUOT)."""


def io_failure(what: str, exc: OSError, details: dict[str, object] | None = None) -> StoreIOError:
    """A :class:`StoreIOError` (or :class:`DiskFullError`) for ``exc`` raised while doing
    ``what``; names the file by its last two path parts, never the home's location."""
    import errno
    import os

    reason = exc.strerror or str(exc) or type(exc).__name__
    name = exc.filename if isinstance(exc.filename, str) else None
    where = f" (file {os.path.join(*name.split(os.sep)[-2:])})" if name else ""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    cls = DiskFullError if full else StoreIOError
    hint = "; free space and run it again" if full else ""
    return cls(f"{what} failed: {reason}{where}{hint}", details)
