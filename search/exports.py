"""Labeled embedding sets for linear probes, split without group (patient) leakage.

One row per tile, ordered by tile id: ``tile_id, source, source_id, patient, label, split,
group, embedding``; rows whose label is null are dropped (and counted). ``label`` is the
label column's value as text; ``patient`` the patient column's value as text (or null);
``group`` the unit of splitting: the ``--split-by`` value as text, or ``tile:<id>`` when
there is no ``--split-by`` (or the tile's value is null, which makes the tile its own group).

Split (:func:`assign_split`), deterministic in ``seed``: every group gets a majority label
(ties: the smallest label). For each label in sorted order, that label's groups (sorted) are
shuffled with one ``numpy.random.default_rng(seed)`` and moved to test one by one while the
test tiles of that label are fewer than ``test_fraction`` of its tiles, always leaving at
least one group of the label in train. A label with a single group sends it to test with
probability ``test_fraction`` (one draw of the same generator). A group is therefore
entirely in train or entirely in test, and labels are stratified at the group level.

Neighbours (``neighbors=K``): for each row, its K nearest labeled tiles of the collection
(exact inner product, itself excluded, ties by tile id) as three list columns
``nn_tile_id``, ``nn_score``, ``nn_label``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from search.cohorts import best_scores, patient_column
from search.errors import InvalidQueryError
from search.filters import quote_ident
from search.views import CollectionView

FORMATS = ("parquet", "csv", "npz")
EXPORT_FORMAT = "lamina-export/1"
TEXT_COLUMNS = ("source", "source_id", "patient", "label", "split", "group")


def lamina_version() -> str:
    try:
        return importlib.metadata.version("lamina")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def assign_split(
    groups: Sequence[str], labels: Sequence[str], test_fraction: float, seed: int
) -> np.ndarray:
    """Boolean ``is_test`` per row; whole groups go to one side (see the module docstring)."""
    if not 0.0 <= float(test_fraction) < 1.0:
        raise InvalidQueryError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    groups_arr = np.asarray([str(g) for g in groups], dtype=object)
    labels_arr = np.asarray([str(lab) for lab in labels], dtype=object)
    per_group: dict[str, dict[str, int]] = {}
    for g, lab in zip(groups_arr, labels_arr, strict=True):
        counts = per_group.setdefault(g, {})
        counts[lab] = counts.get(lab, 0) + 1
    strata: dict[str, list[tuple[str, int]]] = {}
    for g in sorted(per_group):
        counts = per_group[g]
        major = min(counts, key=lambda lab: (-counts[lab], lab))
        strata.setdefault(major, []).append((g, sum(counts.values())))
    rng = np.random.default_rng(seed)
    test: set[str] = set()
    for lab in sorted(strata):
        members = strata[lab]
        if len(members) == 1:
            if rng.random() < test_fraction:
                test.add(members[0][0])
            continue
        target = test_fraction * sum(n for _, n in members)
        taken = 0
        for n_groups, i in enumerate(rng.permutation(len(members))):
            if taken >= target or n_groups >= len(members) - 1:
                break
            test.add(members[i][0])
            taken += members[i][1]
    return np.fromiter((g in test for g in groups_arr), dtype=bool, count=len(groups_arr))


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

    @property
    def n(self) -> int:
        return len(self.tile_id)

    def to_table(self) -> pa.Table:
        cols: dict[str, pa.Array] = {"tile_id": pa.array(self.tile_id, pa.int64())}
        for c in TEXT_COLUMNS:
            cols[c] = pa.array(self.text[c], pa.string())
        dim = self.embedding.shape[1]
        flat = pa.array(self.embedding.reshape(-1), pa.float32())
        cols["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dim)
        if self.nn_tile_id is not None:
            cols["nn_tile_id"] = pa.array(self.nn_tile_id, pa.list_(pa.int64()))
            cols["nn_score"] = pa.array(self.nn_score, pa.list_(pa.float32()))
            cols["nn_label"] = pa.array(self.nn_label, pa.list_(pa.string()))
        table = pa.table(cols)
        return table.replace_schema_metadata({"lamina": json.dumps(self.meta, sort_keys=True)})


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
) -> LabeledSet:
    """Rows of the collection (or of ``tile_ids``) with a non-null label, split train/test."""
    for col, what in ((label_column, "label column"), (split_by, "split-by column")):
        if col is not None and col not in view.schema:
            known = ", ".join(view.metadata_columns)
            raise InvalidQueryError(f"unknown {what} {col!r}; metadata columns: {known}")
    if neighbors is not None and not 1 <= int(neighbors) <= 1000:
        raise InvalidQueryError(f"neighbors must be between 1 and 1000, got {neighbors!r}")
    pcol = patient_column(view)
    lab = quote_ident(label_column)
    pat = f"CAST({quote_ident(pcol)} AS VARCHAR)" if pcol else "NULL::VARCHAR"
    grp = f"CAST({quote_ident(split_by)} AS VARCHAR)" if split_by else "NULL::VARCHAR"
    select = (
        f"SELECT tile_id, source, source_id, {pat} AS patient, "
        f"CAST({lab} AS VARCHAR) AS label, {grp} AS grp FROM tiles"
    )
    params: list[Any] = []
    if tile_ids is not None:
        select += " WHERE tile_id IN (SELECT unnest(?::BIGINT[]))"
        params.append([int(t) for t in tile_ids])
    rows = view.sql(select + " ORDER BY tile_id", params)
    kept = [r for r in rows if r["label"] is not None]
    ids = np.asarray([int(r["tile_id"]) for r in kept], dtype=np.int64)
    groups = [r["grp"] if r["grp"] is not None else f"tile:{r['tile_id']}" for r in kept]
    labels = [str(r["label"]) for r in kept]
    is_test = assign_split(groups, labels, test_fraction, seed)
    text: dict[str, list[str | None]] = {
        "source": [r["source"] for r in kept],
        "source_id": [r["source_id"] for r in kept],
        "patient": [r["patient"] for r in kept],
        "label": list(labels),
        "split": ["test" if t else "train" for t in is_test],
        "group": list(groups),
    }
    emb = (
        view.tile_vectors(ids.tolist()).astype(np.float32)
        if len(ids)
        else np.zeros((0, view.dim), np.float32)
    )
    meta = {
        "format": EXPORT_FORMAT,
        "lamina_version": lamina_version(),
        "collection": view.collection.name,
        "snapshot": view.snapshot.id,
        "encoder": view.collection.fingerprint,
        "encoder_key": view.collection.encoder_key,
        "label_column": label_column,
        "split_by": split_by,
        "patient_column": pcol,
        "test_fraction": float(test_fraction),
        "seed": int(seed),
        "neighbors": neighbors,
        "cohort": None if cohort is None else cohort["name"],
        "cohort_version": None if cohort is None else cohort["version"],
        "n_rows": int(len(ids)),
        "n_dropped_null_label": len(rows) - len(kept),
        "n_train": int((~is_test).sum()),
        "n_test": int(is_test.sum()),
        "embedding_dim": int(view.dim),
    }
    out = LabeledSet(tile_id=ids, text=text, embedding=emb, meta=meta)
    if neighbors is not None:
        _add_neighbors(view, out, label_column, int(neighbors))
    return out


def _add_neighbors(view: CollectionView, ls: LabeledSet, label_column: str, k: int) -> None:
    rows = view.sql(
        f"SELECT tile_id, CAST({quote_ident(label_column)} AS VARCHAR) AS label "
        f"FROM tiles WHERE {quote_ident(label_column)} IS NOT NULL ORDER BY tile_id"
    )
    cand_ids = np.asarray([int(r["tile_id"]) for r in rows], dtype=np.int64)
    cand_labels = [str(r["label"]) for r in rows]
    cand_pos = view.positions_of(cand_ids) if len(cand_ids) else np.zeros(0, np.int64)
    nn_ids: list[list[int]] = []
    nn_scores: list[list[float]] = []
    nn_labels: list[list[str]] = []
    for start in range(0, ls.n, 1024):
        q = ls.embedding[start : start + 1024]
        scores = best_scores(view.vectors, q, cand_pos)
        for i, row in enumerate(scores):
            self_id = ls.tile_id[start + i]
            order = np.lexsort((cand_ids, -row))
            order = order[cand_ids[order] != self_id][:k]
            nn_ids.append(cand_ids[order].tolist())
            nn_scores.append([float(s) for s in row[order]])
            nn_labels.append([cand_labels[j] for j in order])
    ls.nn_tile_id, ls.nn_score, ls.nn_label = nn_ids, nn_scores, nn_labels


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
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
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _csv_table(ls: LabeledSet) -> pa.Table:
    cols: dict[str, Any] = {"tile_id": pa.array(ls.tile_id, pa.int64())}
    for c in TEXT_COLUMNS:
        cols[c] = pa.array(ls.text[c], pa.string())
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
) -> LabeledSet:
    """The labeled set of a collection, or of a cohort's members: what exports and probes use."""
    from search.cohorts import cohort_tile_ids

    tile_ids, record = (None, None)
    if cohort is not None:
        tile_ids, record = cohort_tile_ids(catalog, cohort, view.collection.name)
    return build_labeled_set(
        view,
        label_column,
        tile_ids=tile_ids,
        split_by=split_by,
        test_fraction=test_fraction,
        seed=seed,
        neighbors=neighbors,
        cohort=record,
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
) -> dict[str, Any]:
    """Build, write and record (in the catalog, when given) one export; returns its record.

    ``record_path=False`` leaves the file's path out of the record (a temporary file that
    the server sends back over HTTP).
    """
    import secrets

    from search.catalog import now_utc

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
