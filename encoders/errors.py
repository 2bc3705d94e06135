"""Errors raised by the encoders package. All derive from EncoderError."""

from __future__ import annotations


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
