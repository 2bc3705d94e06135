"""Readers of embeddings computed elsewhere; each yields :class:`ImportedSource` per source.

Formats (chosen by suffix):

- ``.h5`` / ``.hdf5``: TRIDENT / CLAM patch features, one file per slide. ``features`` (n, d)
  and ``coords`` (n, 2) int level-0 pixels of each patch's top-left corner. TRIDENT puts the
  patching parameters on ``coords``' attributes (``patch_size`` at the target magnification,
  ``patch_size_level0``, ``level0_magnification``, ``target_magnification``, ``overlap``,
  ``name``); ``features`` carries ``name`` (the slide file's name without its extension). CLAM
  feature files have no attributes; CLAM patch files have ``patch_size`` and ``patch_level``.
- ``.parquet``: one row per vector: a source column (``source``), a vector column (a list of
  numbers: ``vector``, ``embedding``, ``features`` or ``--vector-column``), optional ``x``/``y``
  (level-0 pixels) and ``size_px``, optional ``id``; every other column is tile metadata.
- ``.npz``: the same as arrays: ``vectors`` (or ``features``/``embeddings``) (n, d), ``source``
  (n,) strings, optional ``x``, ``y`` or ``coords`` (n, 2), ``id``; other (n,) arrays are metadata.
- ``.json``: what Google's Path/Derm Foundation serving APIs return for a batch: ``predictions``
  (a list, one per request instance) of ``{"result": {"patch_embeddings": [{"patch_coordinate":
  {"x_origin", "y_origin", "width"?, "height"?}, "embedding_vector": [...]}]}}`` or of
  ``{"embedding_vector" | "embedding": [...]}`` (one vector per image) or ``{"error": {...}}``.
  When the request's ``instances`` are saved beside them, each source is named by its
  ``image_file_uri`` (or ``dicom_path.series_path``), else ``<file stem>/<index>``.

Readers only parse; checks of dimension, NaN/inf, zero vectors and duplicates (naming file and
row) happen in :mod:`indexer.importer`, identically for every format.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lamina.indexer.errors import ImportFormatError

SUFFIXES = {".h5": "h5", ".hdf5": "h5", ".parquet": "table", ".npz": "table", ".json": "json"}
VECTOR_COLUMNS = ("vector", "embedding", "features", "embeddings", "vectors")
DEFAULT_PATCH_PX = 224
"""Patch side the Google Path Foundation API uses when a patch_coordinate gives no width."""


@dataclass
class ImportedSource:
    """The vectors of one source (slide, image or table group) as read from one file."""

    name: str
    file: Path
    vectors: np.ndarray
    rows: np.ndarray
    """Row (or patch, or prediction) number in ``file`` of each vector, for messages."""
    identity: str
    """Hash of what was read (file content and source name): re-imports are recognised by it."""
    xy: np.ndarray | None = None
    size_l0: np.ndarray | None = None
    """Side of each patch in level-0 pixels, when known."""
    patch_px: int | None = None
    """Patch side at the extraction magnification (the pixels the encoder saw)."""
    patch_level: int | None = None
    """CLAM: the pyramid level the patches were read at (size known once the slide is open)."""
    target_mpp: float | None = None
    ids: np.ndarray | None = None
    tile_meta: dict[str, list[Any]] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _identity(digest: str, name: str) -> str:
    return hashlib.sha256(f"{digest}\0{name}".encode()).hexdigest()


def read_file(
    path: Path, source_column: str = "source", vector_column: str | None = None
) -> Iterator[ImportedSource]:
    """Every source in ``path``, in file order."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ImportFormatError(
            f"{path}: unknown embeddings format {path.suffix!r} (known: "
            f"{', '.join(sorted(SUFFIXES))})"
        )
    if kind == "h5":
        yield read_h5(path)
    elif kind == "json":
        yield from read_google_json(path)
    elif path.suffix.lower() == ".npz":
        yield from _group(path, *_npz_columns(path, source_column, vector_column))
    else:
        yield from _group(path, *_parquet_columns(path, source_column, vector_column))


