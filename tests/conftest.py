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


def write_huge_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A valid 1-bit PNG of huge dimensions that is small on disk (rows of zeros)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body)
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture()
def bad_images(tmp_path: Path, derm_dir: Path) -> dict[str, Path]:
    """Broken files next to real photos: zero bytes, truncated JPEG, text named .jpg, huge PNG."""
    d = tmp_path / "bad"
    d.mkdir()
    real = sorted((derm_dir / "images").glob("*.jpg"))[:1][0].read_bytes()
    files = {
        "empty": d / "empty.jpg",
        "truncated": d / "truncated.jpg",
        "text": d / "notes.jpg",
        "huge": d / "huge.png",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(real[: len(real) // 3])
    files["text"].write_text("this is not an image\n")
    write_huge_png(files["huge"])
    return files
