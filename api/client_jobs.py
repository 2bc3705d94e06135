"""Waiting on the server's background jobs (probes, exports, imports) from the Python client.
Standard library only.

A job route answers 202 with ``{"job": {...}}``; :func:`wait_for_job` polls
``GET /jobs/{id}`` (every ``poll_s`` seconds, backing off to 2 s) until the job is done,
calls ``progress(job)`` whenever its progress or message changes, and returns the final job
document. A failed job raises the error it failed with (the same class and code a
synchronous answer would have raised); a cancelled one raises ``LaminaError(409,
"JOB_CANCELLED")``. Interrupted (Ctrl-C) or past ``timeout_s``, it cancels the job on the
server first (``DELETE /jobs/{id}``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any, Protocol

from lamina.api.client_http import LaminaError, _error_class, _q

Progress = Callable[[dict[str, Any]], None]


class _Raw(Protocol):
    def _raw(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]: ...


def accepted_job(data: bytes) -> dict[str, Any]:
    """The job document of a 202 answer."""
    doc = json.loads(data)
    job = doc.get("job") if isinstance(doc, dict) else None
    if not isinstance(job, dict) or "id" not in job:
        raise LaminaError(0, "BAD_ANSWER", "the server answered without a job")
    return job


def wait_for_job(
    client: _Raw,
    job: dict[str, Any],
    progress: Progress | None = None,
    poll_s: float = 0.2,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Poll a job to its end (see the module docstring); -> the job document when done."""
    path = f"/jobs/{_q(str(job['id']))}"
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    seen: tuple[Any, Any] = (None, None)
    delay = poll_s
    try:
        while True:
            key = (job.get("progress"), job.get("message"))
            if progress is not None and key != seen:
                progress(job)
            seen = key
            if job.get("status") not in ("queued", "running"):
                break
            if deadline is not None and time.monotonic() > deadline:
                raise LaminaError(0, "JOB_TIMEOUT", f"job {job['id']} did not finish in time")
            time.sleep(delay)
            delay = min(2.0, delay * 1.5)
            _, _, data = client._raw("GET", path)
            job = json.loads(data)["job"]
    except (KeyboardInterrupt, LaminaError) as exc:
        if isinstance(exc, KeyboardInterrupt) or exc.code == "JOB_TIMEOUT":
            with contextlib.suppress(LaminaError):
                client._raw("DELETE", path)
        raise
    status = job.get("status")
    if status == "done":
        return job
    if status == "failed":
        err = job.get("error") or {}
        code, http = str(err.get("code") or "JOB_FAILED"), int(err.get("status") or 500)
        failure = _error_class(http, code)(http, code, str(err.get("error") or "job failed"))
        failure.job = job  # type: ignore[attr-defined]
        raise failure
    raise LaminaError(409, "JOB_CANCELLED", f"job {job['id']} was cancelled")


def stderr_progress(label: str) -> Progress:
    """A ``progress`` callback printing ``label: 40% training fraction 0.5`` lines to stderr."""
    import sys

    def show(job: dict[str, Any]) -> None:
        pct = round(100 * float(job.get("progress") or 0))
        print(
            f"{label}: {job.get('status')} {pct}% {job.get('message') or ''}".rstrip(),
            file=sys.stderr,
            flush=True,
        )

    return show
