"""Encoder plugins: a throwaway package with a ``lamina.encoders`` entry point is pip-installed
into this venv, used by index, search by image (CLI and a running server) and cohorts, then
uninstalled."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
KEY = "plugintest/grid-colour"

PLUGIN = '''
"""A test plugin: the 4 x 4 grid of mean colours of a 32 px image (48-d)."""
import numpy as np

from lamina.encoders import Encoder, EncoderConfig, register_encoder


class GridColour(Encoder):
    def _embed_batch(self, batch):
        x = batch.astype(np.float32) / 255.0
        return x.reshape(len(x), 4, 8, 4, 8, 3).mean(axis=(2, 4)).reshape(len(x), 48) + 0.01


CONFIG = EncoderConfig(
    key="plugintest/grid-colour", modality="any", architecture="4x4 mean colour",
    embed_dim=48, input_px=32, licence="MIT", description="test plugin",
)


@register_encoder(CONFIG)
def build(config, weights=None, device="cpu", batch_size=64):
    return GridColour(config, "none", "cpu", batch_size)
'''

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "lamina-test-plugin"
version = "0.1"

[project.entry-points."lamina.encoders"]
grid = "lamina_test_plugin"
broken = "lamina_test_plugin.broken"

[tool.setuptools]
packages = ["lamina_test_plugin"]
"""


def _pip(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    src = tmp_path_factory.mktemp("plugin")
    (src / "pyproject.toml").write_text(PYPROJECT)
    pkg = src / "lamina_test_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (pkg / "broken.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    _pip("install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", str(src))
    try:
        yield KEY
    finally:
        _pip("uninstall", "--quiet", "--yes", "lamina-test-plugin")


def _lamina(home: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "lamina.api", "--home", str(home), *args, "--json"],
                          capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_an_installed_plugin_works_everywhere(plugin: str, tmp_path: Path, derm_dir: Path) -> None:
    from lamina.api.client import Client

    home = tmp_path / "home"
    doc = _lamina(home, "encoders")
    rows = {r["key"]: r for r in doc["encoders"]}
    assert plugin in rows, doc["plugin_errors"]
    assert rows[plugin]["origin"] == "plugin lamina-test-plugin 0.1"
    assert rows[plugin]["embed_dim"] == 48 and rows[plugin]["weights_available"] is True
    assert "broken on purpose" in doc["plugin_errors"]["broken"]

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((derm_dir / "images").iterdir())[:10]:
        shutil.copy(p, photos / p.name)
    query = sorted(photos.iterdir())[4]
    report = _lamina(home, "index", str(photos), "--collection", "p", "--encoder", plugin,
                     "--no-progress")  # fmt: skip
    assert report["indexed"] == 10 and report["ok"]
    hit = _lamina(home, "search", "--collection", "p", "--image", str(query), "-k", "1")["hits"][0]
    assert Path(hit["source"]).name == query.name and hit["score"] > 0.9999
    cohort = _lamina(home, "cohort", "create", "near", "--collection", "p", "--near", str(query),
                     "--k", "3")  # fmt: skip
    assert cohort["ok"]

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "lamina.api", "--home", str(home), "serve", "--port", str(port)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = Client(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            try:
                client.health()
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.3)
        assert plugin in {e["key"] for e in client.encoders()}
        hits = client.search_image("p", query, k=1).hits
        assert Path(hits[0].source).name == query.name
    finally:
        server.terminate()
        server.wait(timeout=30)
