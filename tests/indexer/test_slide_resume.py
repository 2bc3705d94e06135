"""`lamina index` killed with SIGKILL at several points resumes to the uninterrupted result."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from lamina.search import Store

N_SLIDES = 8
COLLECTION = "crash"


def _segments_dir(home: Path) -> Path:
    return home / "collections" / COLLECTION / "segments"


def _state(home: Path) -> tuple[int, int]:
    """(committed segments, temporary segment directories)."""
    d = _segments_dir(home)
    if not d.is_dir():
        return 0, 0
    names = os.listdir(d)
    return (
        sum(1 for n in names if not n.startswith(".")),
        sum(1 for n in names if n.startswith(".tmp-")),
    )


def _start(home: Path, folder: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LAMINA_COMMIT_EVERY_SOURCES": "1"}
    # the `lamina` console script, run through this interpreter
    cmd = [
        sys.executable,
        "-c",
        "from lamina.api.cli import main; main()",
        "--home",
        str(home),
        "index",
        str(folder),
        "--collection",
        COLLECTION,
        "--encoder",
        "test/tiny-vit",
        "--allow-test-encoder",
        "--tile-px",
        "64",
        "--mpp",
        "0.5",
        "--workers",
        "2",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--no-progress",
        "--json",
    ]
    repo = Path(__file__).resolve().parents[2]
    return subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen[bytes], home: Path, ready: Any) -> tuple[int, int]:
    """SIGKILL ``proc`` as soon as ready(committed, tmp) holds; returns the state it saw."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        state = _state(home)
        if ready(*state):
            assert proc.poll() is None, "the run finished before the kill point"
            proc.kill()  # SIGKILL: no cleanup, no atexit, threads die mid-read
            proc.wait()
            return state
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run ended (rc {proc.returncode}) before the kill point: {err[-2000:]!r}")
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    pytest.fail("kill point never reached")


def _finish(proc: subprocess.Popen[bytes]) -> None:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]


def _contents(home: Path) -> dict[tuple[str, int, int, int], np.ndarray]:
    col = Store(home).collection(COLLECTION)
    out: dict[tuple[str, int, int, int], np.ndarray] = {}
    n_sources = 0
    for seg in col.segments():
        vecs = np.asarray(seg.vectors())
        for r in pq.read_table(seg.tiles_path).to_pylist():
            key = (r["source_id"], r["x"], r["y"], r["level"])
            assert key not in out, f"duplicate tile {key}"
            out[key] = vecs[r["row"]]
        n_sources += seg.n_sources
    assert n_sources == N_SLIDES
    return out


@pytest.mark.slow
def test_sigkill_at_any_point_resumes_to_the_same_store(make_slide: Any, tmp_path: Path) -> None:
    folder = None
    for i in range(N_SLIDES):
        path = make_slide(
            f"slide{i}.tiff", tissue=[(0, 0, 8, 6)], cols=8, rows=6, seed=10 + i, folder="crash"
        )
        folder = path.parent
    assert folder is not None
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"

    _finish(_start(reference, folder))

    # 1. mid-way through the first slide: a segment is being written, none committed yet
    seen = _kill_when(_start(resumed, folder), resumed, lambda done, tmp: tmp > 0)
    assert seen[0] == 0
    assert _state(resumed)[1] >= 1  # the killed writer left its temporary directory behind
    # 2. right after the first commit of the resumed run
    seen = _kill_when(_start(resumed, folder), resumed, lambda done, tmp: done >= 1)
    assert seen[0] < N_SLIDES
    # 3. half-way
    seen = _kill_when(_start(resumed, folder), resumed, lambda done, tmp: done >= N_SLIDES // 2)
    assert seen[0] < N_SLIDES
    _finish(_start(resumed, folder))

    assert _state(resumed)[1] == 0  # leftovers cleaned up
    want, got = _contents(reference), _contents(resumed)
    assert set(got) == set(want) and len(want) == N_SLIDES * 48
    for key, vec in want.items():
        np.testing.assert_allclose(got[key], vec, atol=1e-6)
