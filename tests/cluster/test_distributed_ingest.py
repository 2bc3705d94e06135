"""`lamina index --cluster` on a real local Ray cluster (head + two worker nodes).

The same real photos and slides are indexed by a single-process `lamina index` and on the
cluster; the collections must hold the same sources (same ids) and the same tiles, compared by
(source, x, y, level) since tile ids are numbered in commit order, with vectors within 1e-6.
Then a worker node's raylet is SIGKILLed while it reads a slide or photos: the run still
completes, a re-run finds nothing to do, and nothing is lost or duplicated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from lamina.search.store import Store

REPO = Path(__file__).resolve().parents[2]
LAMINA = str(Path(sys.executable).with_name("lamina"))
SLIDE_OPTIONS = ["--mpp-override", "0.5"]  # the TCGA copy carries no mpp


def _files(derm_dir: Path, slides_dir: Path, n_photos: int, slides: tuple[str, ...]) -> list[str]:
    photos = sorted((derm_dir / "images").iterdir())[:n_photos]
    slides = [slides_dir / name for name in slides]
    for p in [*photos, *slides]:
        assert p.is_file(), f"test data missing: {p}"
    return [str(p) for p in [*photos, *slides]]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(LAMINA_HOME=str(home), **extra)
    return env


def _index(home: Path, files: list[str], encoder: str, *extra: str, **env: str) -> dict[str, Any]:
    cmd = [LAMINA, "index", *files, "--collection", "c", "--encoder", encoder]
    cmd += [*SLIDE_OPTIONS, "--allow-test-encoder", "--no-progress", "--json", *extra]
    proc = subprocess.run(
        cmd, env=_env(home, **env), cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    return json.loads(proc.stdout)


def _contents(home: Path) -> tuple[dict[str, str], dict[tuple[str, int, int, int], np.ndarray]]:
    """(source path -> source id, (source, x, y, level) -> vector) of collection ``c``, read
    through the store; fails on a duplicated source, tile key or tile id."""
    snap = Store(home).collection("c").snapshot()
    assert not snap.damaged
    sources: dict[str, str] = {}
    tiles: dict[tuple[str, int, int, int], np.ndarray] = {}
    ids: set[int] = set()
    for seg in snap.segments:
        src = pq.read_table(seg.sources_path, columns=["source", "source_id"]).to_pylist()
        for row in src:
            assert row["source"] not in sources, f"source {row['source']} committed twice"
            sources[row["source"]] = row["source_id"]
        cols = ["tile_id", "source", "x", "y", "level", "row"]
        vectors = np.asarray(seg.vectors(), dtype=np.float32)
        for t in pq.read_table(seg.tiles_path, columns=cols).to_pylist():
            key = (t["source"], t["x"], t["y"], t["level"])
            assert key not in tiles, f"tile {key} committed twice"
            assert t["tile_id"] not in ids, f"tile id {t['tile_id']} used twice"
            ids.add(t["tile_id"])
            tiles[key] = vectors[t["row"]]
    return sources, tiles


def _assert_same(got: Path, want: Path) -> None:
    got_sources, got_tiles = _contents(got)
    want_sources, want_tiles = _contents(want)
    assert got_sources == want_sources
    assert set(got_tiles) == set(want_tiles)
    keys = sorted(want_tiles)
    diff = np.abs(np.stack([got_tiles[k] for k in keys]) - np.stack([want_tiles[k] for k in keys]))
    assert float(diff.max()) <= 1e-6


@pytest.mark.slow
def test_cluster_ingest_equals_local_ingest(
    ray_cluster: Any, tmp_path: Path, derm_dir: Path, slides_dir: Path
) -> None:
    # a torch encoder (one model load per actor), real photos and a real slide
    files = _files(derm_dir, slides_dir, 8, ("CMU-1-Small-Region.svs",))
    local = _index(tmp_path / "local", files, "test/tiny-vit")
    assert local["cluster"] is None and local["indexed"] == len(files)
    ray = _index(tmp_path / "ray", files, "test/tiny-vit", "--cluster", ray_cluster.address)
    assert ray["ok"] and ray["indexed"] == len(files) and ray["tiles"] == local["tiles"]
    assert ray["cluster"]["nodes"] == 3 and ray["cluster"]["encoder_devices"] == ["cpu"]
    _assert_same(tmp_path / "ray", tmp_path / "local")


@pytest.mark.slow
def test_worker_killed_mid_ingest_loses_and_duplicates_nothing(
    ray_cluster: Any, tmp_path: Path, derm_dir: Path, slides_dir: Path
) -> None:
    slides = ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs")
    files = _files(derm_dir, slides_dir, 24, slides)
    encoder = "classic/stain-texture"
    _index(tmp_path / "local", files, encoder)
    home = tmp_path / "ray"
    cmd = [LAMINA, "index", *files, "--collection", "c", "--encoder", encoder, *SLIDE_OPTIONS]
    cmd += ["--cluster", ray_cluster.address, "--no-progress", "--json"]
    env = _env(home, LAMINA_COMMIT_EVERY_SOURCES="1", LAMINA_CLUSTER_PHOTOS_PER_TASK="3")
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    segments = home / "collections" / "c" / "segments"
    killed = None
    try:
        deadline = time.monotonic() + 300
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            committed = segments.is_dir() and any(
                not e.startswith(".") for e in os.listdir(segments)
            )
            busy = [i for i in (0, 1) if ray_cluster.running(i, "ray::run_work")]
            if committed and busy:
                killed = busy[0]
                ray_cluster.kill_worker(killed)  # SIGKILL its raylet mid-task
            time.sleep(0.05)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        if killed is not None:
            ray_cluster.restart_worker(killed)
    assert killed is not None, f"the run ended before a worker was caught reading: {err[-2000:]}"
    first = json.loads(out)
    # Ray re-ran the lost task elsewhere: the run itself lost nothing
    assert first["ok"] and first["indexed"] == len(files), err[-3000:]
    ray_cluster.wait_for_nodes(3)
    # RAY_ADDRESS alone sends a run to the cluster: it finds nothing left to do
    again = _index(home, files, encoder, RAY_ADDRESS=ray_cluster.address)
    assert again["cluster"] is not None
    assert (again["indexed"], again["unchanged"], again["segments"]) == (0, len(files), [])
    _assert_same(home, tmp_path / "local")


def _refused_port() -> int:
    import socket

    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_unreachable_cluster_is_a_clear_error_and_local_overrides_it(
    tmp_path: Path, slides_dir: Path
) -> None:
    slide = str(slides_dir / "CMU-1-Small-Region.svs")
    bad = f"127.0.0.1:{_refused_port()}"
    cmd = [LAMINA, "index", slide, "--collection", "c", "--no-progress", "--json"]
    env = _env(tmp_path / "home", RAY_ADDRESS=bad)
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["code"] == "CLUSTER_UNAVAILABLE" and bad in doc["error"]
    assert (
        proc.stderr.startswith("error: cannot join the Ray cluster")
        and "Traceback" not in proc.stderr
    )
    # --cluster local indexes in this process whatever RAY_ADDRESS says
    proc = subprocess.run(
        [*cmd, "--cluster", "local"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["cluster"] is None and doc["indexed"] == 1
