"""A filesystem that runs out of space under photo and slide ingest, import, compaction, an index
build and cohort writes: a clear ``error:`` with exit 2 (a DISK_FULL JSON document with
``--json``), a run record saying what was committed, searches by another process unaffected,
nothing half-written (no partial segment, no temporary file), and after space returns the next
run completes. The store lives on a small tmpfs mounted by the test (needs root or
CAP_SYS_ADMIN); where mounting is not permitted the tests are skipped, saying so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bench.chaos import run_inprocess
from lamina.search import SearchService, Store

REPO = Path(__file__).resolve().parents[2]
NO_COMPACT = {"LAMINA_COMPACT_SEGMENTS": "1000"}


@pytest.fixture()
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for this test, unmounted after it."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        reason = (
            "disk-full tests need a small filesystem: mounting a tmpfs is not permitted here "
            f"(needs root or CAP_SYS_ADMIN): {proc.stderr.strip() or proc.returncode}"
        )
        if os.environ.get("LAMINA_REQUIRE_TMPFS") == "1":  # CI: fail, never skip
            pytest.fail(reason + " (LAMINA_REQUIRE_TMPFS=1)")
        pytest.skip(reason)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(fs: Path, leave_kib: int) -> Path:
    """Take all free space of ``fs`` but ``leave_kib`` KiB with a ballast file."""
    ballast = fs / "ballast"
    ballast.unlink(missing_ok=True)
    st = os.statvfs(fs)
    size = st.f_bavail * st.f_frsize - leave_kib * 1024
    if size > 0:
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    return ballast


def lamina(home: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "lamina.api", "--home", str(home), *args],
        cwd=REPO,
        env={**os.environ, **NO_COMPACT, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout, proc.stderr


def assert_disk_full(code: int, out: str, err: str, what: str) -> dict[str, object]:
    assert code == 2, (code, err[-2000:])
    last = err.strip().splitlines()[-1]  # after any progress lines
    assert last.startswith("error: ") and "Traceback" not in err, err[-2000:]
    assert what in last and "No space left on device" in last, err
    doc = json.loads(out)
    assert doc["ok"] is False and doc["code"] == "DISK_FULL" and doc["status"] == 507
    return doc


def leftovers(home: Path) -> list[str]:
    """Temporary files and directories anywhere in the home (none may outlive a failure)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(home):
        for name in dirnames + filenames:
            if name.endswith(".tmp") or name.startswith((".tmp-", ".build-")):
                out.append(os.path.relpath(os.path.join(dirpath, name), home))
    return out


def contents(home: Path, name: str) -> dict[str, int]:
    """source -> number of tiles, over the visible segments (each segment fully readable)."""
    view = SearchService(Store(home)).view(name)
    assert len(np.unique(view.all_tile_ids())) == view.n_tiles
    rows = view.sql("SELECT source, count(*) AS n FROM tiles GROUP BY source")
    return {r["source"]: int(r["n"]) for r in rows}


def search_ok(home: Path, name: str) -> None:
    """A search in another process answers while the disk is full."""
    code, out, err = lamina(home, "search", "--collection", name, "--tile-id", "0", "--json")
    assert code == 0, err[-2000:]
    assert json.loads(out)["hits"]


