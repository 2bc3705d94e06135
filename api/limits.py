"""Bounds on what one request may send and cost: JSON size and depth, numbers, ids, seeds,
in-flight search slots and a per-request deadline.

- JSON (request bodies, and JSON sent inside multipart fields such as ``filter``/``params``)
  is checked *before* decoding: size in bytes, then nesting depth counted over the raw text
  with strings blanked out (a vectorised scan, so a 30 MB body costs milliseconds and a
  100,000-deep document never reaches the recursive decoder). ``NaN``/``Infinity`` literals
  are refused (they are not JSON). Errors are 400 ``BAD_REQUEST`` naming the field.
- Integers: ids are int64 (``0 <= id < 2**63``), seeds are ``0 <= seed < 2**32`` (numpy's
  and scikit-learn's seed range); floats must be finite.
- Load shedding: at most ``MAX_INFLIGHT`` data requests (searches, collection status, tiles,
  image renders, cohort creation) run at once per process; the next one is answered at once
  with 429 ``OVERLOADED`` and ``Retry-After`` instead of waiting in a queue. ``lamina serve``
  sets it to half its threads, so the other half answer refusals and cheap routes at once.
- Deadline: each guarded request has ``SEARCH_TIMEOUT_S`` seconds (default 30); waits for
  shared resources (the embedding lock) are bounded by what is left, and a request past its
  deadline answers 503 ``DEADLINE_EXCEEDED``. Work that cannot finish in that time belongs in
  a background job (see api/jobs.py).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import numpy as np
from flask import Request, Response, current_app, g, jsonify
from flask import json as flask_json

from lamina.api.errors import ApiError

MAX_JSON_DEPTH = 32
MAX_FIELD_JSON_BYTES = 64 * 1024  # JSON inside one multipart field (filter, params)
INT64_MAX = 2**63 - 1
SEED_MAX = 2**32 - 1
DEFAULT_MAX_INFLIGHT = 6
DEFAULT_SEARCH_TIMEOUT_S = 30.0
RETRY_AFTER_S = 1

_STRING_RE = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1

F = TypeVar("F", bound=Callable[..., Any])


def _bad_json(message: str) -> ApiError:
    return ApiError(message, 400, "BAD_REQUEST")


def json_depth(data: bytes) -> int:
    """Deepest nesting of arrays/objects in a JSON text (strings ignored)."""
    if b"[" not in data and b"{" not in data:
        return 0
    bare = _STRING_RE.sub(b'""', data) if b'"' in data else data
    steps = _OPEN[np.frombuffer(bare, np.uint8)]
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads_bounded(data: str | bytes, field: str = "body", max_bytes: int | None = None) -> Any:
    """Decode JSON after the size and depth checks; ApiError(400) naming ``field`` otherwise."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if max_bytes is not None and len(raw) > max_bytes:
        raise _bad_json(f"{field}: JSON of {len(raw):,} bytes; the limit is {max_bytes:,}")
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise _bad_json(f"{field}: JSON nested {depth} levels deep; the limit is {MAX_JSON_DEPTH}")
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise _bad_json(f"{field}: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, a 5,000-digit integer
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise _bad_json(f"{field} is not valid JSON: {msg[:200]}") from None


class _BoundedJSON:
    """The ``json_module`` of :class:`BoundedRequest`: request bodies via :func:`loads_bounded`."""

    @staticmethod
    def loads(s: str | bytes, **kwargs: Any) -> Any:
        return loads_bounded(s, "body")

    @staticmethod
    def dumps(obj: Any, **kwargs: Any) -> str:
        return flask_json.dumps(obj, **kwargs)


class BoundedRequest(Request):
    """Flask's request whose ``get_json`` decodes under the JSON limits (Flask assigns the
    app's JSON provider to every request; this property keeps the bounded decoder)."""

    @property  # type: ignore[override]
    def json_module(self) -> Any:
        return _BoundedJSON

    @json_module.setter
    def json_module(self, value: Any) -> None:
        pass


def field_json(value: Any, field: str, code: str = "INVALID_QUERY") -> Any:
    """A field that carries JSON text (multipart ``filter``/``params``): decoded under the
    field limits; a bad one is 422 with ``code`` (INVALID_FILTER, INVALID_QUERY)."""
    if isinstance(value, str | bytes):
        try:
            return loads_bounded(value, field, MAX_FIELD_JSON_BYTES)
        except ApiError as exc:
            raise ApiError(str(exc), 422, code) from None
    return value


def short(value: Any, limit: int = 40) -> str:
    """``repr`` of a value cut to ``limit`` characters (error messages never echo megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def int_in(
    value: Any,
    field: str,
    lo: int,
    hi: int,
    default: int | None = None,
    code: str = "INVALID_QUERY",
) -> int | None:
    """An integer (JSON number or decimal text) within [lo, hi], or ``default`` when absent."""
    if value is None or value == "":
        return default
    out: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        out = value
    elif isinstance(value, float) and value.is_integer():
        out = int(value)
    elif isinstance(value, str) and len(value) <= 40:
        try:
            out = int(value.strip())
        except ValueError:
            out = None
    if out is None:
        raise ApiError(f"{field} must be an integer, got {short(value)}", 422, code)
    if not lo <= out <= hi:
        raise ApiError(f"{field} must be an integer in [{lo}, {hi}], got {short(out)}", 422, code)
    return out


def finite_float(value: Any, field: str, code: str = "INVALID_QUERY") -> float | None:
    """A finite float (JSON number or decimal text), or None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ApiError(f"{field} must be a number, got {short(value)}", 422, code)
    try:
        out = float(value)
    except (ValueError, OverflowError):
        raise ApiError(f"{field} must be a finite number, got {short(value)}", 422, code) from None
    if not np.isfinite(out):
        raise ApiError(f"{field} must be a finite number, got {short(value)}", 422, code)
    return out


def seed_of(value: Any, field: str = "seed") -> int:
    """A random seed: an integer in [0, 2**32 - 1] (default 0)."""
    return int(int_in(value, field, 0, SEED_MAX, default=0) or 0)


# -- load shedding and deadlines -------------------------------------------------------------------
class InflightGate:
    """A non-blocking counter of the requests running now (one per app)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self._n = 0
        self._lock = threading.Lock()
        self.shed = 0  # requests refused since start

    def try_enter(self) -> bool:
        with self._lock:
            if self._n >= self.limit:
                self.shed += 1
                return False
            self._n += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._n -= 1

    @property
    def running(self) -> int:
        return self._n


def gate() -> InflightGate:
    ext = current_app.extensions
    found = ext.get("lamina_gate")
    if found is None:
        with _GATE_LOCK:
            found = ext.get("lamina_gate")
            if found is None:
                limit = current_app.config.get("MAX_INFLIGHT") or DEFAULT_MAX_INFLIGHT
                found = ext["lamina_gate"] = InflightGate(int(limit))
    return found  # type: ignore[no-any-return]


_GATE_LOCK = threading.Lock()


def overloaded() -> Response:
    resp = jsonify(
        {
            "ok": False,
            "status": 429,
            "code": "OVERLOADED",
            "error": "too many requests in flight; retry after a moment",
        }
    )
    resp.status_code = 429
    resp.headers["Retry-After"] = str(RETRY_AFTER_S)
    return resp


def guarded(view: F) -> F:
    """Admit the request if a slot is free (else 429 at once) and give it a deadline."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        slots = gate()
        if not slots.try_enter():
            return overloaded()
        budget = float(current_app.config.get("SEARCH_TIMEOUT_S") or DEFAULT_SEARCH_TIMEOUT_S)
        g.lamina_deadline = time.monotonic() + budget
        try:
            return view(*args, **kwargs)
        finally:
            slots.leave()

    return wrapper  # type: ignore[return-value]


def remaining() -> float:
    """Seconds left to this request (inf outside a guarded request)."""
    deadline = g.get("lamina_deadline")
    return float("inf") if deadline is None else deadline - time.monotonic()


def deadline_exceeded() -> ApiError:
    return ApiError(
        "the request ran past its time budget (SEARCH_TIMEOUT_S); retry, or narrow the query",
        503,
        "DEADLINE_EXCEEDED",
    )


def acquire_within_deadline(lock: Any) -> None:
    """Acquire ``lock`` waiting at most the request's remaining time (503 past it)."""
    left = remaining()
    if left <= 0 or not lock.acquire(timeout=-1 if left == float("inf") else left):
        raise deadline_exceeded()
