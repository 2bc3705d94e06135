"""Patch features in TRIDENT's layout: one ``<slide>.h5`` per slide, read by MIL code unchanged.

TRIDENT (mahmoodlab/TRIDENT, ``WSI.extract_patch_features`` + ``IO.save_h5``) writes, per slide:

- dataset ``features``: (n, d) float32, one row per patch; attribute ``name`` (the slide file's
  name without its extension);
- dataset ``coords``: (n, 2) int64, (x, y) of each patch's top-left corner in level-0 pixels;
  attributes ``patch_size`` (patch side at the target magnification, pixels the encoder was
  given), ``patch_size_level0`` (the side in level-0 pixels), ``level0_magnification``,
  ``target_magnification``, ``overlap``, ``name``, ``level0_width``, ``level0_height``;
- both datasets chunked one row at a time with an unlimited first axis (``chunks=(1, ...)``,
  ``maxshape=(None, ...)``), as its ``save_h5`` makes them.

Magnifications follow TRIDENT's ``mpp = 10 / magnification`` (0.5 µm/px is 20x). Lamina adds,
without changing any of the above: ``coords`` attributes ``patch_level`` (the pyramid level
read, CLAM's name for it), ``mpp`` and ``level0_mpp``; ``features`` attributes ``encoder``,
``collection``, ``snapshot`` and ``source_id``; and a dataset ``tile_ids`` (n,) int64 naming
each row's tile in the collection. TRIDENT's own ``savetodir`` attribute (a path on the
writing machine) is left out. Rows are in tile-id order (the ingest's row-major grid order).

Only slide tiles (``kind`` "tile": ingested slides and imported patch features with
coordinates) are written; other rows (photos, photo tiles, imported vectors without
coordinates) are counted in ``skipped_rows``. ``slides.csv`` lists each
file with its slide's source id, tile count and, with ``label_column``, the slide's label.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lamina.search.errors import InvalidQueryError
from lamina.search.export_coords import tile_coordinates
from lamina.search.views import CollectionView

TRIDENT_FORMAT = "trident-h5"
SLIDES_CSV = "slides.csv"


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise InvalidQueryError(
            "format trident-h5 needs h5py where the export runs: pip install 'lamina[import]'"
        ) from None
    return h5py


def _magnification(mpp: float) -> float | int:
    mag = round(10.0 / mpp, 4)
    return int(mag) if float(mag).is_integer() else mag


def _properties(source: dict[str, Any]) -> dict[str, Any]:
    props = source.get("properties")
    if isinstance(props, str):
        try:
            props = json.loads(props)
        except ValueError:
            props = None
    return props if isinstance(props, dict) else {}


def _stem(shown: str | None, source_id: str) -> str:
    name = Path(str(shown or "")).name
    if not name:
        return source_id[:12]
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name


def _slide_positions(
    view: CollectionView, positions: np.ndarray
) -> tuple[dict[tuple[str, str], np.ndarray], int]:
    """Positions of slide tiles grouped by (source_id, source), each group in tile-id order;
    and how many rows were not slide tiles (photos, photo tiles, vectors without coordinates)."""
    from lamina.search.exports import column_text

    pos = np.sort(np.asarray(positions, np.int64))
    kind = np.asarray(column_text(view, "kind", pos).to_pylist(), dtype=object)
    slide = kind == "tile"
    skipped = int((~slide).sum())
    pos = pos[slide]
    sids = column_text(view, "source_id", pos).to_pylist()
    paths = column_text(view, "source", pos).to_pylist()
    ids = view.tile_ids_at(pos)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(sids, paths, strict=True)):
        groups.setdefault((str(key[0]), str(key[1])), []).append(i)
    out = {}
    for key, idx in groups.items():
        sel = np.asarray(idx, np.int64)
        order = np.argsort(ids[sel], kind="stable")
        out[key] = pos[sel][order]
    return out, skipped


def write_trident(
    view: CollectionView,
    out_dir: str | os.PathLike[str],
    *,
    tile_ids: Sequence[int] | None = None,
    label_column: str | None = None,
    source_name: Callable[[str], str | None] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, Any]:
    """Write one TRIDENT ``.h5`` per slide of the collection (or of ``tile_ids``) and
    ``slides.csv`` into ``out_dir``; returns what was written (file names, counts)."""
    h5py = _h5py()
    if label_column is not None and label_column not in view.schema:
        known = ", ".join(view.metadata_columns)
        raise InvalidQueryError(f"unknown label column {label_column!r}; metadata columns: {known}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tile_ids is None:
        positions = view.live_positions()
    else:
        from lamina.search.exports import _present_positions

        positions = _present_positions(view, tile_ids)
    groups, skipped = _slide_positions(view, positions)
    files: list[dict[str, Any]] = []
    used: set[str] = set()
    meta = {
        "collection": view.collection.name,
        "snapshot": view.snapshot.id,
        "encoder": view.collection.fingerprint,
    }
    for n, ((sid, path), pos) in enumerate(sorted(groups.items())):
        source = view.source(sid, path=path)
        name = _stem(source_name(path) if source_name else path, sid)
        if name in used:
            name = f"{name}-{sid[:8]}"
        used.add(name)
        _write_slide(h5py, out / f"{name}.h5", view, source, pos, name, meta)
        row = {"slide_id": name, "source_id": sid, "tiles": len(pos)}
        if label_column is not None:
            value = source.get(label_column)
            row["label"] = None if value is None else str(value)
        files.append(row)
        if progress is not None:
            progress((n + 1) / max(1, len(groups)), f"{n + 1}/{len(groups)} slides written")
    with open(out / SLIDES_CSV, "w", newline="") as fh:
        fields = ["slide_id", "source_id", "tiles"] + (["label"] if label_column else [])
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(files)
    return {
        "format": TRIDENT_FORMAT,
        **meta,
        "slides": files,
        "n_slides": len(files),
        "n_tiles": int(sum(f["tiles"] for f in files)),
        "skipped_rows": skipped,
        "label_column": label_column,
    }


def _write_slide(
    h5py: Any,
    path: Path,
    view: CollectionView,
    source: dict[str, Any],
    pos: np.ndarray,
    name: str,
    meta: dict[str, Any],
) -> None:
    """One slide's file, in TRIDENT's layout (module docstring); through a temporary name."""
    cols = tile_coordinates(view, pos, ("x", "y", "level", "size_px", "tile_px", "mpp"))
    features = np.ascontiguousarray(view.vectors[pos], dtype=np.float32)
    coords = np.stack([cols["x"], cols["y"]], axis=1).astype(np.int64)
    level, size_px, tile_px = (
        int(cols["level"][0]),
        int(cols["size_px"][0]),
        int(cols["tile_px"][0]),
    )
    props = _properties(source)
    downsamples = props.get("level_downsamples") or [1.0]
    ds = float(downsamples[level]) if level < len(downsamples) else 1.0
    mpp0 = float(source.get("mpp") or 0.0)
    tile_mpp = float(cols["mpp"][0]) if cols["mpp"][0] == cols["mpp"][0] else 0.0
    coord_attrs: dict[str, Any] = {
        "patch_size": tile_px or size_px,
        "patch_size_level0": round(size_px * ds),
        "level0_magnification": _magnification(mpp0) if mpp0 else "None",
        "target_magnification": _magnification(tile_mpp) if tile_mpp else "None",
        "overlap": 0,
        "name": name,
        "level0_width": int(source.get("width") or 0),
        "level0_height": int(source.get("height") or 0),
        "patch_level": level,
        "mpp": tile_mpp,
        "level0_mpp": mpp0,
    }
    feature_attrs = {"name": name, **meta, "source_id": str(source["source_id"])}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(3).hex()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            for key, data, attrs in (
                ("features", features, feature_attrs),
                ("coords", coords, coord_attrs),
                ("tile_ids", view.tile_ids_at(pos).astype(np.int64), {}),
            ):
                dset = f.create_dataset(
                    key,
                    shape=data.shape,
                    dtype=data.dtype,
                    chunks=(1, *data.shape[1:]),
                    maxshape=(None, *data.shape[1:]),
                )
                dset[:] = data
                for k, v in attrs.items():
                    dset.attrs[k] = v
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
