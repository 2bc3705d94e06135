"""Errors raised by the indexer. All derive from IndexerError.

Defined in :mod:`lamina.errors` and re-exported here."""

from __future__ import annotations

from lamina.errors import (
    ClusterError,
    DeclaredEncoderError,
    ImportFormatError,
    ImportValidationError,
    IndexerError,
    ManifestError,
    MissingMppError,
    SlideResolutionError,
    SourceChangedError,
    UnreadableSourceError,
    UnsupportedSourceError,
)

__all__ = [
    "ClusterError",
    "DeclaredEncoderError",
    "ImportFormatError",
    "ImportValidationError",
    "IndexerError",
    "ManifestError",
    "MissingMppError",
    "SlideResolutionError",
    "SourceChangedError",
    "UnreadableSourceError",
    "UnsupportedSourceError",
]
