"""The HTTP fuzzer, CI size: no request yields a 5xx.

Two parts, run against the app over a copy of the derm collection: (1) schemathesis over the
app's own openapi.json, every documented operation; (2) hypothesis over the hostile families
of bench/fuzz_cases.py (numbers past every edge in every numeric slot, deep JSON in bodies and
multipart fields, mutated image uploads). About 1,500 requests; ``python -m bench.fuzz`` runs
10,000 against a real ``lamina serve``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from bench.fuzz_cases import hostile_requests, image_pool, to_flask  # noqa: E402

MAX_EXAMPLES = 30
HOSTILE_EXAMPLES = 1000


@pytest.fixture(scope="module")
def fuzz_app(derm_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from lamina.api.app import create_app

    home = tmp_path_factory.mktemp("fuzz") / "home"
    shutil.copytree(derm_home / "collections", home / "collections")
    app = create_app({"HOME": str(home), "TESTING": True, "API_TOKEN": None, "JOB_QUEUE": 2})
    yield app
    jobs = app.extensions.get("lamina_jobs")
    if jobs is not None:
        jobs.close()


def _check(status: int, headers: dict[str, str], body: bytes, what: Any) -> None:
    assert status < 500, (what, body[:300])
    if status >= 400 and "json" in headers.get("Content-Type", ""):
        doc = json.loads(body)
        assert doc["ok"] is False and doc["code"] and doc["status"] == status, doc
        assert len(doc["error"]) < 1000, doc["error"][:200]  # never echoes a huge value
    if status == 429:
        assert headers.get("Retry-After"), what


@pytest.mark.slow
def test_no_server_errors(fuzz_app: Any) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", fuzz_app)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 14
    seen: list[str] = []
    for op in operations:

        @given(case=op.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            response = case.call()
            _check(
                response.status_code,
                dict(response.headers),
                response.content,
                (case.method, case.formatted_path, case.query, case.body),
            )

        run()
        seen.append(f"{op.method.upper()} {op.path}")
    assert "POST /collections/{c}/search" in seen
    assert "GET /jobs/{job_id}" in seen


@pytest.mark.slow
def test_hostile_requests(fuzz_app: Any, derm_images: list[Path]) -> None:
    client = fuzz_app.test_client()
    col = fuzz_app.extensions["lamina"].service.collection("derm")
    pool = image_pool(derm_images[0].read_bytes())
    statuses: Counter[int] = Counter()
    families: Counter[str] = Counter()
    started = time.monotonic()

    @given(req=hostile_requests("derm", col.dim, 3, pool))
    @settings(
        max_examples=HOSTILE_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(req: Any) -> None:
        status, headers, body = to_flask(client, req)
        statuses[status] += 1
        families[req.family.split(":")[0]] += 1
        _check(status, headers, body, req.summary())

    run()
    elapsed = time.monotonic() - started
    print(f"{sum(statuses.values())} hostile requests in {elapsed:.1f}s: {dict(statuses)}")
    # every family was exercised, and the edge cases were refused, not just answered
    for family in (
        "filter_json",
        "expr",
        "vector",
        "deep_body",
        "deep_filter_field",
        "image",
        "seed",
        "near_tile_ids",
        "k",
    ):
        assert families[family] > 0, families
    assert statuses[422] + statuses[400] + statuses[413] > sum(statuses.values()) // 3
