"""An index build (train, per-segment sidecars, pointer swap) and the clustering rewrite that
follows it survive SIGKILL at random moments: every committed tile is still found exactly once,
searches answer (exactly while no version is complete), and the next build completes."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lamina.search.ann import AnnIndex, update_index
from lamina.search.compaction import cluster
from lamina.search.segments import remove_stale
from lamina.search.service import SearchService
from lamina.search.store import Store

from .clustered import clustered, write_collection

ROOT = Path(__file__).parents[2]
BUILD = (
    "import sys; sys.path.insert(0, {root!r})\n"
    "from lamina.search.store import Store\n"
    "from lamina.search.ann import update_index\n"
    "from lamina.search.compaction import cluster\n"
    "col = Store({home!r}).collection('c')\n"
    "update_index(col)\n"
    "cluster(col, min_rows=1000)\n"
)


def _run(home: Path) -> subprocess.Popen[bytes]:
    code = BUILD.format(root=str(ROOT), home=str(home))
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)


@pytest.mark.slow
def test_index_build_and_clustering_survive_sigkill(tmp_path: Path) -> None:
    rng = np.random.default_rng(21)
    vectors, cluster_of = clustered(rng, 24_000, 32, 40)
    base = tmp_path / "base"
    col = write_collection(base, "c", vectors, cluster_of, segments=3)
    col.set_index("IVF32", {"nprobe": 8})
    t0 = time.perf_counter()
    assert _run(base).wait(timeout=300) == 0
    span = time.perf_counter() - t0
    probe = rng.choice(len(vectors), 40, replace=False)
    outcomes = []
    chooser = random.Random(7)
    for trial in range(8):
        home = tmp_path / f"t{trial}"
        write_collection(home, "c", vectors, cluster_of, segments=3).set_index(
            "IVF32", {"nprobe": 8}
        )
        proc = _run(home)
        time.sleep(chooser.uniform(0.1, 1.0) * span)
        proc.send_signal(signal.SIGKILL)
        outcomes.append(proc.wait())
        col = Store(home).collection("c")
        svc = SearchService(Store(home))
        view = svc.view("c")
        ids = view.all_tile_ids()
        assert len(ids) == len(vectors) and len(np.unique(ids)) == len(vectors)
        for res, i in zip(svc.search_batch("c", vectors[probe], 1), probe, strict=True):
            assert res.hits[0].tile_id == int(i)  # ids were allocated in write order
        # the next build finishes the work and covers every segment
        update_index(col)
        cluster(col, min_rows=1000)
        remove_stale(col.segments_dir, grace_s=0)
        ann = AnnIndex.load(col)
        assert ann is not None
        svc = SearchService(Store(home))
        res = svc.search("c", vectors[probe[0]], 5, params={"strategy": "ann"})
        assert res.plan["segments_exact"] == 0 and res.hits[0].tile_id == int(probe[0])
        assert len(svc.view("c").all_tile_ids()) == len(vectors)
        assert not [p for p in col.index_dir.iterdir() if p.name.startswith(".build-")]
    assert any(code == -signal.SIGKILL for code in outcomes)