# -- TRIDENT / CLAM ----------------------------------------------------------------------------
def _attr(attrs: Any, key: str) -> Any:
    v = attrs.get(key)
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.generic):
        v = v.item()
    return None if v in (None, "None") else v


def read_h5(path: Path) -> ImportedSource:
    """One TRIDENT / CLAM patch-feature file (one slide)."""
    try:
        import h5py
    except ImportError:
        raise ImportFormatError(
            f"{path}: reading .h5 files needs h5py: pip install 'lamina[import]'"
        ) from None
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f or "coords" not in f:
                raise ImportFormatError(
                    f"{path}: not a patch-feature file: needs datasets 'features' and 'coords' "
                    f"(has {', '.join(sorted(f.keys())) or 'none'})"
                )
            feats = np.asarray(f["features"][()])
            coords = np.asarray(f["coords"][()])
            cattrs = dict(f["coords"].attrs)
            fattrs = dict(f["features"].attrs)
    except OSError as exc:
        raise ImportFormatError(f"{path}: cannot read as HDF5 ({exc})") from None
    if feats.ndim == 3 and feats.shape[0] == 1:  # some writers keep a batch axis
        feats = feats[0]
    if feats.ndim != 2:
        raise ImportFormatError(f"{path}: 'features' has shape {feats.shape}; expected (n, d)")
    if coords.ndim != 2 or coords.shape != (len(feats), 2):
        raise ImportFormatError(
            f"{path}: 'coords' has shape {coords.shape}; expected ({len(feats)}, 2) to match "
            "'features'"
        )
    name = str(_attr(fattrs, "name") or _attr(cattrs, "name") or path.stem)
    patch_px = _attr(cattrs, "patch_size")
    size_l0 = _attr(cattrs, "patch_size_level0")
    target_mag = _attr(cattrs, "target_magnification")
    props = {
        k: _attr(cattrs, k)
        for k in ("patch_size", "patch_size_level0", "level0_magnification",
                  "target_magnification", "overlap", "patch_level")
        if _attr(cattrs, k) is not None
    }  # fmt: skip
    props["imported_from"] = str(path.resolve())
    n = len(feats)
    return ImportedSource(
        name=name,
        file=path,
        vectors=feats,
        rows=np.arange(n),
        identity=_identity(file_digest(path), name),
        xy=coords.astype(np.int64),
        size_l0=None if size_l0 is None else np.full(n, int(size_l0), np.int64),
        patch_px=None if patch_px is None else int(patch_px),
        patch_level=_attr(cattrs, "patch_level") if size_l0 is None else None,
        target_mpp=10.0 / float(target_mag) if target_mag else None,
        properties=props,
    )


# -- tables -----------------------------------------------------------------------------------
Columns = tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, list[Any]], str]


def _parquet_columns(path: Path, source_column: str, vector_column: str | None) -> Columns:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, memory_map=True)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ImportFormatError(f"{path}: cannot read as Parquet ({exc})") from None
    names = table.column_names
    vcol = _pick(path, names, vector_column, VECTOR_COLUMNS, "vector")
    if source_column not in names:
        raise ImportFormatError(
            f"{path}: no source column {source_column!r} (columns: {', '.join(names)}); "
            "pass --source-column"
        )
    col = table.column(vcol).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        dim = col.type.list_size
        flat = col.flatten()
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if len(lengths) and (np.any(lengths != lengths[0]) or col.null_count):
            bad = int(np.flatnonzero((lengths != lengths[0]) | np.isnan(lengths.astype(float)))[0])
            raise ImportFormatError(
                f"{path}: row {bad}: vector has {lengths[bad]} values, row 0 has {lengths[0]}"
            )
        dim = int(lengths[0]) if len(lengths) else 0
        flat = col.flatten()
    else:
        raise ImportFormatError(f"{path}: column {vcol!r} is {col.type}, not a list of numbers")
    if flat.null_count:
        raise ImportFormatError(f"{path}: column {vcol!r} holds missing values")
    vectors = flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    vectors = vectors.reshape(len(col), dim)
    sources = table.column(source_column).to_numpy(zero_copy_only=False)
    special = {}
    for c in ("x", "y", "size_px", "id"):
        if c in names:
            special[c] = table.column(c).to_numpy(zero_copy_only=False)
    meta = {
        c: table.column(c).to_pylist()
        for c in names
        if c not in (vcol, source_column, "x", "y", "size_px", "id")
    }
    return vectors, sources, special, meta, file_digest(path)


