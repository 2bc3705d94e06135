"""Searching while `lamina index` runs in another process: new photos appear without a restart."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lamina.api.client import Client
from tests.api.conftest import poll

REPO = Path(__file__).resolve().parents[2]


def lamina_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("lamina")
    return (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-c", "from lamina.api.cli import main; main()"]
    )


@pytest.mark.slow
def test_search_during_ingest(
    tmp_path: Path,
    derm_images: list[Path],
    live_server: Any,
) -> None:
    from lamina.api.app import create_app

    labels = derm_images[0].parents[1] / "labels.csv"
    first, second = tmp_path / "first" / "images", tmp_path / "second" / "images"
    for folder, files in ((first, derm_images[:20]), (second, derm_images[20:140])):
        folder.mkdir(parents=True)
        for f in files:
            shutil.copy(f, folder / f.name)
    home = tmp_path / "home"
    env = dict(os.environ, LAMINA_HOME=str(home))

    def index(folder: Path, *extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                *lamina_cmd(),
                "index",
                str(folder),
                "--collection",
                "derm",
                "--encoder",
                "test/tiny-vit",
                "--allow-test-encoder",
                "--manifest",
                str(labels),
                "--source-column",
                "filename",
                "--device",
                "cpu",
                "--no-progress",
                *extra,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    proc = index(first)
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""

    app = create_app({"HOME": str(home), "TESTING": True})
    with live_server(app, threads=4) as srv:
        client = Client(srv.url)
        before = client.collection("derm")
        assert before["tiles"] == 20
        snap0 = client.search_tile("derm", 0, k=50).snapshot
        proc = index(second, "--batch-size", "8")
        snapshots, counts = {snap0}, []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            res = client.search_tile("derm", 0, k=200)
            snapshots.add(res.snapshot)
            counts.append(len(res.hits))
            if proc.poll() is not None and len(res.hits) == 140:
                break
            time.sleep(0.2)
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
        # the server answers on its current snapshot while it prepares the committed one
        committed = client.health()["snapshots"]["derm"]
        final = poll(
            lambda: client.search_tile("derm", 0, k=200), lambda r: r.snapshot == committed
        )
        assert final.snapshot == committed and len(final.hits) == 140
        assert final.snapshot != snap0 and len(snapshots) >= 2
        assert counts == sorted(counts)  # never goes backwards
        assert client.collection("derm")["tiles"] == 140
