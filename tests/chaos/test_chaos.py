"""Random SIGKILLs during photo and slide ingest, import, compaction, index builds and cohort
writes (30 per run; ``python -m bench.chaos --kills 100`` for the full harness): after each
kill a run to completion leaves every tile once with its exact vector, the answers and the
cohorts of an uninterrupted run, and no temporary files."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import OPS, run


@pytest.mark.slow
def test_thirty_random_kills_lose_and_duplicate_nothing(tmp_path: Path, derm_dir: Path) -> None:
    summary = run(kills=30, seed=13, root=tmp_path)
    assert summary["kills"] == 30
    per_op = summary["per_operation"]
    assert all(per_op[op]["kills"] == 5 for op in OPS), per_op
    # some kills landed after the operation had made something durable (mid-run)
    assert sum(v["after_commit"] for v in per_op.values()) > 0, per_op
    for key in (
        "lost",
        "duplicated",
        "mismatched_vectors",
        "mismatched_answers",
        "inconsistent_cohorts",
        "leftovers",
    ):
        assert summary[key] == 0, (key, summary["problems"])
