"""The file catalog shared by processes: concurrent writers in separate processes take unique,
dense version numbers and lose nothing; a delete racing creates keeps numbering dense; an
earlier version's ``catalog.duckdb`` is moved in on first open (exactly once, also after an
interrupted move); damaged files are named, never a traceback; killed writers' files go."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lamina.search.catalog import Catalog
from lamina.search.errors import CatalogDamagedError, CohortNotFoundError

REPO = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from lamina.search.catalog import Catalog
    home, me, n = sys.argv[1], int(sys.argv[3]), int(sys.argv[4])
    cat = Catalog(home)
    for j in range(n):
        name = "shared" if j % 2 == 0 else f"own{me}"
        ids = [me * 100_000 + j * 100 + i for i in range(j % 7 + 1)]
        rec = {"name": name, "collection": "x", "snapshot": "s", "encoder": "e",
               "definition": {"writer": me, "j": j}, "n_tiles": len(ids), "n_sources": 1}
        cat.add_cohort(rec, ids, [0.5 + i / 100 for i in range(len(ids))])
""")


def _record(name: str, **extra: Any) -> dict[str, Any]:
    rec = {"name": name, "collection": "x", "snapshot": "s", "encoder": "e"}
    return rec | {"definition": {}, "n_tiles": 0, "n_sources": 0, "n_patients": None} | extra


def test_concurrent_processes_take_unique_dense_versions(tmp_path: Path) -> None:
    home, writers, n = tmp_path / "home", 4, 30
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(home), str(REPO), str(w), str(n)])
        for w in range(writers)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0] * writers
    with Catalog(home) as cat:
        names = {c["name"]: c["n_versions"] for c in cat.cohorts()}
        assert names == {"shared": writers * n // 2} | {f"own{w}": n // 2 for w in range(writers)}
        seen = []
        for name, count in names.items():
            assert cat.versions(name) == list(range(1, count + 1))  # unique and dense
            for v in range(1, count + 1):
                rec = cat.cohort(name, v)
                w, j = rec["definition"]["writer"], rec["definition"]["j"]
                ids, scores = cat.members(name, v)
                want = [w * 100_000 + j * 100 + i for i in range(j % 7 + 1)]
                assert ids == want and rec["n_tiles"] == len(want)
                assert scores == pytest.approx([0.5 + i / 100 for i in range(len(want))])
                seen.append((w, j))
    assert sorted(seen) == [(w, j) for w in range(writers) for j in range(n)]  # none lost


DELETER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from lamina.search.catalog import Catalog
    from lamina.search.errors import CohortNotFoundError
    cat = Catalog(sys.argv[1])
    for _ in range(40):
        try:
            cat.delete_cohort("d")
        except CohortNotFoundError:
            pass
""")


def test_delete_racing_creates_keeps_versions_dense(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Catalog(home).close()
    proc = subprocess.Popen([sys.executable, "-c", DELETER, str(home), str(REPO)])
    with Catalog(home) as cat:
        while proc.poll() is None:
            cat.add_cohort(_record("d", n_tiles=1), [1], None)
        assert proc.returncode == 0
        versions = cat.versions("d")
        assert versions == list(range(1, len(versions) + 1))
        assert not os.listdir(home / "catalog" / "trash")


LEGACY_DDL = """
CREATE TABLE cohorts (name VARCHAR, version INTEGER, collection VARCHAR NOT NULL,
  snapshot VARCHAR NOT NULL, encoder VARCHAR NOT NULL, definition VARCHAR NOT NULL,
  created_at VARCHAR NOT NULL, n_tiles BIGINT NOT NULL, n_sources BIGINT NOT NULL,
  n_patients BIGINT, PRIMARY KEY (name, version));
CREATE TABLE cohort_members (name VARCHAR NOT NULL, version INTEGER NOT NULL,
  tile_id BIGINT NOT NULL, score FLOAT);
CREATE TABLE exports (id VARCHAR PRIMARY KEY, collection VARCHAR NOT NULL, cohort VARCHAR,
  cohort_version INTEGER, args VARCHAR NOT NULL, snapshot VARCHAR NOT NULL,
  encoder VARCHAR NOT NULL, rows BIGINT NOT NULL, sha256 VARCHAR, path VARCHAR,
  created_at VARCHAR NOT NULL);
"""


def _legacy_catalog(home: Path) -> None:
    """A catalog.duckdb as earlier versions wrote it: two cohorts, three versions, an export."""
    import duckdb

    home.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(home / "catalog.duckdb"))
    con.execute(LEGACY_DDL)
    rows = [
        ("a", 1, '{"filter": {}}', 3, None),
        ("a", 2, '{"k": 5}', 2, 4),
        ("b", 1, "{}", 0, None),
    ]
    for name, v, definition, n, patients in rows:
        con.execute(
            "INSERT INTO cohorts VALUES (?, ?, 'col', 'snap1', 'enc@1', ?, "
            "'2026-01-02T03:04:05Z', ?, 1, ?)",
            [name, v, definition, n, patients],
        )
    members: list[tuple[str, int, int, float | None]] = [("a", 1, 30, None), ("a", 1, 10, None)]
    members += [("a", 1, 20, None)]
    members += [("a", 2, 7, 0.75), ("a", 2, 3, 0.5)]
    con.executemany("INSERT INTO cohort_members VALUES (?, ?, ?, ?)", members)
    con.execute(
        "INSERT INTO exports VALUES ('e1', 'col', 'a', 2, '{\"seed\": 0}', 'snap1', 'enc@1', "
        "2, 'abc', NULL, '2026-01-02T03:04:06Z')"
    )
    con.close()


def test_legacy_catalog_is_moved_in_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _legacy_catalog(home)
    with Catalog(home) as cat:
        assert [(c["name"], c["version"], c["n_versions"]) for c in cat.cohorts()] == [
            ("a", 2, 2),
            ("b", 1, 1),
        ]
        a1 = cat.cohort("a", 1)
        assert a1["definition"] == {"filter": {}} and a1["created_at"] == "2026-01-02T03:04:05Z"
        assert a1["versions"] == [1, 2] and a1["n_patients"] is None
        assert cat.cohort("a")["n_patients"] == 4
        assert cat.members("a", 1) == ([10, 20, 30], [None, None, None])
        assert cat.members("a", 2) == ([3, 7], [0.5, 0.75])
        assert cat.members("b", 1) == ([], [])
        [export] = cat.exports()
        assert export["id"] == "e1" and export["args"] == {"seed": 0} and export["path"] is None
        # a new version continues the migrated numbering
        assert cat.add_cohort(_record("a"), [1], None)["version"] == 3
    assert not (home / "catalog.duckdb").exists()
    assert len(list(home.glob("catalog.duckdb.migrated-*"))) == 1

    # interrupted earlier (some versions already moved): run again, nothing doubled
    next(home.glob("catalog.duckdb.migrated-*")).rename(home / "catalog.duckdb")
    with Catalog(home) as cat:
        assert cat.versions("a") == [1, 2, 3] and cat.members("a", 3) == ([1], [None])
        assert len(cat.exports()) == 1


def test_damaged_files_are_named_and_the_rest_stays_usable(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Catalog(home) as cat:
        cat.add_cohort(_record("x", n_tiles=2), [1, 2], None)
        cat.add_cohort(_record("x", n_tiles=1), [3], None)
        cat.record_export({"id": "ok1", "collection": "x", "args": {}})
    (home / "catalog" / "cohorts" / "x" / "v2.parquet").write_bytes(b"PAR1 not really")
    with Catalog(home) as cat:
        with pytest.raises(CatalogDamagedError, match=r"catalog/cohorts/x/v2\.parquet"):
            cat.cohort("x")
        with pytest.raises(CatalogDamagedError, match="move it aside"):
            cat.member_arrays("x", 2)
        assert cat.members("x", 1) == ([1, 2], [None, None])
        with pytest.raises(CohortNotFoundError):
            cat.cohort("../x")
    (home / "catalog" / "exports" / "bad.json").write_text("{")

    from lamina.api.cli import cli

    for args in (["cohort", "show", "x"], ["cohort", "list"]):
        res = CliRunner().invoke(cli, ["--home", str(home), *args, "--json"])
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert json.loads(res.stdout)["code"] == "CATALOG_DAMAGED"
        assert str(home) not in res.output
    with Catalog(home) as cat, pytest.raises(CatalogDamagedError, match="exports/bad.json"):
        cat.exports()


def test_killed_writers_leave_nothing_for_long(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Catalog(home).close()
    old = home / "catalog" / "tmp" / ".1234.abcd.tmp"
    fresh = home / "catalog" / "tmp" / ".1235.abcd.tmp"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")  # a writer in progress elsewhere
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    (home / "catalog" / "trash" / "gone.1.ab").mkdir()
    Catalog(home).close()
    assert sorted(os.listdir(home / "catalog" / "tmp")) == [fresh.name]
    assert os.listdir(home / "catalog" / "trash") == []


ONE_CREATE = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from lamina.search.catalog import Catalog
    rec = {"name": "x", "collection": "x", "snapshot": "s", "encoder": "e", "n_tiles": 1}
    print(Catalog(sys.argv[1]).add_cohort(rec | {"n_sources": 1}, [1], None)["version"])
""")


