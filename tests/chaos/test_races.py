"""Races between processes: two ingests creating one collection with different encoders (exactly
one wins, the other is refused, never mixed dimensions), and short-lived searchers (which build
the index in the background, as servers do) during commits and index builds (no crash)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lamina.search import Store

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 20

WORKER = """
import json, sys, time
from pathlib import Path
from lamina.encoders import create_encoder
from lamina.indexer import IngestOptions, ingest
from lamina.search import Store
from lamina.search.errors import EncoderMismatchError

home, key, photo, gate = sys.argv[1:5]
encoder = create_encoder(key, allow_test=True, device="cpu")
print("ready", flush=True)
for i in range({rounds}):
    go = Path(gate) / f"go-{{i}}"
    while not go.exists():
        time.sleep(0.0002)
    try:
        ingest(Store(home), f"race{{i}}", [photo], encoder, IngestOptions(progress=False))
        print(json.dumps({{"round": i, "won": True}}), flush=True)
    except EncoderMismatchError as exc:
        print(json.dumps({{"round": i, "won": False, "error": str(exc)}}), flush=True)
"""


def _dims(home: Path, name: str) -> set[int]:
    col = Store(home).collection(name)
    return {s.dim for s in col.segments()} | {col.dim}


@pytest.mark.slow
def test_concurrent_creation_with_two_encoders_has_one_winner(
    tmp_path: Path, derm_dir: Path
) -> None:
    photo = str(sorted((derm_dir / "images").glob("*.jpg"))[0])
    home, gate = tmp_path / "home", tmp_path / "gate"
    gate.mkdir()
    code = WORKER.format(rounds=ROUNDS)
    workers = {
        key: subprocess.Popen(
            [sys.executable, "-c", code, str(home), key, photo, str(gate)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for key in ("classic/stain-texture", "test/tiny-vit")
    }
    for proc in workers.values():
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for i in range(ROUNDS):
        (gate / f"go-{i}").touch()  # both start this round's ingest at the same moment
        results = {}
        for key, proc in workers.items():
            assert proc.stdout is not None
            results[key] = json.loads(proc.stdout.readline())
        winners = [k for k, r in results.items() if r["won"]]
        assert len(winners) == 1, (i, results)
        loser = next(r for r in results.values() if not r["won"])
        assert "holds vectors of" in loser["error"]
        col = Store(home).collection(f"race{i}")
        assert col.encoder_key == winners[0]
        assert _dims(home, f"race{i}") == {col.dim}  # never mixed-dimension segments
    for proc in workers.values():
        assert proc.wait(timeout=60) == 0

    # through the CLI: one command exits 0, the other `error: ...` with exit 2
    cmds = [
        [sys.executable, "-m", "lamina.api", "--home", str(home), "index", photo, "--collection",
         "cli", "--encoder", key, "--allow-test-encoder", "--no-progress", "--json"]
        for key in ("classic/stain-texture", "test/tiny-vit")
    ]  # fmt: skip
    procs = [
        subprocess.Popen(c, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in cmds
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1].decode()[-800:] for o in outs]
    out, err = outs[[p.returncode for p in procs].index(2)]
    assert err.decode().startswith("error: ") and "Traceback" not in err.decode()
    assert json.loads(out)["code"] == "ENCODER_MISMATCH"
    assert len(_dims(home, "cli")) == 1


SEARCHER = """
import sys, time
import numpy as np
from lamina.search import SearchService, Store
from lamina.search.errors import CollectionNotFoundError

home, seconds = sys.argv[1], float(sys.argv[2])
svc = SearchService(Store(home), background=True)  # builds the index in a thread, as a server
rng = np.random.default_rng()
end = time.monotonic() + seconds
n = 0
while time.monotonic() < end:
    try:
        view = svc.view("photos")
    except CollectionNotFoundError:
        time.sleep(0.05)
        continue
    if view.n_tiles:
        svc.search("photos", rng.standard_normal(view.collection.dim).astype("float32"), 5)
        n += 1
print(n)
"""


@pytest.mark.slow
def test_short_lived_searchers_during_commits_and_index_builds(
    tmp_path: Path, derm_dir: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((derm_dir / "images").glob("*.jpg"))[:30]:
        (images / p.name).write_bytes(p.read_bytes())
    home = tmp_path / "home"
    env = {**os.environ, "LAMINA_COMMIT_EVERY_SOURCES": "1", "LAMINA_COMPACT_SEGMENTS": "1000"}
    writer = subprocess.Popen(
        [sys.executable, "-m", "lamina.api", "--home", str(home), "index", str(images), "--collection",
         "photos", "--index-factory", "IVF4", "--no-progress", "--json"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    searchers: list[subprocess.Popen[bytes]] = []
    finished: list[tuple[int, str]] = []

    def reap(procs: list[subprocess.Popen[bytes]]) -> list[subprocess.Popen[bytes]]:
        alive = []
        for proc in procs:
            if proc.poll() is None:
                alive.append(proc)
            else:
                _, err = proc.communicate()
                finished.append((proc.returncode, err.decode()[-1500:]))
        return alive

    started = time.monotonic()
    while writer.poll() is None or time.monotonic() - started < 8:
        searchers = reap(searchers)
        if len(searchers) < 2:
            searchers.append(
                subprocess.Popen(
                    [sys.executable, "-c", SEARCHER, str(home), "0.6"],
                    cwd=REPO,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            )
        time.sleep(0.05)
        assert time.monotonic() - started < 240
    for proc in searchers:
        proc.wait(timeout=60)
    reap(searchers)
    out, err = writer.communicate()
    assert writer.returncode == 0, err.decode()[-2000:]
    assert len(finished) >= 8, len(finished)
    crashed = [e for code, e in finished if code != 0]
    assert not crashed, crashed[:2]
    # the store is whole: 30 photos once each, every segment indexed after one more build
    col = Store(home).collection("photos")
    ids = np.concatenate(
        [pq.read_table(s.tiles_path).column("tile_id").to_numpy() for s in col.segments()]
    )
    assert len(ids) == 30 and len(np.unique(ids)) == 30
    assert not [p for p in col.segments_dir.iterdir() if p.name.startswith(".tmp-")]
