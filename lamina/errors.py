"""Every error Lamina raises on purpose, in one standard-library module.

The classes live here, below every package, so that code which only needs to *name* them
(``lamina.api.errors``'s table from error to HTTP status and code, the command line's error
handling) imports no store, indexer or encoder code, and so no numpy, FAISS or DuckDB.
Each package re-exports its own family under its old place (``lamina.search.errors``,
``lamina.indexer.errors``, ``lamina.encoders.errors``); the classes are the same objects.

Three families, one base each: :class:`StoreError` (the store and search),
:class:`IndexerError` (files to segments), :class:`EncoderError` (images to vectors).
These are server-side errors; the client's error is ``lamina.LaminaError``.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# The store and search (lamina.search)


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


class ManifestFormatError(StoreError, ValueError):
    """A manifest file cannot be read, or a value does not fit its column (names file, line and
    column)."""


class RootError(StoreError, ValueError):
    """A root cannot be declared or moved as asked (bad name, not a folder, name taken)."""


class RootNotFoundError(RootError):
    """No root of that name, or no root or source under that folder."""


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


# ---------------------------------------------------------------------------------------------
# The indexer (lamina.indexer)


class IndexerError(Exception):
    """Base class of every error the indexer raises on purpose."""


class ClusterError(IndexerError):
    """The Ray cluster of ``--cluster`` cannot be joined or cannot run the ingest (no room for
    the encoders, an encoder that does not start, Ray missing)."""


class ManifestError(IndexerError):
    """The manifest CSV is unreadable, lacks the source column, or matches ambiguously."""


class UnreadableSourceError(IndexerError):
    """A file could not be read as an image or slide (the message names file and reason)."""


class SourceChangedError(IndexerError):
    """A source file's bytes changed since it was indexed: its stored tiles no longer show it."""


class MissingMppError(IndexerError):
    """A slide has no microns-per-pixel in its properties, the manifest or --mpp-override."""


class UnsupportedSourceError(IndexerError):
    """A file type Lamina does not index."""


class SlideResolutionError(IndexerError):
    """A slide's finest level is too coarse for the target mpp of the collection."""


class ImportFormatError(IndexerError):
    """An embeddings file is unreadable or not in a known layout (names the file, and the row
    at fault where there is one)."""


class ImportValidationError(IndexerError):
    """A vector or row of an embeddings file fails a check (names the file and the row)."""


class DeclaredEncoderError(IndexerError):
    """``--encoder-name`` / ``--dim`` do not describe an encoder vectors can be bound to."""


# ---------------------------------------------------------------------------------------------
# The encoders (lamina.encoders)


class EncoderError(Exception):
    """Base class of every error the encoders package raises on purpose."""


class UnknownEncoderError(EncoderError, KeyError):
    """No encoder is registered under the requested key."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown encoder"


class DuplicateEncoderError(EncoderError):
    """An encoder key was registered twice."""


class WeightsNotFoundError(EncoderError):
    """The weights an encoder needs are not on this machine."""


class WeightsMismatchError(EncoderError):
    """A weights file exists but is not the expected one (sha256 or shape mismatch)."""


class InvalidImageBatchError(EncoderError, ValueError):
    """The images handed to an encoder are not uint8 RGB arrays."""


class TestEncoderRefusedError(EncoderError):
    """A test/* encoder was requested where only real encoders are allowed."""

    __test__ = False  # not a pytest test class despite the name


class NoLocalEncoderError(EncoderError):
    """A collection's vectors were made elsewhere and no encoder here makes them, so it cannot
    be queried by image or slide region."""
