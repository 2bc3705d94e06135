"""Labeled embedding sets for linear probes, split without group (patient) leakage.

One row per tile, ordered by tile id: ``tile_id, source, source_id, patient, label, split,
group, x, y, level, size_px, mpp, embedding``; rows whose label is null are dropped (and
counted). The coordinate columns say where each tile lies (level-0 pixels, the level read, the
pixels read there, µm/px; photos and nulls: see search/export_coords.py). ``label`` is the
label column's value as text; ``patient`` the patient column's value as text (or null);
``group`` the unit of splitting: the split column's value as text, or ``tile:<id>`` when the
split is by image (or the tile's value is null, which makes the tile its own group). The split
column (:func:`search.columns.split_column`): ``split_by`` when given (a column, or a role such
as ``patient``); without it the collection's patient column when it has one; ``image`` (or no
patient column) splits by image, and ``meta["warnings"]`` then says why scores may be inflated.

Split (:func:`assign_split`), deterministic in ``seed``: every group gets a majority label
(ties: the smallest label). For each label in sorted order, that label's groups (sorted) are
shuffled with one ``numpy.random.default_rng(seed)`` and moved to test one by one while the
test tiles of that label are fewer than ``test_fraction`` of its tiles, always leaving at
least one group of the label in train. A label with a single group sends it to test with
probability ``test_fraction`` (one draw of the same generator). A group is therefore
entirely in train or entirely in test, and labels are stratified at the group level.

Neighbours (``neighbors=K``): for each row, its K nearest labeled tiles of the collection
(inner product, itself excluded, ties by tile id) as three list columns ``nn_tile_id``,
``nn_score``, ``nn_label``. They come from batched planner searches (``K + 1`` per row, filter
``label IS NOT NULL``): exact on a collection without an ANN index or with
``params={"strategy": "exact"}``, otherwise the planner's plan (scores still exact); the
strategy used is recorded as ``neighbors_strategy``.

Rows are built column-wise from the segments' Arrow tables (text as DuckDB's
``CAST(... AS VARCHAR)`` writes it), never row by row.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lamina.search.columns import patient_column, split_column
from lamina.search.errors import InvalidQueryError
from lamina.search.export_coords import coordinate_arrays, coordinates_of, tile_coordinates
from lamina.search.filters import Condition
from lamina.search.views import CollectionView

FORMATS = ("parquet", "csv", "npz")
EXPORT_FORMAT = "lamina-export/1"
TEXT_COLUMNS = ("source", "source_id", "patient", "label", "split", "group")


def lamina_version() -> str:
    try:
        return importlib.metadata.version("lamina")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _text_array(values: Sequence[Any] | pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values.cast(pa.string()) if values.type != pa.string() else values
    return pa.array([str(v) for v in values], pa.string())


def _encode(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(code per row, rank of each code's text in sorted order: UTF-8 byte order, which is
    Python's code-point order)."""
    enc = pc.dictionary_encode(values)
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    rank = np.empty(len(enc.dictionary), np.int64)
    rank[pc.sort_indices(enc.dictionary).to_numpy()] = np.arange(len(enc.dictionary))
    return codes, rank


def check_columns(view: CollectionView, label_column: str, split_by: str | None) -> None:
    """InvalidQueryError unless the label column exists and ``split_by`` names a split
    (:func:`search.columns.split_column`: a column, a role, ``image`` or None)."""
    if label_column not in view.schema:
        known = ", ".join(view.metadata_columns)
        raise InvalidQueryError(f"unknown label column {label_column!r}; metadata columns: {known}")
    split_column(view, split_by)


