"""`lamina index` on real slides: a progress bar over tiles and a per-slide summary (text, JSON)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lamina.search import SearchService, Store

LAMINA = [sys.executable, "-m", "lamina.api"]
SLIDES = ("CMU-1-Small-Region.svs", "no-mpp.tiff")
"""A real slide that carries its µm/px and a synthetic one without it (--mpp-override)."""


@pytest.fixture()
def slides(slides_dir: Path, make_slide: Any) -> list[Path]:
    no_mpp = make_slide(SLIDES[1], tissue=[(1, 1, 9, 8)], mpp=None, folder="summary")
    return [slides_dir / SLIDES[0], no_mpp]


def index(home: Path, slides: list[Path], *extra: str) -> subprocess.CompletedProcess[str]:
    paths = [str(s) for s in slides]
    return subprocess.run(
        [*LAMINA, "--home", str(home), "index", *paths, "--collection", "s"]
        + ["--mpp-override", "0.5", "--workers", "2", *extra],
        capture_output=True,
        text=True,
    )


def stored_counts(home: Path) -> dict[str, tuple[int, dict[str, Any]]]:
    v = SearchService(Store(home)).view("s")
    out = {}
    for row in v.sql("SELECT source, n_tiles, mpp, properties FROM sources"):
        props = row["properties"]
        props = json.loads(props) if isinstance(props, str) else props
        out[Path(row["source"]).name] = (int(row["n_tiles"]), {**props, "mpp": row["mpp"]})
    return out


def test_json_rows_match_the_store(tmp_path: Path, slides: list[Path]) -> None:
    proc = index(tmp_path, slides, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = {r["slide"]: r for r in doc["slides"]}
    assert set(rows) == set(SLIDES)
    stored = stored_counts(tmp_path)
    for name, (n, props) in stored.items():
        r = rows[name]
        assert r["tiles"] == n and r["grid_tiles"] == props["grid_tiles"]
        assert r["tissue_fraction"] == pytest.approx(props["tissue_fraction"], abs=1e-4)
        assert r["mpp"] == pytest.approx(props["mpp"], abs=1e-5)
        assert r["mpp_source"] == props["mpp_source"]
        assert r["seconds"] > 0
    # CMU carries its own resolution; the synthetic slide has none, so the override applies
    assert rows[SLIDES[0]]["mpp_source"] == "properties"
    assert rows[SLIDES[1]]["mpp_source"] == "override"
    assert sum(r["tiles"] for r in rows.values()) == doc["tiles"]
    # the bar counted tiles: its last state is every tile of the run, with a rate
    total = doc["tiles"]
    assert re.search(rf"\b{total}/{total} \[[^\]]*tile/s, files 2/2, failed 0\]", proc.stderr)
    assert "src" not in proc.stderr


def test_text_summary_is_a_table(tmp_path: Path, slides: list[Path]) -> None:
    proc = index(tmp_path, slides, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["slide", "tiles"])
    assert lines[head].split() == ["slide", "tiles", "tissue", "mpp", "mpp", "from", "seconds"]
    stored = stored_counts(tmp_path)
    for line in lines[head + 1 : head + 3]:
        name, tiles, tissue, mpp, source, seconds = line.split()
        n, props = stored[name]
        assert int(tiles) == n
        assert tissue == f"{100 * props['tissue_fraction']:.1f}%"
        assert float(mpp) == pytest.approx(props["mpp"], abs=1e-3)
        assert source == props["mpp_source"] and float(seconds) > 0
    assert proc.stderr == ""  # --no-progress: no bar
