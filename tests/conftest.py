"""Shared fixtures. Real data comes from ../shared/data (or $LAMINA_SHARED_DATA)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
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


# -- synthetic whole-slide images (pyramidal tiled TIFFs that OpenSlide reads as generic-tiff) --

PINK = (215, 135, 180)
PURPLE = (110, 60, 150)
GLASS = (240, 240, 238)
PEN_COLOURS = {"blue": (40, 60, 220), "green": (40, 160, 60), "black": (25, 25, 35)}
CELL = 128
"""Side in level-0 pixels of one tile of the default synthetic plan (tile_px 64 at 0.5 µm/px on
a 0.25 µm/px slide: 64 pixels read at pyramid level 1)."""


def synthetic_rgb(
    width: int, height: int, tissue: list[tuple[int, int, int, int]], pens: Any = (), seed: int = 0
) -> Any:
    """Glass with textured pink/purple tissue rectangles and pen strokes, given in CELL units
    (col0, row0, col1, row1), end-exclusive."""
    import numpy as np

    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.float32)
    img[:] = GLASS
    img += rng.normal(0, 1.5, img.shape)
    for c0, r0, c1, r1 in tissue:
        ys, xs = slice(r0 * CELL, r1 * CELL), slice(c0 * CELL, c1 * CELL)
        h, w = (r1 - r0) * CELL, (c1 - c0) * CELL
        low = rng.random((h // 16 + 1, w // 16 + 1)).astype(np.float32)
        mix = np.kron(low, np.ones((16, 16), np.float32))[:h, :w, None] * 0.7
        patch = np.array(PINK, np.float32) * (1 - mix) + np.array(PURPLE, np.float32) * mix
        img[ys, xs] = patch + rng.normal(0, 6, patch.shape)
    for colour, (c0, r0, c1, r1) in pens:
        img[r0 * CELL : r1 * CELL, c0 * CELL : c1 * CELL] = PEN_COLOURS[colour]
    return np.clip(img, 0, 255).astype(np.uint8)


def write_pyramid_tiff(
    path: Path, rgb: Any, mpp: float | None, levels: int = 3, layout: str = "pages", tile: int = 256
) -> Path:
    """A tiled, deflate-compressed TIFF: levels as pages of the main IFD chain (what OpenSlide's
    generic-tiff reads as a pyramid) or as SubIFDs (OpenSlide then sees level 0 only).
    Resolution tags in pixels per centimetre give OpenSlide its mpp; mpp=None writes none."""
    import numpy as np
    import tifffile

    pyramid = [rgb]
    for _ in range(1, levels):
        a = pyramid[-1]
        h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        pyramid.append(
            a[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3)).round().astype(np.uint8)
        )
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(pyramid):
            kw: dict[str, Any] = {"tile": (tile, tile), "compression": "zlib", "photometric": "rgb"}
            if mpp is not None:
                ppcm = 1e4 / (mpp * 2**i)
                kw.update(resolution=(ppcm, ppcm), resolutionunit="CENTIMETER")
            if layout == "subifds" and i == 0:
                kw["subifds"] = len(pyramid) - 1
            tw.write(level, subfiletype=0 if i == 0 else 1, **kw)
    return path


@pytest.fixture(scope="session")
def make_slide(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Factory: make_slide(name, tissue=[cells], pens=[(colour, cells)], cols=16, rows=12,
    mpp=0.25, levels=3, layout='pages', seed=0) -> Path of a synthetic slide (cached)."""
    root = tmp_path_factory.mktemp("synthetic-slides")
    made: dict[str, Path] = {}

    def make(
        name: str,
        tissue: list[tuple[int, int, int, int]],
        pens: Any = (),
        cols: int = 16,
        rows: int = 12,
        mpp: float | None = 0.25,
        levels: int = 3,
        layout: str = "pages",
        seed: int = 0,
        folder: str = "",
    ) -> Path:
        key = f"{folder}/{name}"
        if key not in made:
            (root / folder).mkdir(parents=True, exist_ok=True)
            rgb = synthetic_rgb(cols * CELL, rows * CELL, tissue, list(pens), seed)
            made[key] = write_pyramid_tiff(root / folder / name, rgb, mpp, levels, layout)
        return made[key]

    return make
