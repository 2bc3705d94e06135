"""Slides & photos -> tiles -> vectors -> committed segments."""

from lamina.indexer.errors import (
    IndexerError,
    ManifestError,
    MissingMppError,
    UnreadableSourceError,
)
from lamina.indexer.ingest_types import IngestOptions
from lamina.indexer.manifest import Manifest
from lamina.indexer.pipeline import ingest
from lamina.indexer.run_report import RunReport

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
