"""Start-up cost of the command line: what each command imports, read from ``python -X importtime``.

The installed ``lamina`` script runs in a subprocess with ``-X importtime``; every module it
imported is listed on stderr. torch, timm, torchvision and TensorFlow must never appear unless a
model that needs them runs, so a weights-free (classic encoder) collection is indexed and
searched by image without them; ``lamina --help`` must not load the store either (no numpy,
FAISS, DuckDB, pyarrow or Flask).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "demo" / "derm" / "images"
SCRIPT = Path(sys.executable).parent / "lamina"
MODEL_LIBS = {"torch", "timm", "torchvision", "tensorflow", "keras", "jax"}
STORE_LIBS = {"numpy", "faiss", "duckdb", "pyarrow", "flask", "sqlalchemy", "PIL"}
_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|(\s*)(\S+)$")


def imported(*args: str, home: Path) -> tuple[set[str], str]:
    """Run ``lamina --home HOME ARGS`` under ``-X importtime``: (top-level modules, stdout)."""
    assert SCRIPT.is_file(), f"the lamina console script is not installed next to {sys.executable}"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(SCRIPT), "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {m.group(2).split(".")[0] for m in map(_LINE.match, proc.stderr.splitlines()) if m}
    assert "lamina" in names, "no -X importtime lines were read"
    return names, proc.stdout


@pytest.fixture(scope="module")
def classic_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with 8 demo photos indexed by the weights-free classic encoder (through the CLI,
    which must not import torch either)."""
    root = tmp_path_factory.mktemp("startup")
    photos = root / "photos"
    photos.mkdir()
    for src in sorted(PHOTOS.glob("*.jpg"))[:8]:
        shutil.copy(src, photos / src.name)
    home = root / "home"
    args = ("index", str(photos), "--collection", "derm", "--encoder", "classic/stain-texture")
    names, _ = imported(*args, home=home)
    assert not names & MODEL_LIBS, f"lamina index (classic) imported {sorted(names & MODEL_LIBS)}"
    return home


def test_help_imports_no_store_and_no_model(tmp_path: Path) -> None:
    names, out = imported("--help", home=tmp_path / "home")
    assert "search" in out and "index" in out
    assert not names & MODEL_LIBS, sorted(names & MODEL_LIBS)
    assert not names & STORE_LIBS, f"lamina --help imported {sorted(names & STORE_LIBS)}"


def test_status_imports_no_model(classic_home: Path) -> None:
    names, out = imported("status", "--json", home=classic_home)
    assert "derm" in out
    assert not names & MODEL_LIBS, sorted(names & MODEL_LIBS)


def test_search_by_image_with_classic_encoder_imports_no_model(classic_home: Path) -> None:
    query = sorted(PHOTOS.glob("*.jpg"))[0]
    args = ("search", "--collection", "derm", "--image", str(query), "-k", "3", "--json")
    names, out = imported(*args, home=classic_home)
    assert query.name in out  # the query photo is indexed: it finds itself
    assert not names & MODEL_LIBS, f"a classic-encoder search imported {sorted(names & MODEL_LIBS)}"


def test_device_auto_is_resolved_by_the_encoder_runtime() -> None:
    from lamina.encoders import EncoderConfig, device_for, register_encoder
    from lamina.encoders.registry import get_entry

    assert get_entry("classic/stain-texture").runtime == "numpy"
    assert get_entry("path/foundation").runtime == "tensorflow"
    assert get_entry("test/tiny-vit").runtime == "torch"
    assert device_for("numpy", "auto") == device_for("numpy", "cuda") == "cpu"
    assert device_for("tensorflow", "auto") == "cuda"  # the GPU only where TensorFlow sees one
    assert device_for("tensorflow", "cpu") == "cpu"
    for runtime in ("numpy", "tensorflow", "torch"):
        with pytest.raises(ValueError, match="device must be"):
            device_for(runtime, "tpu")
    with pytest.raises(ValueError, match="runtime must be"):
        register_encoder(EncoderConfig("mylab/x", "any", "x", 4, 8), runtime="jax")