@pytest.fixture()
def photos(tmp_path: Path, derm_dir: Path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for p in sorted((derm_dir / "images").glob("*.jpg"))[:40]:
        shutil.copy(p, d / p.name)
    return d


@pytest.mark.slow
def test_photo_ingest_on_a_full_disk(small_fs: Path, photos: Path) -> None:
    home = small_fs / "home"
    first = sorted(photos.glob("*.jpg"))[:8]
    run_inprocess(home, ("index", *map(str, first), "--collection", "d", "--no-progress"), {})
    ballast = fill(small_fs, 80)
    code, out, err = lamina(
        home, "index", str(photos), "--collection", "d", "--no-progress", "--json",
        env={"LAMINA_COMMIT_EVERY_SOURCES": "4"},
    )  # fmt: skip
    doc = assert_disk_full(code, out, err, "ingest into collection 'd'")
    committed = doc["committed"]
    assert isinstance(committed, dict)
    run = json.loads((home / "collections/d/runs" / f"{doc['run_id']}.json").read_text())
    assert run["ok"] is False and "No space left" in run["error"]
    assert run["indexed"] == committed["sources"] < 32 and run["segments"] == committed["segments"]
    assert f"{run['indexed']} sources" in err
    assert leftovers(home) == []
    assert len(contents(home, "d")) == 8 + run["indexed"]  # what was committed, nothing more
    search_ok(home, "d")
    ballast.unlink()  # space returns: the next run completes
    code, out, err = lamina(
        home, "index", str(photos), "--collection", "d", "--no-progress", "--json"
    )
    assert code == 0, err[-2000:]
    assert json.loads(out)["indexed"] == 32 - run["indexed"]
    assert set(contents(home, "d").values()) == {1} and len(contents(home, "d")) == 40


@pytest.mark.slow
def test_slide_ingest_and_import_on_a_full_disk(
    small_fs: Path, slides_dir: Path, tmp_path: Path
) -> None:
    home = small_fs / "home"
    folder = tmp_path / "slides"
    folder.mkdir()
    for i, name in enumerate(("a", "b", "c")):
        shutil.copy(slides_dir / "CMU-1-Small-Region.svs", folder / f"{name}.svs")
        # distinct bytes (a TIFF is read by offsets: trailing bytes change the content hash
        # only), so b and c are new sources, not duplicates of a that are indexed once
        with (folder / f"{name}.svs").open("ab") as fh:
            fh.write(bytes([i + 1]) * 16)
    run_inprocess(home, ("index", str(folder / "a.svs"), "--collection", "s", "--mpp", "1.0",
                         "--no-progress"), {})  # fmt: skip
    ballast = fill(small_fs, 12)
    args = ("index", str(folder), "--collection", "s", "--mpp", "1.0", "--no-progress", "--json")
    code, out, err = lamina(home, *args, env={"LAMINA_COMMIT_EVERY_SOURCES": "1"})
    assert_disk_full(code, out, err, "ingest into collection 's'")
    assert leftovers(home) == []
    search_ok(home, "s")
    ballast.unlink()
    code, out, err = lamina(home, *args)
    assert code == 0, err[-2000:]
    tiles = contents(home, "s")
    assert len(tiles) == 3 and len(set(tiles.values())) == 1  # three copies, the same tiles

    # lamina import: one segment at the end of the run, which does not fit
    emb = tmp_path / "emb"
    emb.mkdir()
    rng = np.random.default_rng(3)
    for f in range(2):
        np.savez(emb / f"p{f}.npz", vectors=rng.standard_normal((512, 64)).astype(np.float32),
                 source=np.repeat([f"case{f}-{s}" for s in range(8)], 64))  # fmt: skip
    imp = ("import", str(emb), "--collection", "e", "--encoder-name", "external/x", "--dim", "64",
           "--no-progress", "--json")  # fmt: skip
    ballast = fill(small_fs, 40)
    assert_disk_full(*lamina(home, *imp), "import into collection 'e'")
    assert leftovers(home) == []
    ballast.unlink()
    code, out, err = lamina(home, *imp)
    assert code == 0 and json.loads(out)["tiles"] == 1024, err[-2000:]


@pytest.mark.slow
def test_compaction_index_build_and_cohorts_on_a_full_disk(small_fs: Path, photos: Path) -> None:
    home = small_fs / "home"
    run_inprocess(home, ("index", str(photos), "--collection", "d", "--no-progress"),
                  {**NO_COMPACT, "LAMINA_COMMIT_EVERY_SOURCES": "1"})  # fmt: skip
    run_inprocess(home, ("collection", "set", "d", "--index-factory", "IVF4"), {})
    before = contents(home, "d")
    segments = len(Store(home).collection("d").segments())
    assert segments == 40

    ballast = fill(small_fs, 0)
    compact = ("compact", "--collection", "d", "--json")
    assert_disk_full(*lamina(home, *compact), "compaction of collection 'd' (nothing was merged)")
    assert len(Store(home).collection("d").segments()) == segments and leftovers(home) == []
    assert contents(home, "d") == before
    search_ok(home, "d")

    build = ("collection", "build", "d", "--no-progress", "--json")
    assert_disk_full(*lamina(home, *build), "index of collection 'd'")
    assert leftovers(home) == []
    search_ok(home, "d")  # exact while no index version is complete

    # the catalog: no cohort version can be written, and no partial file is left behind
    cohort = (
        "cohort",
        "create",
        "c",
        "--collection",
        "d",
        "--near-tile",
        "3",
        "--k",
        "5",
        "--json",
    )
    assert_disk_full(*lamina(home, *cohort), "catalog")
    assert not list(home.glob("catalog/cohorts/*/v*.parquet")) and leftovers(home) == []

    ballast.unlink()
    assert lamina(home, *compact)[0] == 0
    assert contents(home, "d") == before
    code, out, err = lamina(home, *build)
    assert code == 0 and json.loads(out)["build"]["factory"] == "IVF4", err[-2000:]
    code, out, err = lamina(home, *cohort)
    assert code == 0, err[-2000:]

    # an existing catalog on a full disk: the write is refused, the catalog stays whole
    ballast = fill(small_fs, 0)
    every = ("cohort", "create", "c", "--collection", "d", "--filter", "tile_id>=0", "--json")
    assert_disk_full(*lamina(home, *every), "catalog")
    ballast.unlink()
    code, out, err = lamina(home, "cohort", "show", "c", "--json")
    assert code == 0 and json.loads(out)["cohort"]["version"] == 1, err[-2000:]
    assert lamina(home, *every)[0] == 0