def _pick(
    path: Path, names: list[str], given: str | None, options: tuple[str, ...], what: str
) -> str:
    if given:
        if given not in names:
            raise ImportFormatError(f"{path}: no {what} column {given!r} (has {', '.join(names)})")
        return given
    for c in options:
        if c in names:
            return c
    raise ImportFormatError(
        f"{path}: no {what} column (looked for {', '.join(options)}; has {', '.join(names)}); "
        f"pass --{what}-column"
    )


def _npz_columns(path: Path, source_column: str, vector_column: str | None) -> Columns:
    try:
        npz = np.load(path, allow_pickle=False)
        arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise ImportFormatError(f"{path}: cannot read as .npz ({exc})") from None
    vkey = _pick(path, list(arrays), vector_column, VECTOR_COLUMNS, "vector")
    vectors = arrays.pop(vkey)
    if vectors.ndim != 2:
        raise ImportFormatError(f"{path}: {vkey!r} has shape {vectors.shape}; expected (n, d)")
    skey = (
        source_column if source_column in arrays else ("sources" if "sources" in arrays else None)
    )
    if skey is None:
        raise ImportFormatError(
            f"{path}: no {source_column!r} array (has {', '.join(sorted(arrays))})"
        )
    sources = arrays.pop(skey).astype(str)
    special: dict[str, np.ndarray] = {}
    if "coords" in arrays:
        coords = arrays.pop("coords")
        special["x"], special["y"] = coords[:, 0], coords[:, 1]
    for c in ("x", "y", "size_px", "id"):
        if c in arrays:
            special[c] = arrays.pop(c)
    n = len(vectors)
    for k, a in [*special.items(), ("source", sources)]:
        if len(a) != n:
            raise ImportFormatError(f"{path}: {k!r} has {len(a)} entries, {vkey!r} has {n}")
    meta = {k: a.tolist() for k, a in arrays.items() if a.ndim == 1 and len(a) == n}
    return vectors, sources, special, meta, file_digest(path)


def _group(
    path: Path,
    vectors: np.ndarray,
    sources: np.ndarray,
    special: dict[str, np.ndarray],
    meta: dict[str, list[Any]],
    digest: str,
) -> Iterator[ImportedSource]:
    """Rows grouped by source (first-appearance order), each group in file order."""
    missing = [i for i, s in enumerate(sources[:1_000_000]) if s is None or s == ""]
    if missing:
        raise ImportFormatError(f"{path}: row {missing[0]}: empty source")
    names, first, inverse = np.unique(sources.astype(str), return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(names) + 1))
    for g in np.argsort(first, kind="stable"):
        rows = order[bounds[g] : bounds[g + 1]]
        xy = None
        if "x" in special and "y" in special:
            xy = np.stack([special["x"][rows], special["y"][rows]], axis=1).astype(np.int64)
        yield ImportedSource(
            name=str(names[g]),
            file=path,
            vectors=vectors[rows],
            rows=rows,
            identity=_identity(digest, str(names[g])),
            xy=xy,
            size_l0=special["size_px"][rows].astype(np.int64) if "size_px" in special else None,
            ids=special["id"][rows] if "id" in special else None,
            tile_meta={k: [v[i] for i in rows] for k, v in meta.items()},
        )


