"""Property-based run of every documented operation (schemathesis): no answer is a 5xx."""

from __future__ import annotations

from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402

MAX_EXAMPLES = 30


def test_no_server_errors(app: Any) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
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
            assert response.status_code < 500, (
                case.method,
                case.formatted_path,
                case.query,
                case.body,
                response.text[:300],
            )
            if response.status_code >= 400 and "json" in str(response.headers):
                body = response.json()
                assert body["ok"] is False and body["code"]
                assert body["status"] == response.status_code

        run()
        seen.append(f"{op.method.upper()} {op.path}")
    assert "POST /collections/{c}/search" in seen
