"""The Lamina Python client: typed results over the HTTP API. Standard library only.

Importing this module imports neither Flask, torch, faiss, duckdb nor numpy, so querying a
remote server from a laptop stays cheap::

    from lamina.api.client import Client
    c = Client("http://127.0.0.1:8000")  # token: argument, $LAMINA_TOKEN or the config file
    res = c.search_image("derm", "lesion.jpg", k=10, filter={"label": {"in": ["MEL"]}})
"""

from __future__ import annotations

from typing import Any

from lamina.api.client_admin import AdminMixin
from lamina.api.client_data import DataMixin
from lamina.api.client_http import (
    ConfigError,
    Conflict,
    EncoderMismatch,
    Forbidden,
    InvalidRequest,
    LaminaError,
    NotFound,
    PayloadTooLarge,
    ServerError,
    Transport,
    Unauthorized,
    _q,
    resolve_token,
    urllib_transport,
)
from lamina.api.client_search import SearchMixin
from lamina.api.client_types import (
    BatchResult,
    CohortInfo,
    Document,
    ExportInfo,
    Group,
    Hit,
    ProbeReport,
    SearchResult,
)

__all__ = [
    "BatchResult",
    "Client",
    "CohortInfo",
    "ConfigError",
    "Conflict",
    "Document",
    "EncoderMismatch",
    "ExportInfo",
    "Forbidden",
    "Group",
    "Hit",
    "InvalidRequest",
    "LaminaError",
    "NotFound",
    "PayloadTooLarge",
    "ProbeReport",
    "SearchResult",
    "ServerError",
    "Transport",
    "Unauthorized",
    "resolve_token",
    "urllib_transport",
]


class Client(SearchMixin, DataMixin, AdminMixin):
    """A Lamina server at ``url`` (e.g. ``http://127.0.0.1:8000``).

    ``token`` None looks one up (:func:`api.client_http.resolve_token`: ``$LAMINA_TOKEN``, then
    the 0600 config file); ``token=""`` sends none. The calls come in groups, one module each:
    :class:`~lamina.api.client_search.SearchMixin` (search, pictures),
    :class:`~lamina.api.client_data.DataMixin` (cohorts, exports, probes) and
    :class:`~lamina.api.client_admin.AdminMixin` (collection settings, maintenance, edits,
    roots, imports), over :class:`~lamina.api.client_base.ClientBase` (``_raw``, ``_json``)."""

    # -- service -----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._json("GET", "/health")

    def encoders(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/encoders")["encoders"])

    def collections(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/collections")["collections"])

    def collection(self, name: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/collections/{_q(name)}")["collection"])

    def facets(self, collection: str, max_values: int | None = None) -> dict[str, Any]:
        """The collection's filterable metadata columns: numeric ones with min/max/count,
        text ones with their most frequent values and tile counts (capped at ``max_values``)."""
        return self._json(
            "GET", f"/collections/{_q(collection)}/facets", query={"max_values": max_values}
        )

    def openapi(self) -> dict[str, Any]:
        return self._json("GET", "/openapi.json")
