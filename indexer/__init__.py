"""Slides & photos -> tiles -> vectors -> committed segments."""

from lamina.indexer.errors import (
    IndexerError,
    ManifestError,
    MissingMppError,
    UnreadableSourceError,
)
from lamina.indexer.manifest import Manifest
from lamina.indexer.pipeline import IngestOptions, RunReport, ingest

__all__ = [
    "IndexerError",
    "IngestOptions",
    "Manifest",
    "ManifestError",
    "MissingMppError",
    "RunReport",
    "UnreadableSourceError",
    "ingest",
]
