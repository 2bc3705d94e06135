"""A damaged store and failing I/O reach the CLI as ``error: ...`` with exit 2 (a JSON error
document with ``--json``), never a traceback: a truncated or garbage catalog, an unreadable
``collection.json``, a read-only filesystem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos import run_inprocess
from lamina.search.catalog import Catalog

REPO = Path(__file__).resolve().parents[2]


def lamina(home: Path, *args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "lamina.api", "--home", str(home), *args],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "LAMINA_DEBUG"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout, proc.stderr


def assert_clean_error(code: int, out: str, err: str, code_name: str) -> str:
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    assert json.loads(out)["code"] == code_name
    return last


def test_truncated_catalog_is_set_aside_and_garbage_is_reported(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # what a full disk left behind before catalogs were created atomically: 4 KiB, no data
    (home / "catalog.duckdb").write_bytes(b"\0" * 4096)
    with Catalog(home) as catalog:
        assert catalog.cohorts() == []
    aside = [p.name for p in home.iterdir() if p.name.startswith("catalog.duckdb.broken-")]
    assert len(aside) == 1
    # a catalog that may hold data is never replaced: a clear error instead
    (home / "catalog.duckdb").write_bytes(os.urandom(64 * 1024))
    last = assert_clean_error(*lamina(home, "cohort", "list", "--json"), "CATALOG_DAMAGED")
    assert "cannot be opened" in last and "Move the file aside" in last
    assert (home / "catalog.duckdb").stat().st_size == 64 * 1024


def test_unreadable_collection_json_is_an_error_not_a_traceback(
    tmp_path: Path, derm_dir: Path
) -> None:
    home = tmp_path / "home"
    photo = sorted((derm_dir / "images").glob("*.jpg"))[0]
    run_inprocess(home, ("index", str(photo), "--collection", "d", "--no-progress"), {})
    (home / "collections" / "d" / "collection.json").write_text('{"name": "d", ')
    code, out, err = lamina(home, "search", "--collection", "d", "--tile-id", "0", "--json")
    last = assert_clean_error(code, out, err, json.loads(out or "{}").get("code", "?"))
    assert "collection.json" in last or "damaged" in last, last


def test_read_only_store_is_an_io_error(tmp_path: Path, derm_dir: Path) -> None:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True
    )
    if proc.returncode != 0:
        reason = (
            "a read-only filesystem needs a tmpfs mount, not permitted here (needs root or "
            f"CAP_SYS_ADMIN): {proc.stderr.decode().strip()}"
        )
        if os.environ.get("LAMINA_REQUIRE_TMPFS") == "1":  # CI: fail, never skip
            pytest.fail(reason + " (LAMINA_REQUIRE_TMPFS=1)")
        pytest.skip(reason)
    try:
        home = mnt / "home"
        photos = sorted((derm_dir / "images").glob("*.jpg"))[:2]
        run_inprocess(home, ("index", str(photos[0]), "--collection", "d", "--no-progress"), {})
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        code, out, err = lamina(
            home, "index", str(photos[1]), "--collection", "d", "--no-progress", "--json"
        )
        last = assert_clean_error(code, out, err, "IO_ERROR")
        assert "Read-only file system" in last
        code, out, err = lamina(home, "search", "--collection", "d", "--tile-id", "0", "--json")
        assert code == 0 and json.loads(out)["hits"], err[-2000:]  # reading still works
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
