"""Shared fixtures. Real data comes from ../shared/data (or $LAMINA_SHARED_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    env = os.environ.get("LAMINA_SHARED_DATA")
    return Path(env) if env else (REPO.parent / "shared" / "data").resolve()


SHARED = shared_data_dir()
DERM_DIR = SHARED / "derm" / "pad_ufes20_subset"
SLIDES_DIR = SHARED / "slides"
TILES_DIR = SHARED / "path_tiles"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set LAMINA_SHARED_DATA)")
    return SHARED


@pytest.fixture(scope="session")
def derm_dir(shared_data: Path) -> Path:
    return shared_data / "derm" / "pad_ufes20_subset"


@pytest.fixture(scope="session")
def slides_dir(shared_data: Path) -> Path:
    return shared_data / "slides"


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    """An empty Lamina home for one test."""
    h = tmp_path / "home"
    h.mkdir()
    return h
