"""The base distribution is the client alone: it installs into a clean venv and searches a server.

A wheel is built from this repository (``pip wheel --no-deps --no-build-isolation``, offline)
and installed without extras into a venv made with ``--without-pip``. In that venv no
third-party package may be importable (torch, FAISS, DuckDB, numpy, Flask, click...), the only
distribution is ``lamina``, and ``from lamina import Client`` must search a real ``lamina
serve`` (a subprocess of the server-side venv, on a free port) and get exactly the hits the
same script gets in the server-side venv. The ``lamina`` console script of the clean venv
exits 2 naming the ``server`` extra.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "derm"
HEAVY = ("torch", "timm", "faiss", "duckdb", "numpy", "flask", "click", "PIL", "pyarrow")
SOURCES = ("pyproject.toml", "README.md", "lamina", "api", "search", "indexer", "encoders")

CLIENT_SCRIPT = r"""
import json, sys
import importlib.metadata as md
import importlib.util as iu
from lamina import Client, LaminaError

url, collection, photo = sys.argv[1:4]
client = Client(url)
result = client.search_image(collection, photo, k=5, filter={"diagnostic": ["ACK", "BCC", "NEV"]})
missing = None
try:
    client.search_image("no-such-collection", photo, k=1)
except LaminaError as exc:
    missing = exc.code
print(json.dumps({
    "health": client.health().get("ok"),
    "hits": [[h.tile_id, round(h.score, 6), h.metadata.get("diagnostic")] for h in result.hits],
    "missing": missing,
    "importable": sorted(m for m in sys.argv[4].split(",") if iu.find_spec(m) is not None),
    "distributions": sorted({d.metadata["Name"] for d in md.distributions()}),
}))
"""


def _copy_sources(dest: Path) -> Path:
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding the lamina wheel without extras, and nothing else (not even pip)."""
    root = tmp_path_factory.mktemp("light")
    src = _copy_sources(root / "src")  # the build writes build/ and egg-info into its source
    wheels = root / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels)]
        + [str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("lamina-*.whl")
    env_dir = root / "clean"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    installed = subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return python


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``lamina serve --port 0`` (server-side venv) over 30 demo photos with their labels."""
    root = tmp_path_factory.mktemp("light-server")
    images = root / "images"
    images.mkdir()
    for photo in sorted((DEMO / "images").glob("*.jpg"))[:30]:
        shutil.copy(photo, images / photo.name)
    home = root / "home"
    lamina = [sys.executable, "-m", "lamina", "--home", str(home)]
    index = subprocess.run(
        [*lamina, "index", str(images), "--collection", "derm", "--no-progress"]
        + ["--manifest", str(DEMO / "labels.csv"), "--source-column", "filename"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert index.returncode == 0, index.stderr[-3000:]
    proc = subprocess.Popen(
        [*lamina, "serve", "--port", "0", "--workers", "2"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert found, f"no address in {line!r}"
        yield f"http://127.0.0.1:{found.group(1)}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _search(python: Path | str, url: str) -> dict[str, object]:
    photo = sorted((DEMO / "images").glob("*.jpg"))[3]
    proc = subprocess.run(
        [str(python), "-c", CLIENT_SCRIPT, url, "derm", str(photo), ",".join(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=photo.parent,  # not the repository: its folders must not be importable
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc: dict[str, object] = json.loads(proc.stdout)
    return doc


def test_clean_venv_client_gets_the_server_side_hits(clean_python: Path, server: str) -> None:
    light = _search(clean_python, server)
    assert light["importable"] == [], f"importable in the clean venv: {light['importable']}"
    assert light["distributions"] == ["lamina"]
    assert light["health"] is True
    assert light["missing"] == "COLLECTION_NOT_FOUND"
    hits = light["hits"]
    assert isinstance(hits, list) and len(hits) == 5
    assert all(h[2] in ("ACK", "BCC", "NEV") for h in hits)
    full = _search(sys.executable, server)
    assert full["hits"] == hits
    importable = full["importable"]
    assert isinstance(importable, list) and "numpy" in importable  # the server's packages


def test_console_script_without_the_server_extra_says_what_to_install(
    clean_python: Path,
) -> None:
    proc = subprocess.run(
        [str(clean_python.parent / "lamina"), "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "pip install 'lamina[server]'" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
