"""One table from domain errors to (HTTP status, stable code), shared by the API and the CLI.

Errors not in this table are bugs: the API answers 500 INTERNAL without details. The classes
come from :mod:`lamina.errors` (standard library only), so importing this table loads no store,
indexer or encoder code.
"""

from __future__ import annotations

from dataclasses import dataclass

from lamina import errors as err


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
    (err.CollectionNotFoundError, ErrorInfo(404, "COLLECTION_NOT_FOUND")),
    (err.TileNotFoundError, ErrorInfo(404, "TILE_NOT_FOUND")),
    (err.SourceNotFoundError, ErrorInfo(404, "SOURCE_NOT_FOUND")),
    (err.CohortNotFoundError, ErrorInfo(404, "COHORT_NOT_FOUND")),
    (err.EncoderMismatchError, ErrorInfo(409, "ENCODER_MISMATCH")),
    (err.CollectionExistsError, ErrorInfo(409, "COLLECTION_CONFLICT")),
    (err.CatalogLockedError, ErrorInfo(409, "CATALOG_LOCKED")),
    (err.CatalogDamagedError, ErrorInfo(500, "CATALOG_DAMAGED")),
    (err.CollectionDamagedError, ErrorInfo(409, "COLLECTION_DAMAGED")),
    (err.DamagedStoreError, ErrorInfo(409, "SEGMENT_DAMAGED")),
    (err.StaleCohortError, ErrorInfo(409, "COHORT_STALE")),
    (err.FilterError, ErrorInfo(422, "INVALID_FILTER")),
    (err.ManifestFormatError, ErrorInfo(422, "INVALID_MANIFEST")),
    (err.RootNotFoundError, ErrorInfo(404, "ROOT_NOT_FOUND")),
    (err.RootError, ErrorInfo(422, "INVALID_ROOT")),
    (err.InvalidQueryError, ErrorInfo(422, "INVALID_QUERY")),
    (err.InvalidIndexFactoryError, ErrorInfo(422, "INVALID_INDEX_FACTORY")),
    (err.ShardUnavailableError, ErrorInfo(503, "SHARD_UNAVAILABLE")),
    (err.DiskFullError, ErrorInfo(507, "DISK_FULL")),
    (err.StoreIOError, ErrorInfo(500, "IO_ERROR")),
    (err.StoreError, ErrorInfo(500, "STORE_ERROR")),
    (err.UnknownEncoderError, ErrorInfo(404, "ENCODER_NOT_FOUND")),
    (err.WeightsNotFoundError, ErrorInfo(503, "WEIGHTS_MISSING")),
    (err.WeightsMismatchError, ErrorInfo(409, "WEIGHTS_MISMATCH")),
    (err.TestEncoderRefusedError, ErrorInfo(403, "TEST_ENCODER_REFUSED")),
    (err.InvalidImageBatchError, ErrorInfo(422, "INVALID_IMAGE")),
    (err.NoLocalEncoderError, ErrorInfo(422, "NO_LOCAL_ENCODER")),
    (err.EncoderError, ErrorInfo(500, "ENCODER_ERROR")),
    (err.SourceChangedError, ErrorInfo(409, "SOURCE_CHANGED")),
    (err.UnreadableSourceError, ErrorInfo(422, "UNREADABLE_IMAGE")),
    (err.MissingMppError, ErrorInfo(422, "MISSING_MPP")),
    (err.SlideResolutionError, ErrorInfo(422, "SLIDE_RESOLUTION_TOO_LOW")),
    (err.ManifestError, ErrorInfo(422, "INVALID_MANIFEST")),
    (err.UnsupportedSourceError, ErrorInfo(415, "UNSUPPORTED_SOURCE")),
    (err.ImportFormatError, ErrorInfo(422, "INVALID_IMPORT")),
    (err.ImportValidationError, ErrorInfo(422, "INVALID_IMPORT")),
    (err.DeclaredEncoderError, ErrorInfo(422, "INVALID_ENCODER_NAME")),
    (err.ClusterError, ErrorInfo(503, "CLUSTER_UNAVAILABLE")),
    (err.IndexerError, ErrorInfo(500, "INDEXER_ERROR")),
)

DOMAIN_ERRORS = (err.StoreError, err.EncoderError, err.IndexerError, ApiError)


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
