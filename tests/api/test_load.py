"""Load, CI size: 16 clients for 10 s against a real ``lamina serve`` while ``lamina index``
commits into the same collection (``python -m bench.load`` runs 64 clients for 60 s)."""

from __future__ import annotations

import pytest

from bench.load import run_load
from bench.serve import DERM


@pytest.mark.slow
def test_sixteen_clients_during_ingest() -> None:
    assert (DERM / "labels.csv").is_file(), f"derm sample missing at {DERM}"
    res = run_load(clients=16, seconds=10)
    print(
        {
            k: res[k]
            for k in ("requests", "ok", "shed_429_503", "latency_ms_ok", "ingest", "server_rss_mb")
        }
    )
    assert res["errors"] == 0, res["error_samples"]
    assert res["server_alive_after"]
    assert res["ok"] > 50 and res["ok"] + res["shed_429_503"] == res["requests"]
    assert set(res["status_histogram"]) <= {"200", "429", "503"}
    assert res["ingest"]["runs"] >= 1 and res["ingest"]["failed_runs"] == 0
    assert 0 < res["server_rss_mb"]["max"] < 4000
