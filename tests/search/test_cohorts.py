"""Cohorts: filters, similarity (union, max score), versions, counts; a catalog shared by processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lamina.search import SearchService, Store
from lamina.search.catalog import Catalog
from lamina.search.cohorts import create_cohort, show_cohort
from lamina.search.errors import CohortNotFoundError, InvalidQueryError
from lamina.search.exports import export_labeled_set

REPO = Path(__file__).resolve().parents[2]


def test_filter_cohort_is_all_matching_tiles_and_versions(derm_home: Path) -> None:
    service = SearchService(Store(derm_home))
    view = service.view("derm")
    with Catalog(derm_home) as cat:
        c1 = create_cohort(cat, service, "bcc", "derm", filters=["diagnostic=BCC"])
        expected = view.sql("SELECT count(*) AS n FROM tiles WHERE diagnostic = 'BCC'")[0]["n"]
        assert c1["version"] == 1 and c1["n_tiles"] == expected
        assert c1["snapshot"] == view.snapshot.id and c1["encoder"] == view.collection.fingerprint
        c2 = create_cohort(cat, service, "bcc", "derm", filters=["diagnostic=BCC", "age>=60"])
        assert c2["version"] == 2 and c2["versions"] == [1, 2]
        assert cat.cohort("bcc")["version"] == 2
        assert cat.cohort("bcc", 1)["n_tiles"] == expected  # old versions are kept
        assert [c["name"] for c in cat.cohorts()] == ["bcc"]
        assert cat.delete_cohort("bcc") == 2
        with pytest.raises(CohortNotFoundError):
            cat.cohort("bcc")


def test_near_tiles_union_of_knn_with_max_score(derm_home: Path) -> None:
    service = SearchService(Store(derm_home))
    view = service.view("derm")
    all_ids = view.all_tile_ids()
    a, b = (int(t) for t in all_ids[[3, 40]])
    with Catalog(derm_home) as cat:
        c = create_cohort(cat, service, "near", "derm", near_tile_ids=[a, b], k=10)
        ids, scores = cat.members("near", c["version"])
    q = view.tile_vectors([a, b])
    sims = q @ view.vectors[np.arange(view.n_tiles)].T
    expected: set[int] = set()
    for row in sims:
        expected |= {int(all_ids[i]) for i in np.lexsort((all_ids, -row))[:10]}
    assert set(ids) == expected and {a, b} <= set(ids)
    best = sims.max(axis=0)
    got = dict(zip(ids, scores, strict=True))
    for t in ids:
        assert got[t] == pytest.approx(float(best[view.positions_of([t])[0]]), abs=1e-5)


def test_min_score_and_filters_first(derm_home: Path) -> None:
    service = SearchService(Store(derm_home))
    view = service.view("derm")
    t = int(view.all_tile_ids()[0])
    with Catalog(derm_home) as cat:
        c = create_cohort(
            cat,
            service,
            "close",
            "derm",
            near_tile_ids=[t],
            min_score=0.9,
            filters=["diagnostic=NEV,MEL"],
        )
        ids, scores = cat.members("close", c["version"])
        assert all(s is not None and s >= 0.9 for s in scores)
        rows = view.tile_rows(ids)
        assert {rows[i]["diagnostic"] for i in ids} <= {"NEV", "MEL"}
        with pytest.raises(InvalidQueryError):
            create_cohort(cat, service, "bad", "derm", k=5)  # k without examples


def test_counts_equal_duckdb_over_export(derm_home: Path, tmp_path: Path) -> None:
    import duckdb

    service = SearchService(Store(derm_home))
    view = service.view("derm")
    t = int(view.all_tile_ids()[7])
    out = tmp_path / "cohort.parquet"
    with Catalog(derm_home) as cat:
        create_cohort(cat, service, "c", "derm", near_tile_ids=[t], k=60)
        shown = show_cohort(cat, service, "c")
        export_labeled_set(view, cat, out, label_column="diagnostic", cohort="c")
    counts = shown["counts"]
    con = duckdb.connect()
    q = f"SELECT {{col}} AS v, count(*) AS n FROM read_parquet('{out}') GROUP BY ALL"
    assert {r[0]: r[1] for r in con.execute(q.format(col="patient")).fetchall()} == {
        r["value"]: r["n"] for r in counts["per_patient"]
    }
    assert {r[0]: r[1] for r in con.execute(q.format(col="label")).fetchall()} == {
        r["value"]: r["n"] for r in counts["per_label"]["diagnostic"]
    }
    assert {r[0]: r[1] for r in con.execute(q.format(col="source_id")).fetchall()} == {
        r["source_id"]: r["n"] for r in counts["per_slide"]
    }
    assert shown["n_tiles"] == 60 == sum(r["n"] for r in counts["per_slide"])
    assert shown["n_patients"] == len(counts["per_patient"])


HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from lamina.search.catalog import Catalog
    cat = Catalog(sys.argv[1])
    cat.add_cohort({"name": "theirs", "collection": "x", "snapshot": "s", "encoder": "e",
                    "n_tiles": 2, "n_sources": 1}, [5, 9], None)
    print("ready", flush=True)
    sys.stdin.readline()
    print(cat.cohort("ours")["version"], flush=True)
""")


def test_second_process_uses_the_catalog_at_once(tmp_path: Path) -> None:
    """No process owns the catalog: one holding it open does not stop another writing."""
    home = tmp_path / "home"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(home), str(REPO)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        rec = {"name": "ours", "collection": "x", "snapshot": "s", "encoder": "e"}
        with Catalog(home) as cat:
            assert cat.add_cohort(rec | {"n_tiles": 1, "n_sources": 1}, [3], None)["version"] == 1
            assert cat.members("theirs", 1) == ([5, 9], [None, None])
            assert [c["name"] for c in cat.cohorts()] == ["ours", "theirs"]
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "1"  # and the holder sees ours
    finally:
        proc.kill()
        proc.wait(timeout=10)
