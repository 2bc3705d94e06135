"""Errors raised by the encoders package. All derive from EncoderError.

Defined in :mod:`lamina.errors` and re-exported here."""

from __future__ import annotations

from lamina.errors import (
    DuplicateEncoderError,
    EncoderError,
    InvalidImageBatchError,
    NoLocalEncoderError,
    TestEncoderRefusedError,
    UnknownEncoderError,
    WeightsMismatchError,
    WeightsNotFoundError,
)

__all__ = [
    "DuplicateEncoderError",
    "EncoderError",
    "InvalidImageBatchError",
    "NoLocalEncoderError",
    "TestEncoderRefusedError",
    "UnknownEncoderError",
    "WeightsMismatchError",
    "WeightsNotFoundError",
]