def assign_split(
    groups: Sequence[Any] | pa.Array,
    labels: Sequence[Any] | pa.Array,
    test_fraction: float,
    seed: int,
) -> np.ndarray:
    """Boolean ``is_test`` per row; whole groups go to one side (see the module docstring).

    Columnar: groups and labels are dictionary-encoded and ranked by their text, so the
    result is the one of the row-by-row definition (groups and labels in sorted text order,
    one generator) at the cost of a few sorts."""
    if not 0.0 <= float(test_fraction) < 1.0:
        raise InvalidQueryError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not hasattr(seed, "__index__") or not 0 <= int(seed) < 2**32:
        raise InvalidQueryError(f"seed must be an integer in [0, 2**32 - 1], got {seed!r}")
    gi, g_rank = _encode(_text_array(groups))
    li, l_rank = _encode(_text_array(labels))
    if len(gi) != len(li):
        raise ValueError("groups and labels differ in length")
    if len(gi) == 0:
        return np.zeros(0, bool)
    ng, nl = len(g_rank), len(l_rank)
    key, counts = np.unique(gi * nl + li, return_counts=True)
    kg, kl = key // nl, key % nl
    # majority label of each group: most tiles, ties to the smallest label
    order = np.lexsort((l_rank[kl], -counts, kg))
    first = order[np.concatenate([[True], kg[order][1:] != kg[order][:-1]])]
    major = np.empty(ng, np.int64)
    major[kg[first]] = kl[first]
    size = np.bincount(gi, minlength=ng)
    by_label = np.lexsort((g_rank, l_rank[major]))  # strata in label order, groups sorted
    cuts = np.flatnonzero(np.diff(major[by_label])) + 1
    rng = np.random.default_rng(seed)
    test = np.zeros(ng, bool)
    for members in np.split(by_label, cuts):
        if len(members) == 1:
            if rng.random() < test_fraction:
                test[members[0]] = True
            continue
        target = test_fraction * int(size[members].sum())
        perm = rng.permutation(len(members))
        before = np.concatenate([[0], np.cumsum(size[members][perm])[:-1]])
        taken = min(len(members) - 1, int(np.searchsorted(before, target, side="left")))
        test[members[perm[:taken]]] = True
    return test[gi]


