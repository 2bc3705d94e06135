"""Background jobs: long work (probes, exports, imports) runs off the request threads.

``POST /probes``, ``/exports`` and ``/collections/{c}/import`` answer 202 with a job document;
``GET /jobs/{id}`` reports ``status`` (queued, running, done, failed, cancelled), ``progress``
(0..1) with a ``message``, and, once done, the ``result`` (or ``error``: the same
``{status, code, error}`` body a synchronous request would have answered). An export's file is
fetched from ``GET /jobs/{id}/file`` (the job's ``download``, relative to /api/v1/).
``DELETE /jobs/{id}`` cancels: a queued job never runs; a running one stops at its next
progress point (between probe fractions, between export stages) and its output is
discarded; a running import finishes (what it committed stays committed).

Bounds: ``JOB_WORKERS`` threads (default 1) run jobs in submission order; at most
``JOB_QUEUE`` jobs (default 16) may wait, a further submission is refused with 429
``JOB_QUEUE_FULL`` and ``Retry-After``. Finished jobs are kept ``JOB_KEEP_S`` seconds (default
3600) and at most 64 of them, then forgotten with their files. Job ids are 128-bit random
(unguessable); jobs live in the server's memory and end with it.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.api.errors import ApiError, error_body

STATES = ("queued", "running", "done", "failed", "cancelled")
MAX_FINISHED = 64


class JobCancelled(Exception):
    """Raised inside a job at a progress point once it was cancelled."""


@dataclass
class Job:
    id: str
    kind: str
    collection: str | None
    workdir: Path
    run: Callable[[Job], dict[str, Any]]
    status: str = "queued"
    progress: float = 0.0
    message: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    file: Path | None = None
    file_name: str | None = None
    file_type: str | None = None
    file_headers: dict[str, str] = field(default_factory=dict)
    cancel_requested: threading.Event = field(default_factory=threading.Event)

    def report(self, fraction: float, message: str) -> None:
        """Progress point: record progress, and stop here if the job was cancelled."""
        if self.cancel_requested.is_set():
            raise JobCancelled
        self.progress = max(0.0, min(1.0, float(fraction)))
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "collection": self.collection,
            "status": self.status,
            "progress": round(self.progress, 4),
            "message": self.message,
            "created": _iso(self.created),
            "started": _iso(self.started),
            "finished": _iso(self.finished),
        }
        if self.result is not None:
            doc["result"] = self.result
        if self.error is not None:
            doc["error"] = self.error
        if self.file is not None and self.status == "done":
            doc["download"] = f"jobs/{self.id}/file"  # relative to /api/v1/
        return doc


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class JobQueue:
    """A bounded queue of jobs and a small pool of worker threads (one per app)."""

    def __init__(self, workers: int = 1, max_queued: int = 16, keep_s: float = 3600.0) -> None:
        self.workers = max(1, int(workers))
        self.max_queued = max(1, int(max_queued))
        self.keep_s = float(keep_s)
        self.root = Path(tempfile.mkdtemp(prefix="lamina-jobs-"))
        atexit.register(shutil.rmtree, self.root, True)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []

    # -- submitting and looking up -------------------------------------------------------------
    def workdir(self) -> tuple[str, Path]:
        """A fresh job id and its private working directory (for uploads saved before submit)."""
        job_id = uuid.uuid4().hex
        path = self.root / job_id
        path.mkdir()
        return job_id, path

    def submit(
        self,
        kind: str,
        run: Callable[[Job], dict[str, Any]],
        collection: str | None = None,
        prepared: tuple[str, Path] | None = None,
    ) -> Job:
        job_id, path = prepared or self.workdir()
        with self._cond:
            self._expire()
            if len(self._queue) >= self.max_queued:
                shutil.rmtree(path, ignore_errors=True)
                err = ApiError(
                    f"{len(self._queue)} jobs are waiting (the limit); retry later",
                    429,
                    "JOB_QUEUE_FULL",
                )
                raise err
            job = Job(job_id, kind, collection, path, run)
            self._jobs[job_id] = job
            self._queue.append(job)
            self._start_workers()
            self._cond.notify()
        return job

    def get(self, job_id: str) -> Job:
        with self._cond:
            self._expire()
            job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(
                f"no job {job_id[:64]!r} (finished jobs are kept for a while)", 404, "JOB_NOT_FOUND"
            )
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        with self._cond:
            if job.status == "queued":
                self._queue.remove(job)
                self._finish(job, "cancelled", "cancelled before it started")
            elif job.status == "running":
                job.cancel_requested.set()
                job.message = "cancelling"
        return job

    def close(self) -> None:
        """Cancel every queued and running job (a server or test shutting down)."""
        with self._cond:
            while self._queue:
                self._finish(self._queue.popleft(), "cancelled", "cancelled: shutting down")
            for job in self._jobs.values():
                if job.status == "running":
                    job.cancel_requested.set()

    def counts(self) -> dict[str, int]:
        with self._cond:
            out = dict.fromkeys(STATES, 0)
            for job in self._jobs.values():
                out[job.status] += 1
            return out

    # -- running -------------------------------------------------------------------------------
    def _start_workers(self) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self.workers:
            t = threading.Thread(target=self._work, name="lamina-job", daemon=True)
            t.start()
            self._threads.append(t)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                job = self._queue.popleft()
                job.status, job.started, job.message = "running", time.time(), "running"
            try:
                result = job.run(job)
            except JobCancelled:
                with self._cond:
                    self._finish(job, "cancelled", "cancelled")
                continue
            except BaseException as exc:  # noqa: BLE001 - a job's failure is its answer
                self._failed(job, exc)
                continue
            with self._cond:
                if job.cancel_requested.is_set():
                    self._finish(job, "cancelled", "cancelled")
                else:
                    job.result = result
                    job.progress = 1.0
                    self._finish(job, "done", "done")

    def _failed(self, job: Job, exc: BaseException) -> None:
        import logging

        body = error_body(exc)
        if int(body["status"]) >= 500:  # type: ignore[call-overload]
            logging.getLogger("lamina.api").error(
                "job %s (%s) failed", job.id, job.kind, exc_info=exc
            )
        with self._cond:
            job.error = body
            self._finish(job, "failed", str(body["error"]))

    def _finish(self, job: Job, status: str, message: str) -> None:
        job.status, job.message, job.finished = status, message, time.time()
        if status != "done":
            job.file = None
            shutil.rmtree(job.workdir, ignore_errors=True)
        elif job.file is None:
            shutil.rmtree(job.workdir, ignore_errors=True)

    def _expire(self) -> None:
        """Forget finished jobs older than keep_s, and all but the newest MAX_FINISHED."""
        now = time.time()
        finished = [j for j in self._jobs.values() if j.finished is not None]
        excess = len(finished) - MAX_FINISHED
        for i, job in enumerate(finished):
            if i < excess or now - float(job.finished or now) > self.keep_s:
                self._jobs.pop(job.id, None)
                shutil.rmtree(job.workdir, ignore_errors=True)
