"""Where each exported tile lies: the coordinate columns every export format carries.

``x``, ``y``: level-0 pixels of the tile's top-left corner (x right, y down). ``level``: the
pyramid level its pixels were read at. ``size_px``: the pixels read at that level (the tile's
side there; ``size_px * level_downsample`` level-0 pixels). ``mpp``: µm per pixel of the tile
as it was embedded (the collection's target resolution for slide tiles).

Photos: a whole-photo row has ``x = y = 0``, ``level`` 0, ``size_px`` the photo's longest side
and ``mpp`` null unless the manifest gave one; a photo tile has its offset in the photo's pixels
and ``size_px`` its side. Imported vectors without coordinates: ``x = y = size_px = 0``.
In ``.npz`` files a null ``mpp`` is NaN; in Parquet and CSV it is null (an empty CSV field).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from lamina.search.views import CollectionView

INT_COLUMNS = ("x", "y", "level", "size_px")
COORD_COLUMNS = (*INT_COLUMNS, "mpp")


def tile_coordinates(
    view: CollectionView, positions: np.ndarray, columns: tuple[str, ...] = COORD_COLUMNS
) -> dict[str, np.ndarray]:
    """The coordinate ``columns`` at ``positions`` (any order): int64 arrays (null: 0), and
    float64 ``mpp`` (null: NaN)."""
    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    out = {c: np.zeros(len(pos), np.int64) for c in columns if c != "mpp"}
    if "mpp" in columns:
        out["mpp"] = np.full(len(pos), np.nan, np.float64)
    if not len(pos):
        return out
    seg, rows = view.locate(pos)
    for s in np.unique(seg):
        sel = np.flatnonzero(seg == s)
        table = view.readers[int(s)].table
        take = pa.array(rows[sel])
        for c in columns:
            if c not in table.column_names:
                continue
            col = table.column(c).take(take)
            if c == "mpp":
                values = col.cast(pa.float64()).fill_null(np.nan)
            else:
                values = col.cast(pa.int64()).fill_null(0)
            out[c][sel] = values.to_numpy(zero_copy_only=False)
    return out


def coordinate_arrays(coords: Mapping[str, np.ndarray]) -> dict[str, pa.Array]:
    """Arrow columns (``mpp`` NaN -> null) of a coordinate dict, in COORD_COLUMNS order."""
    cols: dict[str, pa.Array] = {}
    for c in COORD_COLUMNS:
        if c not in coords:
            continue
        values = np.asarray(coords[c])
        if c == "mpp":
            cols[c] = pa.array(values, pa.float64(), mask=np.isnan(values))
        else:
            cols[c] = pa.array(values, pa.int64())
    return cols


def coordinates_of(columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Coordinate arrays read back from a table or an npz (missing columns are left out)."""
    out: dict[str, np.ndarray] = {}
    for c in COORD_COLUMNS:
        if c not in columns:
            continue
        col = columns[c]
        if isinstance(col, pa.ChunkedArray | pa.Array):
            if c == "mpp":
                col = col.cast(pa.float64()).fill_null(np.nan)
            col = col.to_numpy(zero_copy_only=False)
        out[c] = np.asarray(col, np.float64 if c == "mpp" else np.int64)
    return out
