"""Slides & photos -> tiles -> vectors -> committed segments."""

from indexer.errors import IndexerError, ManifestError, MissingMppError, UnreadableSourceError
from indexer.manifest import Manifest
from indexer.pipeline import IngestOptions, RunReport, ingest

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