# -- Google embedding APIs --------------------------------------------------------------------
def _instance_name(inst: Any) -> str | None:
    if not isinstance(inst, dict):
        return None
    if isinstance(inst.get("image_file_uri"), str):
        return str(inst["image_file_uri"])
    dicom = inst.get("dicom_path")
    if isinstance(dicom, dict) and isinstance(dicom.get("series_path"), str):
        uids = dicom.get("instance_uids") or []
        return str(dicom["series_path"]) + (f"/instances/{uids[0]}" if uids else "")
    return None


def read_google_json(path: Path) -> Iterator[ImportedSource]:
    try:
        raw = path.read_bytes()
        doc = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise ImportFormatError(f"{path}: cannot read as JSON ({exc})") from None
    preds = doc.get("predictions") if isinstance(doc, dict) else None
    if not isinstance(preds, list):
        raise ImportFormatError(f"{path}: no 'predictions' list (a Google embedding API response)")
    instances = doc.get("instances") if isinstance(doc.get("instances"), list) else None
    digest = hashlib.sha256(raw).hexdigest()
    for i, pred in enumerate(preds):
        where = f"{path}: prediction {i}"
        if not isinstance(pred, dict):
            raise ImportFormatError(f"{where}: not an object")
        if "error" in pred:
            err = pred["error"] if isinstance(pred["error"], dict) else {}
            raise ImportFormatError(
                f"{where}: the API answered an error ({err.get('code', '?')}: "
                f"{err.get('description', '')})"
            )
        name = (_instance_name(instances[i]) if instances and i < len(instances) else None) or (
            f"{path.stem}/{i}"
        )
        result = pred.get("result")
        if isinstance(result, dict) and isinstance(result.get("patch_embeddings"), list):
            vecs, xy, size = [], [], []
            for j, pe in enumerate(result["patch_embeddings"]):
                coord = pe.get("patch_coordinate") if isinstance(pe, dict) else None
                vec = pe.get("embedding_vector") if isinstance(pe, dict) else None
                if not isinstance(coord, dict) or not isinstance(vec, list):
                    raise ImportFormatError(
                        f"{where}: patch {j} lacks patch_coordinate or embedding_vector"
                    )
                vecs.append(vec)
                xy.append((int(coord.get("x_origin", 0)), int(coord.get("y_origin", 0))))
                size.append(int(coord.get("width") or DEFAULT_PATCH_PX))
            vectors = _as_matrix(vecs, where)
            yield ImportedSource(
                name=name, file=path, vectors=vectors, rows=np.full(len(vecs), i),
                identity=_identity(digest, f"{i}:{name}"), xy=np.asarray(xy, np.int64),
                size_l0=np.asarray(size, np.int64), patch_px=size[0] if size else None,
                properties={"model_version": pred.get("model_version")},
            )  # fmt: skip
            continue
        vec = pred.get("embedding_vector", pred.get("embedding"))
        if not isinstance(vec, list):
            raise ImportFormatError(
                f"{where}: no result.patch_embeddings, embedding_vector or embedding"
            )
        yield ImportedSource(
            name=name, file=path, vectors=_as_matrix([vec], where), rows=np.asarray([i]),
            identity=_identity(digest, f"{i}:{name}"),
            properties={"model_version": pred.get("model_version")},
        )  # fmt: skip


def _as_matrix(vecs: list[Any], where: str) -> np.ndarray:
    try:
        return np.asarray(vecs, dtype=np.float32).reshape(len(vecs), -1)
    except (TypeError, ValueError):
        lengths = sorted({len(v) if isinstance(v, list) else -1 for v in vecs})
        raise ImportFormatError(
            f"{where}: embedding vectors are not lists of numbers of one length ({lengths})"
        ) from None
