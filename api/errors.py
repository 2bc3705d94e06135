"""One table from domain errors to (HTTP status, stable code), shared by the API and the CLI.

Errors not in this table are bugs: the API answers 500 INTERNAL without details.
"""

from __future__ import annotations

from dataclasses import dataclass

from lamina.encoders import errors as enc
from lamina.indexer import errors as idx
from lamina.search import errors as st


class ApiError(Exception):
    """An error raised by the API layer itself (bad request shape, upload limits...)."""

    status = 400
    code = "BAD_REQUEST"

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


@dataclass(frozen=True)
class ErrorInfo:
    status: int
    code: str


# Most specific classes first: the first isinstance match wins.
ERROR_TABLE: tuple[tuple[type[BaseException], ErrorInfo], ...] = (
    (st.CollectionNotFoundError, ErrorInfo(404, "COLLECTION_NOT_FOUND")),
    (st.TileNotFoundError, ErrorInfo(404, "TILE_NOT_FOUND")),
    (st.SourceNotFoundError, ErrorInfo(404, "SOURCE_NOT_FOUND")),
    (st.CohortNotFoundError, ErrorInfo(404, "COHORT_NOT_FOUND")),
    (st.EncoderMismatchError, ErrorInfo(409, "ENCODER_MISMATCH")),
    (st.CollectionExistsError, ErrorInfo(409, "COLLECTION_CONFLICT")),
    (st.CatalogLockedError, ErrorInfo(409, "CATALOG_LOCKED")),
    (st.CatalogDamagedError, ErrorInfo(500, "CATALOG_DAMAGED")),
    (st.CollectionDamagedError, ErrorInfo(409, "COLLECTION_DAMAGED")),
    (st.DamagedStoreError, ErrorInfo(409, "SEGMENT_DAMAGED")),
    (st.StaleCohortError, ErrorInfo(409, "COHORT_STALE")),
    (st.FilterError, ErrorInfo(422, "INVALID_FILTER")),
    (st.InvalidQueryError, ErrorInfo(422, "INVALID_QUERY")),
    (st.InvalidIndexFactoryError, ErrorInfo(422, "INVALID_INDEX_FACTORY")),
    (st.ShardUnavailableError, ErrorInfo(503, "SHARD_UNAVAILABLE")),
    (st.DiskFullError, ErrorInfo(507, "DISK_FULL")),
    (st.StoreIOError, ErrorInfo(500, "IO_ERROR")),
    (st.StoreError, ErrorInfo(500, "STORE_ERROR")),
    (enc.UnknownEncoderError, ErrorInfo(404, "ENCODER_NOT_FOUND")),
    (enc.WeightsNotFoundError, ErrorInfo(503, "WEIGHTS_MISSING")),
    (enc.WeightsMismatchError, ErrorInfo(409, "WEIGHTS_MISMATCH")),
    (enc.TestEncoderRefusedError, ErrorInfo(403, "TEST_ENCODER_REFUSED")),
    (enc.InvalidImageBatchError, ErrorInfo(422, "INVALID_IMAGE")),
    (enc.NoLocalEncoderError, ErrorInfo(422, "NO_LOCAL_ENCODER")),
    (enc.EncoderError, ErrorInfo(500, "ENCODER_ERROR")),
    (idx.SourceChangedError, ErrorInfo(409, "SOURCE_CHANGED")),
    (idx.UnreadableSourceError, ErrorInfo(422, "UNREADABLE_IMAGE")),
    (idx.MissingMppError, ErrorInfo(422, "MISSING_MPP")),
    (idx.SlideResolutionError, ErrorInfo(422, "SLIDE_RESOLUTION_TOO_LOW")),
    (idx.ManifestError, ErrorInfo(422, "INVALID_MANIFEST")),
    (idx.UnsupportedSourceError, ErrorInfo(415, "UNSUPPORTED_SOURCE")),
    (idx.ImportFormatError, ErrorInfo(422, "INVALID_IMPORT")),
    (idx.ImportValidationError, ErrorInfo(422, "INVALID_IMPORT")),
    (idx.DeclaredEncoderError, ErrorInfo(422, "INVALID_ENCODER_NAME")),
    (idx.ClusterError, ErrorInfo(503, "CLUSTER_UNAVAILABLE")),
    (idx.IndexerError, ErrorInfo(500, "INDEXER_ERROR")),
)

DOMAIN_ERRORS = (st.StoreError, enc.EncoderError, idx.IndexerError, ApiError)


def error_info(exc: BaseException) -> ErrorInfo:
    if isinstance(exc, ApiError):
        return ErrorInfo(exc.status, exc.code)
    for cls, info in ERROR_TABLE:
        if isinstance(exc, cls):
            return info
    return ErrorInfo(500, "INTERNAL")


def error_body(exc: BaseException) -> dict[str, object]:
    info = error_info(exc)
    message = str(exc) if isinstance(exc, DOMAIN_ERRORS) else "internal error"
    return {"ok": False, "status": info.status, "code": info.code, "error": message}
