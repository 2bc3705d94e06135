"""Units of the slide path that need no files: level choice, grid, tissue mask, tile stream."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from lamina.indexer.errors import SlideResolutionError
from lamina.indexer.tile_stream import TileStream
from lamina.indexer.tiling import choose_level, grid_counts, plan_grid
from lamina.indexer.tissue import (
    S_MAX,
    TissueMask,
    detect_tissue,
    hsv,
    mask_downsample,
    otsu,
    pen_mask,
)

# -- level choice ---------------------------------------------------------------------------


def test_level_at_target_is_read_without_resize() -> None:
    c = choose_level([1.0, 2.0, 4.0], mpp0=0.25, target_mpp=0.5, tile_px=224)
    assert (c.level, c.size_px, c.extent_l0) == (1, 224, 448.0)


def test_finer_level_is_chosen_when_none_matches() -> None:
    c = choose_level([1.0, 4.0, 16.0], mpp0=0.25, target_mpp=0.5, tile_px=224)
    assert (c.level, c.size_px) == (0, 448)


def test_coarser_target_reads_more_pixels_of_a_finer_level() -> None:
    c = choose_level([1.0, 2.0, 4.0], mpp0=0.25, target_mpp=2.0, tile_px=224)
    assert (c.level, c.size_px) == (2, 448)


def test_inexact_downsamples_within_tolerance_count_as_the_target() -> None:
    # TCGA-like pyramid: 2.0005x is "2x" for a 1.0 µm/px target on a 0.5 µm/px slide
    c = choose_level([1.0, 2.000506], mpp0=0.5, target_mpp=1.0, tile_px=224)
    assert (c.level, c.size_px) == (1, 224)
    # 0.499 µm/px read at 0.5: the same 224 pixels, no resize
    assert choose_level([1.0], 0.499, 0.5, 224).size_px == 224


def test_slide_coarser_than_target_is_refused_beyond_tolerance() -> None:
    assert choose_level([1.0], 0.54, 0.5, 224).size_px == 207  # 8 % coarser: slight upsample
    with pytest.raises(SlideResolutionError, match="--mpp"):
        choose_level([1.0], 1.0, 0.5, 224, "x.svs")


# -- grid -----------------------------------------------------------------------------------


def test_grid_drops_partial_edge_tiles() -> None:
    c = choose_level([1.0], 0.5, 0.5, 100)
    assert grid_counts(350, 220, 100) == (3, 2)
    tiles = plan_grid(350, 220, c)
    assert [(t.x, t.y) for t in tiles[:4]] == [(0, 0), (100, 0), (200, 0), (0, 100)]
    assert all(t.x + 100 <= 350 and t.y + 100 <= 220 for t in tiles)


def test_slide_smaller_than_a_tile_gets_one_tile() -> None:
    assert grid_counts(16, 16, 224) == (1, 1)
    assert grid_counts(500, 16, 224) == (2, 1)


def test_grid_origins_are_level0_pixels() -> None:
    c = choose_level([1.0, 2.000506], 0.5, 1.0, 100)
    tiles = plan_grid(2221, 1783, c)
    assert tiles[1].x == round(100 * 2.000506) and tiles[1].level == 1


# -- tissue ---------------------------------------------------------------------------------


def _glass(h: int = 96, w: int = 96) -> np.ndarray:
    return np.full((h, w, 3), 242, np.uint8)


def test_hsv_matches_known_colours() -> None:
    rgb = np.array([[[255, 0, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], np.uint8)
    h, s, v = hsv(rgb)
    np.testing.assert_allclose(h[0], [0, 240, 0, 0])
    np.testing.assert_allclose(s[0], [1, 1, 0, 0])
    np.testing.assert_allclose(v[0], [1, 1, 1, 0])


def test_otsu_splits_two_modes_and_handles_constant_input() -> None:
    values = np.r_[np.full(500, 0.02), np.full(500, 0.45)]
    assert 0.02 < otsu(values) <= 0.45
    assert otsu(np.full(100, 0.3)) == 0.0
    assert otsu(np.zeros(0)) == 0.0


def test_pink_tissue_on_glass_is_found_exactly() -> None:
    rgb = _glass()
    rgb[16:64, 32:80] = (215, 135, 180)
    tm = detect_tissue(rgb, downsample=4.0, mpp0=0.5, width=384, height=384)
    assert tm.mask[16:64, 32:80].all() or tm.mask[17:63, 33:79].all()
    assert not tm.mask[:12].any() and not tm.mask[:, :28].any()
    assert tm.fraction(32 * 4, 16 * 4, 48 * 4) > 0.99
    assert tm.fraction(0, 0, 64) == 0.0


def test_pen_marks_are_not_tissue() -> None:
    rgb = _glass()
    rgb[10:40, 10:40] = (40, 60, 220)  # blue marker
    rgb[50:80, 10:40] = (40, 160, 60)  # green marker
    rgb[10:40, 50:80] = (25, 25, 35)  # black marker
    rgb[50:80, 50:80] = (215, 135, 180)  # tissue
    h, s, v = hsv(rgb)
    assert s[15, 15] > S_MAX and s[55, 15] > S_MAX  # saturation alone would call them tissue
    assert pen_mask(h, s, v)[15, 15] and pen_mask(h, s, v)[55, 15] and pen_mask(h, s, v)[15, 55]
    tm = detect_tissue(rgb, downsample=1.0, mpp0=8.0, width=96, height=96)
    assert not tm.mask[:42, :42].any() and not tm.mask[48:, :42].any()
    assert not tm.mask[:42, 48:].any()
    assert tm.mask[56:76, 56:76].all()


def test_dense_dark_purple_nuclei_are_tissue_not_ink() -> None:
    rgb = _glass()
    rgb[20:70, 20:70] = (215, 135, 180)
    rgb[35:50, 35:50] = (45, 15, 46)  # very dark but saturated: packed nuclei
    tm = detect_tissue(rgb, downsample=1.0, mpp0=8.0, width=96, height=96)
    assert tm.mask[35:50, 35:50].all()


def test_blank_glass_has_no_tissue_and_all_tissue_is_all() -> None:
    blank = detect_tissue(_glass(), 1.0, 8.0, 96, 96)
    assert blank.tissue_fraction == 0.0
    pink = np.full((96, 96, 3), (215, 135, 180), np.uint8)
    assert detect_tissue(pink, 1.0, 8.0, 96, 96).tissue_fraction == 1.0


def test_fraction_of_a_padded_tile_counts_only_the_slide_part() -> None:
    tm = TissueMask(mask=np.ones((16, 16), bool), downsample=1.0, width=16, height=16)
    assert tm.fraction(0, 0, 224) == 1.0
    half = np.zeros((16, 16), bool)
    half[:, :8] = True
    assert TissueMask(mask=half, downsample=1.0, width=16, height=16).fraction(0, 0, 224) == 0.5


def test_mask_resolution_follows_tiles_and_tiny_slides() -> None:
    assert mask_downsample(0.25, 448, 100_000, 80_000) == 28.0  # 16 mask px per tile
    assert mask_downsample(0.25, 4096, 100_000, 80_000) == 32.0  # 8 µm/px
    assert mask_downsample(0.5, 224, 16, 16) == 1.0  # tiny slide: full resolution


# -- tile stream ----------------------------------------------------------------------------


def test_stream_keeps_plan_order_and_bounds_reads_in_flight() -> None:
    lock = threading.Lock()
    state = {"active": 0, "peak": 0, "started": 0}

    def read(i: int) -> np.ndarray:
        with lock:
            state["active"] += 1
            state["started"] += 1
            state["peak"] = max(state["peak"], state["active"])
        time.sleep(0.002 * ((i * 7) % 5))
        with lock:
            state["active"] -= 1
        return np.full((2, 2, 3), i % 256, np.uint8)

    stream = TileStream(read, list(range(60)), workers=4, window=8)
    first = next(stream)
    assert first[0, 0, 0] == 0
    assert state["started"] <= 8  # bounded: no more than the window was asked for
    rest = [int(a[0, 0, 0]) for a in stream]
    assert rest == list(range(1, 60))
    assert state["peak"] <= 4


def test_stream_raises_the_failed_tile_in_order_and_stops() -> None:
    def read(i: int) -> np.ndarray:
        if i == 5:
            raise OSError("bad tile 5")
        return np.zeros((1, 1, 3), np.uint8)

    stream = TileStream(read, list(range(20)), workers=3, window=6)
    got = []
    with pytest.raises(OSError, match="bad tile 5"):
        for a in stream:
            got.append(a)
    assert len(got) == 5
    assert list(stream) == []


def test_stream_close_cancels_queued_reads() -> None:
    calls = []

    def read(i: int) -> np.ndarray:
        calls.append(i)
        time.sleep(0.01)
        return np.zeros((1, 1, 3), np.uint8)

    stream = TileStream(read, list(range(100)), workers=2, window=4)
    next(stream)
    stream.close()
    assert len(calls) <= 6
    assert list(stream) == []
    empty = TileStream(read, [], workers=2)
    assert list(empty) == []


def test_vectorised_fractions_match_single_lookups() -> None:
    rng = np.random.default_rng(0)
    tm = TissueMask(mask=rng.random((300, 400)) > 0.5, downsample=7.3, width=2900, height=2180)
    origins = [(x, y) for x in range(0, 3100, 223) for y in range(0, 2300, 223)]
    expected = [tm.fraction(x, y, 224.0) for x, y in origins]
    np.testing.assert_array_equal(tm.fractions(origins, 224.0), np.float32(expected))
    assert tm.fractions([], 224.0).shape == (0,)
