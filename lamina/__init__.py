"""Lamina: embedding search for pathology whole-slide images and dermatology photos.

The installed distribution has one top-level name, ``lamina``. Its parts are
``lamina.encoders`` (images -> vectors), ``lamina.indexer`` (files -> tiles -> segments),
``lamina.search`` (the store and search) and ``lamina.api`` (server, CLI, client).

``from lamina import Client`` needs nothing beyond the standard library: this module imports
the client lazily, and the client imports no server code, torch, faiss, duckdb or numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lamina.api.client import Client, LaminaError

__all__ = ["Client", "LaminaError", "__version__"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lamina")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


__version__ = _version()


def __getattr__(name: str) -> Any:
    if name in ("Client", "LaminaError"):
        from lamina.api import client

        return getattr(client, name)
    raise AttributeError(f"module 'lamina' has no attribute {name!r}")
