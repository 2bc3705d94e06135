"""Two ingests of the same files into one collection never index a file twice."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from lamina.search import SearchService, Store

REPO = Path(__file__).resolve().parents[2]


def _lamina(home: Path, log: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "lamina.api", "--home", str(home), *args]
    with open(log, "w") as err:
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)


def _wait_for(logs: list[Path], text: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(text in log.read_text() for log in logs):
        assert time.monotonic() < deadline, [log.read_text() for log in logs]
        time.sleep(0.2)


def test_second_ingest_waits_for_the_first(tmp_path: Path, derm_dir: Path) -> None:
    import shutil

    images = tmp_path / "images"
    images.mkdir()
    for photo in sorted((derm_dir / "images").glob("*.jpg"))[:80]:
        shutil.copy(photo, images / photo.name)
    home = tmp_path / "home"
    args = (
        "index",
        str(images),
        "--collection",
        "derm",
        "--encoder",
        "test/tiny-vit",
        "--allow-test-encoder",
        "--no-progress",
        "--json",
    )
    # create the collection with a first photo, then hold its ingest lock ourselves
    first = sorted(images.glob("*.jpg"))[0]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lamina.api",
            "--home",
            str(home),
            "index",
            str(first),
            "--collection",
            "derm",
            "--encoder",
            "test/tiny-vit",
            "--allow-test-encoder",
            "--no-progress",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    col = Store(home).collection("derm")
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    with col.ingest_lock():
        a = _lamina(home, logs[0], *args)
        b = _lamina(home, logs[1], *args)
        _wait_for(logs, "waiting for it to finish")  # both found the lock held and wait
        assert a.poll() is None and b.poll() is None
    out_a, _ = a.communicate(timeout=300)
    out_b, _ = b.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, [log.read_text() for log in logs]
    ra, rb = json.loads(out_a), json.loads(out_b)
    n = len(list(images.glob("*.jpg")))
    assert ra["indexed"] + rb["indexed"] == n - 1  # each photo once, by one of the two
    assert {ra["unchanged"], rb["unchanged"]} == {1, n}
    view = SearchService(Store(home)).view("derm")
    rows = view.sql("SELECT source, count(*) AS c FROM tiles GROUP BY source HAVING c > 1")
    assert rows == [] and view.n_tiles == n