def test_version_numbers_are_taken_under_the_lock_and_never_twice(tmp_path: Path) -> None:
    """While another writer holds a name's lock, a second one waits, then numbers after it;
    a number already taken is refused by the link even without the lock."""
    import fcntl

    home = tmp_path / "home"
    cat = Catalog(home)
    fd = os.open(home / "catalog" / "locks" / "cohort-x.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a writer between its listing and its link
    proc = subprocess.Popen(
        [sys.executable, "-c", ONE_CREATE, str(home), str(REPO)], stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(3.0)
        assert proc.poll() is None and cat.versions("x") == []  # waiting, nothing published
        folder = home / "catalog" / "cohorts" / "x"
        folder.mkdir(parents=True, exist_ok=True)
        other = tmp_path / "other"
        with Catalog(tmp_path / "other-home") as scratch:  # a complete version file
            scratch.add_cohort(_record("x", n_tiles=2), [8, 9], None)
            (tmp_path / "other-home" / "catalog" / "cohorts" / "x" / "v1.parquet").rename(other)
        os.link(other, folder / "v1.parquet")  # the lock holder publishes v1
    finally:
        os.close(fd)  # lets go
    out, _ = proc.communicate(timeout=120)
    assert out.strip() == "2" and cat.versions("x") == [1, 2]
    assert cat.members("x", 1)[0] == [8, 9] and cat.members("x", 2)[0] == [1]
    # the link never replaces a published version
    tmp = cat._stage(b"not a cohort", "test")
    assert cat._link(tmp, folder / "v2.parquet", "test") is False
    tmp.unlink()
    assert cat.members("x", 2)[0] == [1]
