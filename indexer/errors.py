"""Errors raised by the indexer. All derive from IndexerError."""

from __future__ import annotations


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
