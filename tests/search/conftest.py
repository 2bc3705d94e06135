"""Fixtures of the store tests: a small real derm collection built once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lamina.search import Store


def build_derm_home(base: Path, derm_dir: Path) -> Path:
    """A test/tiny-vit collection 'derm' of every third PAD-UFES-20 photo (built once)."""
    home = base / "derm-home"
    if (home / "collections" / "derm" / "collection.json").is_file():
        return home
    from lamina.encoders import create_encoder
    from lamina.indexer import IngestOptions, Manifest, ingest

    images = base / "derm-src" / "images"
    images.mkdir(parents=True, exist_ok=True)
    for p in sorted((derm_dir / "images").glob("*.jpg"))[::3]:
        shutil.copy(p, images / p.name)
    ingest(
        Store(home),
        "derm",
        [str(images)],
        create_encoder("test/tiny-vit", allow_test=True),
        IngestOptions(progress=False),
        Manifest.load(derm_dir / "labels.csv", "filename"),
    )
    return home


@pytest.fixture()
def derm_home(tmp_path_factory: pytest.TempPathFactory, derm_dir: Path, tmp_path: Path) -> Path:
    """A private copy (own catalog) of the shared tiny derm collection."""
    shared = build_derm_home(tmp_path_factory.getbasetemp(), derm_dir)
    home = tmp_path / "home"
    shutil.copytree(shared / "collections", home / "collections")
    return home
