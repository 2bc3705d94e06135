"""Background jobs: the queue's bounds and cancellation (real threads), and over HTTP a probe
that is cancelled while it runs, and an export fetched through the client."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lamina.api.errors import ApiError
from lamina.api.jobs import Job, JobQueue


def _until(pred: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(pred())


def test_queue_bound_cancel_and_expiry() -> None:
    q = JobQueue(workers=1, max_queued=2, keep_s=3600)
    release = threading.Event()
    ran: list[str] = []

    def blocking(job: Job) -> dict[str, Any]:
        ran.append(job.id)
        while not release.is_set():
            job.report(0.5, "waiting")
            time.sleep(0.01)
        return {"n": 1}

    first = q.submit("probe", blocking)
    assert _until(lambda: first.status == "running")
    second, third = q.submit("probe", blocking), q.submit("export", blocking)
    with pytest.raises(ApiError) as exc:
        q.submit("probe", blocking)
    assert exc.value.status == 429 and exc.value.code == "JOB_QUEUE_FULL"
    assert q.cancel(second.id).status == "cancelled"  # queued: never runs
    q.cancel(first.id)  # running: stops at its next progress point
    assert _until(lambda: first.status == "cancelled")
    assert _until(lambda: third.status == "running")
    release.set()
    assert _until(lambda: third.status == "done")
    assert third.result == {"n": 1} and third.progress == 1.0
    assert second.id not in ran and first.id in ran
    assert not first.workdir.exists() and not second.workdir.exists()
    q.keep_s = 0
    time.sleep(0.01)
    with pytest.raises(ApiError) as exc:
        q.get(third.id)
    assert exc.value.status == 404 and exc.value.code == "JOB_NOT_FOUND"


def test_a_failed_job_carries_the_error_body() -> None:
    from lamina.search.errors import InvalidQueryError

    q = JobQueue()

    def bad(job: Job) -> dict[str, Any]:
        raise InvalidQueryError("a probe needs at least two classes")

    job = q.submit("probe", bad)
    assert _until(lambda: job.status == "failed")
    assert job.error == {
        "ok": False,
        "status": 422,
        "code": "INVALID_QUERY",
        "error": "a probe needs at least two classes",
    }
    q.close()


@pytest.fixture()
def jobs_app(derm_home: Path, tmp_path: Path) -> Any:
    from lamina.api.app import create_app

    home = tmp_path / "home"
    shutil.copytree(derm_home / "collections", home / "collections")
    app = create_app({"HOME": str(home), "TESTING": True, "API_TOKEN": None})
    yield app
    app.extensions["lamina_jobs"].close()


def test_probe_cancelled_while_running_and_export_through_client(
    jobs_app: Any, flask_transport_cls: Any, tmp_path: Path
) -> None:
    from lamina.api.client import Client, LaminaError

    c = jobs_app.test_client()
    body = {
        "collection": "derm",
        "label_column": "diagnostic",
        "split_by": "patient_id",
        "fractions": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1],
    }
    r = c.post("/api/v1/probes", json=body)
    assert r.status_code == 202
    job_id = r.get_json()["job"]["id"]

    def status() -> dict[str, Any]:
        return c.get(f"/api/v1/jobs/{job_id}").get_json()["job"]

    assert _until(lambda: status()["message"].startswith("training fraction"), 60)
    r = c.delete(f"/api/v1/jobs/{job_id}")
    assert r.status_code == 200
    assert _until(lambda: status()["status"] == "cancelled", 60), status()
    assert "result" not in status()
    assert c.get("/api/v1/jobs").get_json()["counts"]["cancelled"] == 1
    assert c.get(f"/api/v1/jobs/{job_id}/file").status_code == 409

    seen: list[dict[str, Any]] = []
    client = Client("http://in-process", transport=flask_transport_cls(jobs_app))
    info = client.export(
        "derm", label_column="diagnostic", out=tmp_path / "e.csv", progress=seen.append
    )
    assert info.snapshot and info.n_bytes > 1000 and (tmp_path / "e.csv").stat().st_size > 1000
    assert seen[-1]["status"] == "done" and seen[-1]["download"].endswith("/file")
    with pytest.raises(LaminaError) as exc:
        client.probe("derm", "diagnostic", split_by="nope")
    assert exc.value.status == 422 and "nope" in exc.value.message