@dataclass
class LabeledSet:
    """The rows of an export, as arrays, plus what the file records about itself."""

    tile_id: np.ndarray  # int64 (n,)
    text: dict[str, list[str | None]]  # TEXT_COLUMNS -> values
    embedding: np.ndarray  # float32 (n, dim)
    meta: dict[str, Any]
    nn_tile_id: list[list[int]] | None = None
    nn_score: list[list[float]] | None = None
    nn_label: list[list[str]] = field(default_factory=list)
    coords: dict[str, np.ndarray] = field(default_factory=dict)
    """x, y, level, size_px (int64) and mpp (float64, NaN: null) per row."""

    @property
    def n(self) -> int:
        return len(self.tile_id)

    def to_table(self) -> pa.Table:
        cols: dict[str, pa.Array] = {"tile_id": pa.array(self.tile_id, pa.int64())}
        for c in TEXT_COLUMNS:
            cols[c] = pa.array(self.text[c], pa.string())
        cols.update(coordinate_arrays(self.coords))
        dim = self.embedding.shape[1]
        flat = pa.array(self.embedding.reshape(-1), pa.float32())
        cols["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dim)
        if self.nn_tile_id is not None:
            cols["nn_tile_id"] = pa.array(self.nn_tile_id, pa.list_(pa.int64()))
            cols["nn_score"] = pa.array(self.nn_score, pa.list_(pa.float32()))
            cols["nn_label"] = pa.array(self.nn_label, pa.list_(pa.string()))
        table = pa.table(cols)
        return table.replace_schema_metadata({"lamina": json.dumps(self.meta, sort_keys=True)})


def _present_positions(view: CollectionView, tile_ids: Sequence[int]) -> np.ndarray:
    """Positions of the given tile ids that exist in the view (others are ignored), ascending."""
    ids = np.unique(np.asarray(tile_ids, dtype=np.int64).reshape(-1))
    out = []
    for i, r in enumerate(view.readers):
        rows = r.rows_of(ids)
        out.append(rows[rows >= 0] + view.offsets[i])
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


_ARROW_OF_SQL = {"BIGINT": pa.int64(), "DOUBLE": pa.float64(), "VARCHAR": pa.string()}


def _as_text(arr: pa.Array) -> pa.Array:
    """Values as text, the way DuckDB's ``CAST(x AS VARCHAR)`` writes them."""
    t = arr.type
    if pa.types.is_dictionary(t):
        arr, t = arr.cast(t.value_type), t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr.cast(pa.string())
    if pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_null(t):
        return arr.cast(pa.string())
    if pa.types.is_floating(t):
        text = arr.cast(pa.string())  # Arrow writes 2.0 as "2"; DuckDB as "2.0"
        integral = pc.match_substring_regex(text, r"^-?[0-9]+$").fill_null(False)
        return pc.if_else(integral, pc.binary_join_element_wise(text, ".0", ""), text)
    import duckdb  # dates, timestamps, decimals...: let DuckDB format them

    con = duckdb.connect(":memory:")
    con.register("v", pa.table({"v": arr}))
    out = con.sql("SELECT CAST(v AS VARCHAR) AS v FROM v").to_arrow_table().column("v")
    return out.combine_chunks().cast(pa.string())


def column_text(view: CollectionView, column: str | None, positions: np.ndarray) -> pa.Array:
    """``CAST(column AS VARCHAR)`` at the given ascending positions, as one Arrow array
    (all null when ``column`` is None or absent from a segment). Typed like the view's schema."""
    pos = np.asarray(positions, dtype=np.int64)
    bounds = np.searchsorted(pos, view.offsets)
    parts = []
    for i, r in enumerate(view.readers):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        if lo == hi:
            continue
        if column is None or column not in r.table.column_names:
            parts.append(pa.nulls(hi - lo, pa.string()))
            continue
        arr = r.table.column(column)
        if hi - lo < r.n:
            arr = arr.take(pa.array(pos[lo:hi] - view.offsets[i]))
        arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
        want = view.schema[column]
        if r.schema[column] != want:  # typed differently in other segments: the common type
            if pa.types.is_dictionary(arr.type):
                arr = arr.cast(arr.type.value_type)
            arr = arr.cast(_ARROW_OF_SQL.get(want, pa.string()))
        parts.append(_as_text(arr))
    if not parts:
        return pa.array([], pa.string())
    return pa.concat_arrays(parts)


def build_labeled_set(
    view: CollectionView,
    label_column: str,
    *,
    tile_ids: Sequence[int] | None = None,
    split_by: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    neighbors: int | None = None,
    cohort: dict[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    source_name: Callable[[str], str | None] | None = None,
) -> LabeledSet:
    """Rows of the collection (or of ``tile_ids``) with a non-null label, split train/test.

    Columnar: the columns are taken per segment from the readers' Arrow tables at the rows'
    positions, the rows ordered by tile id with one argsort, the vectors gathered per segment.
    ``params`` are the search parameters of the neighbour search (see the module docstring).
    ``source_name`` maps each stored source path to what the file shows (a server's policy)."""
    check_columns(view, label_column, split_by)
    split_col, warnings = split_column(view, split_by)
    if neighbors is not None and not 1 <= int(neighbors) <= 1000:
        raise InvalidQueryError(f"neighbors must be between 1 and 1000, got {neighbors!r}")
    pcol = patient_column(view)
    pos = view.live_positions() if tile_ids is None else _present_positions(view, tile_ids)
    if tile_ids is not None:
        absent = len(np.unique(np.asarray(tile_ids, dtype=np.int64))) - len(pos)
        if absent:
            warnings = [
                *warnings,
                f"{absent} of the cohort's members were deleted from the collection since "
                "it was made and are left out",
            ]
    n_all = len(pos)
    label = column_text(view, label_column, pos)
    keep = label.is_valid().to_numpy(zero_copy_only=False)
    if not keep.all():
        pos = pos[keep]
        label = label.filter(pa.array(keep))
    ids_unsorted = view.tile_ids_at(pos)
    order = np.argsort(ids_unsorted, kind="stable")
    by_id = pa.array(order)
    ids = ids_unsorted[order]
    pos_by_id = pos[order]
    label = label.take(by_id)
    grp = column_text(view, split_col, pos).take(by_id)
    tile_names = pc.binary_join_element_wise("tile:", pa.array(ids).cast(pa.string()), "")
    groups = pc.if_else(grp.is_valid(), grp, tile_names) if len(ids) else grp
    is_test = assign_split(groups, label, test_fraction, seed)
    sources = column_text(view, "source", pos).take(by_id).to_pylist()
    if source_name is not None:
        shown = {src: source_name(src) for src in set(sources) if src is not None}
        sources = [None if src is None else shown[src] for src in sources]
    text: dict[str, list[str | None]] = {
        "source": sources,
        "source_id": column_text(view, "source_id", pos).take(by_id).to_pylist(),
        "patient": column_text(view, pcol, pos).take(by_id).to_pylist(),
        "label": label.to_pylist(),
        "split": pc.if_else(pa.array(is_test), "test", "train").to_pylist(),
        "group": groups.to_pylist(),
    }
    emb = view.vectors[pos_by_id] if len(ids) else np.zeros((0, view.dim), np.float32)
    meta = {
        "format": EXPORT_FORMAT,
        "lamina_version": lamina_version(),
        "collection": view.collection.name,
        "snapshot": view.snapshot.id,
        "missing_segments": view.missing_segments,  # damaged segments left out (see verify)
        "encoder": view.collection.fingerprint,
        "encoder_key": view.collection.encoder_key,
        "label_column": label_column,
        "split_by": split_col,
        "patient_column": pcol,
        "warnings": warnings,
        "test_fraction": float(test_fraction),
        "seed": int(seed),
        "neighbors": neighbors,
        "cohort": None if cohort is None else cohort["name"],
        "cohort_version": None if cohort is None else cohort["version"],
        "n_rows": int(len(ids)),
        "n_dropped_null_label": n_all - len(ids),
        "n_train": int((~is_test).sum()),
        "n_test": int(is_test.sum()),
        "embedding_dim": int(view.dim),
    }
    coords = tile_coordinates(view, pos_by_id)
    out = LabeledSet(tile_id=ids, text=text, embedding=emb, meta=meta, coords=coords)
    if neighbors is not None:
        strategy = _add_neighbors(view, out, label_column, int(neighbors), params)
        meta["neighbors_strategy"] = strategy
    return out


NEIGHBOR_BATCH = 128


def _add_neighbors(
    view: CollectionView,
    ls: LabeledSet,
    label_column: str,
    k: int,
    params: Mapping[str, Any] | None,
) -> str:
    """K nearest labeled tiles of each row by batched planner searches (k + 1, itself
    dropped); returns the strategy used ("exact", "ann" or "exact+ann")."""
    from lamina.search import planner

    conds = [Condition(label_column, "ne", (None,))]
    nn_ids: list[list[int]] = []
    nn_scores: list[list[float]] = []
    nn_labels: list[list[str]] = []
    strategies: set[str] = set()
    for start in range(0, ls.n, NEIGHBOR_BATCH):
        q = np.ascontiguousarray(ls.embedding[start : start + NEIGHBOR_BATCH], np.float32)
        ranked, plan = planner.search(view, q, k + 1, conds, params)
        strategies.add(plan.strategy)
        all_pos = np.concatenate([r.positions for r in ranked])
        uniq, inv = np.unique(all_pos, return_inverse=True)
        uniq_ids = view.tile_ids_at(uniq)
        uniq_labels = column_text(view, label_column, uniq).to_pylist()
        at = 0
        for i, r in enumerate(ranked):
            self_id = int(ls.tile_id[start + i])
            idx = inv[at : at + len(r.positions)]
            at += len(r.positions)
            keep = [j for j, u in enumerate(idx) if uniq_ids[u] != self_id][:k]
            nn_ids.append([int(uniq_ids[idx[j]]) for j in keep])
            nn_scores.append([float(r.scores[j]) for j in keep])
            nn_labels.append([str(uniq_labels[idx[j]]) for j in keep])
    ls.nn_tile_id, ls.nn_score, ls.nn_label = nn_ids, nn_scores, nn_labels
    return "+".join(sorted(strategies)) or "exact"


# -- files --------------------------------------------------------------------------------------
def format_of(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise InvalidQueryError(f"--out must end in .parquet, .csv or .npz, got {str(path)!r}")
    return suffix


def csv_sidecar(path: str | os.PathLike[str]) -> Path:
    return Path(str(path) + ".meta.json")


def write_labeled_set(ls: LabeledSet, path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """Write atomically (temporary file + rename); returns the sha256 of the data file."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    fmt = fmt or format_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one temporary name per writer (two exports to one path never share it)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(3).hex()}.tmp")
    try:
        if fmt == "parquet":
            pq.write_table(ls.to_table(), tmp, compression="zstd")
        elif fmt == "csv":
            pacsv.write_csv(_csv_table(ls), tmp)
            sidecar = csv_sidecar(path)
            sidecar.write_text(json.dumps(ls.meta, indent=2, sort_keys=True) + "\n")
        elif fmt == "npz":
            with open(tmp, "wb") as fh:
                np.savez(fh, **_npz_arrays(ls))  # type: ignore[arg-type]
        else:
            raise InvalidQueryError(f"format must be one of {FORMATS}, got {fmt!r}")
        os.replace(tmp, path)
    except BaseException:  # a full disk leaves no partial export behind
        tmp.unlink(missing_ok=True)
        raise
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _csv_table(ls: LabeledSet) -> pa.Table:
    cols: dict[str, Any] = {"tile_id": pa.array(ls.tile_id, pa.int64())}
    for c in TEXT_COLUMNS:
        cols[c] = pa.array(ls.text[c], pa.string())
    cols.update(coordinate_arrays(ls.coords))
    if ls.nn_tile_id is not None:
        cols["nn_tile_id"] = [json.dumps(v) for v in ls.nn_tile_id]
        cols["nn_score"] = [
            json.dumps([float(np.float32(s)) for s in v]) for v in ls.nn_score or []
        ]
        cols["nn_label"] = [json.dumps(v) for v in ls.nn_label]
    for j in range(ls.embedding.shape[1]):
        cols[f"e{j}"] = pa.array(ls.embedding[:, j], pa.float32())
    return pa.table(cols)


def _npz_arrays(ls: LabeledSet) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"tile_id": ls.tile_id, "embedding": ls.embedding}
    for c in TEXT_COLUMNS:
        arrays[c] = np.asarray(["" if v is None else v for v in ls.text[c]], dtype=str)
    arrays.update({c: np.asarray(v) for c, v in ls.coords.items()})
    if ls.nn_tile_id is not None:
        k = max((len(v) for v in ls.nn_tile_id), default=0)
        arrays["nn_tile_id"] = np.full((ls.n, k), -1, np.int64)
        arrays["nn_score"] = np.full((ls.n, k), np.nan, np.float32)
        arrays["nn_label"] = np.full((ls.n, k), "", dtype=object)
        for i in range(ls.n):
            m = len(ls.nn_tile_id[i])
            arrays["nn_tile_id"][i, :m] = ls.nn_tile_id[i]
            arrays["nn_score"][i, :m] = (ls.nn_score or [])[i]
            arrays["nn_label"][i, :m] = ls.nn_label[i]
        arrays["nn_label"] = arrays["nn_label"].astype(str)
    for key, value in ls.meta.items():
        arrays[f"meta_{key}"] = np.asarray("" if value is None else str(value))
    arrays["meta_json"] = np.asarray(json.dumps(ls.meta, sort_keys=True))
    return arrays


def read_labeled_set(path: str | os.PathLike[str]) -> LabeledSet:
    """Read an export file back (the columns the probe needs, plus the metadata)."""
    fmt = format_of(path)
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as z:
            text = {c: [v or None for v in z[c].tolist()] for c in TEXT_COLUMNS}
            return LabeledSet(
                tile_id=z["tile_id"],
                text=text,
                embedding=z["embedding"],
                meta=json.loads(str(z["meta_json"])),
                coords=coordinates_of({k: z[k] for k in z.files}),
            )
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {})[b"lamina"])
        emb_col = table.column("embedding").combine_chunks()
        emb = emb_col.flatten().to_numpy().reshape(len(table), -1)
    else:
        import pyarrow.csv as pacsv

        types = {c: pa.string() for c in TEXT_COLUMNS}
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
        meta = json.loads(csv_sidecar(path).read_text())
        dims = [c for c in table.column_names if c.startswith("e") and c[1:].isdigit()]
        emb = np.stack([table.column(c).to_numpy() for c in dims], axis=1)
    text = {c: table.column(c).to_pylist() for c in TEXT_COLUMNS}
    return LabeledSet(
        tile_id=table.column("tile_id").to_numpy().astype(np.int64),
        text=text,
        embedding=np.asarray(emb, np.float32),
        meta=meta,
        coords=coordinates_of({c: table.column(c) for c in table.column_names}),
    )


def labeled_set_for(
    view: CollectionView,
    catalog: Any,
    label_column: str,
    *,
    cohort: str | None = None,
    split_by: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    neighbors: int | None = None,
    source_name: Callable[[str], str | None] | None = None,
) -> LabeledSet:
    """The labeled set of a collection, or of a cohort's members: what exports and probes use."""
    from lamina.search.cohorts import cohort_tile_ids

    tile_ids, record = (None, None)
    if cohort is not None:
        tile_ids, record = cohort_tile_ids(
            catalog, cohort, view.collection.name, view.collection.uuid
        )
    return build_labeled_set(
        view,
        label_column,
        tile_ids=tile_ids,
        split_by=split_by,
        test_fraction=test_fraction,
        seed=seed,
        neighbors=neighbors,
        cohort=record,
        source_name=source_name,
    )


def export_labeled_set(
    view: CollectionView,
    catalog: Any,
    out: str | os.PathLike[str],
    *,
    label_column: str,
    cohort: str | None = None,
    split_by: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    neighbors: int | None = None,
    fmt: str | None = None,
    record_path: bool = True,
    source_name: Callable[[str], str | None] | None = None,
) -> dict[str, Any]:
    """Build, write and record (in the catalog, when given) one export; returns its record.

    ``record_path=False`` leaves the file's path out of the record (a temporary file that
    the server sends back over HTTP).
    """
    import secrets

    from lamina.search.catalog import now_utc

    fmt = fmt or format_of(out)
    ls = labeled_set_for(
        view,
        catalog,
        label_column,
        cohort=cohort,
        split_by=split_by,
        test_fraction=test_fraction,
        seed=seed,
        neighbors=neighbors,
        source_name=source_name,
    )
    digest = write_labeled_set(ls, out, fmt)
    args = {
        "label_column": label_column,
        "cohort": cohort,
        "split_by": split_by,
        "test_fraction": float(test_fraction),
        "seed": int(seed),
        "neighbors": neighbors,
        "format": fmt,
    }
    entry = {
        "id": secrets.token_hex(8),
        "collection": view.collection.name,
        "cohort": cohort,
        "cohort_version": ls.meta.get("cohort_version"),
        "args": args,
        "snapshot": ls.meta["snapshot"],
        "encoder": ls.meta["encoder"],
        "rows": ls.n,
        "sha256": digest,
        "path": str(Path(out).resolve()) if record_path else None,
        "created_at": now_utc(),
    }
    if catalog is not None:
        catalog.record_export(entry)
    return {"ok": True, "export": entry, "meta": ls.meta}
