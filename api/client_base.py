"""The plumbing of :class:`lamina.api.client.Client`: the server's address, the token, the
transport and the two request helpers ``_raw`` (status, headers, body; an HTTP error status
raises the :class:`~lamina.api.client_http.LaminaError` subclass for its code) and ``_json``
(the body parsed). Standard library only; the method groups (client_search, client_data,
client_admin) build on it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lamina.api.client_http import Transport, _error_class, resolve_token, urllib_transport


class ClientBase:
    """Address, token, transport and timeout of one Lamina server, and the request helpers."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        transport: Transport | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.base = self.url + "/api/v1"
        self.token = resolve_token(self.url, token) if token is None else (token or None)
        self.transport: Transport = transport or urllib_transport
        self.timeout = timeout

    # -- plumbing ----------------------------------------------------------------------------
    def _raw(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: bytes | None = None,
        content_type: str | None = None,
        query: Mapping[str, Any] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        from urllib.parse import urlencode

        url = self.base + path
        q = {k: v for k, v in (query or {}).items() if v is not None}
        if q:
            url += "?" + urlencode(q)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            content_type = "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        status, resp_headers, data = self.transport(method, url, headers, body, self.timeout)
        if status >= 400:
            try:
                err = json.loads(data)
                code, message = str(err.get("code", "HTTP_ERROR")), str(err.get("error", ""))
            except (ValueError, AttributeError):
                code, message = "HTTP_ERROR", data[:200].decode("utf-8", "replace")
            raise _error_class(status, code)(status, code, message)
        return status, resp_headers, data

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        _, _, data = self._raw(method, path, **kwargs)
        return json.loads(data)  # type: ignore[no-any-return]
