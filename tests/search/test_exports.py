"""Exports: group-disjoint splits (property-based), reproducibility, formats, neighbours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.search import SearchService, Store
from lamina.search.catalog import Catalog
from lamina.search.exports import assign_split, export_labeled_set, read_labeled_set

manifests = st.lists(
    st.tuples(st.integers(0, 30), st.sampled_from(["A", "B", "C"]), st.integers(1, 6)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(manifests, st.floats(0.0, 0.95), st.integers(0, 2**32 - 1))
def test_no_group_in_both_splits(
    groups: list[tuple[int, str, int]], test_fraction: float, seed: int
) -> None:
    rows_g: list[str] = []
    rows_l: list[str] = []
    for g, label, size in groups:
        rows_g += [f"g{g}"] * size
        rows_l += [label] * size
    is_test = assign_split(rows_g, rows_l, test_fraction, seed)
    side: dict[str, set[bool]] = {}
    for g, t in zip(rows_g, is_test, strict=True):
        side.setdefault(g, set()).add(bool(t))
    assert all(len(s) == 1 for s in side.values())
    assert np.array_equal(is_test, assign_split(rows_g, rows_l, test_fraction, seed))
    if test_fraction == 0:
        assert not is_test.any()
    # every label with >= 2 groups (by majority label, ties to the smallest) keeps one in train
    strata: dict[str, list[str]] = {}
    for g, labs in _label_counts(rows_g, rows_l).items():
        strata.setdefault(min(labs, key=lambda lab: (-labs[lab], lab)), []).append(g)
    for gs in strata.values():
        if len(gs) >= 2:
            assert any(side[g] == {False} for g in gs)


def _label_counts(rows_g: list[str], rows_l: list[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for g, lab in zip(rows_g, rows_l, strict=True):
        counts = out.setdefault(g, {})
        counts[lab] = counts.get(lab, 0) + 1
    return out


def test_split_by_patient_never_leaks_and_file_records_provenance(
    derm_home: Path, tmp_path: Path
) -> None:
    view = SearchService(Store(derm_home)).view("derm")
    out = tmp_path / "set.parquet"
    with Catalog(derm_home) as cat:
        doc = export_labeled_set(view, cat, out, label_column="diagnostic", split_by="patient_id")
        assert cat.exports()[0]["sha256"] == doc["export"]["sha256"]
    ls = read_labeled_set(out)
    pats: dict[str, set[str]] = {}
    for p, s in zip(ls.text["patient"], ls.text["split"], strict=True):
        pats.setdefault(str(p), set()).add(str(s))
    assert all(len(v) == 1 for v in pats.values())
    assert {"train", "test"} == set(ls.text["split"])
    assert ls.meta["snapshot"] == view.snapshot.id
    assert ls.meta["encoder"] == view.collection.fingerprint
    assert ls.meta["split_by"] == "patient_id" and ls.meta["seed"] == 0
    assert ls.embedding.dtype == np.float32 and ls.embedding.shape == (view.n_tiles, view.dim)
    assert np.array_equal(ls.embedding, view.tile_vectors(ls.tile_id.tolist()))


def test_same_arguments_same_snapshot_same_data(derm_home: Path, tmp_path: Path) -> None:
    view = SearchService(Store(derm_home)).view("derm")
    tables = []
    with Catalog(derm_home) as cat:
        for i in range(2):
            out = tmp_path / f"run{i}.parquet"
            export_labeled_set(
                view,
                cat,
                out,
                label_column="diagnostic",
                split_by="patient_id",
                seed=3,
                neighbors=4,
            )
            tables.append(pq.read_table(out))
        for fmt in ("csv", "npz"):
            export_labeled_set(
                view,
                cat,
                tmp_path / f"x.{fmt}",
                label_column="diagnostic",
                split_by="patient_id",
                seed=3,
            )
    assert tables[0].equals(tables[1], check_metadata=True)
    a = tables[0].column("embedding").combine_chunks().flatten().to_numpy()
    b = tables[1].column("embedding").combine_chunks().flatten().to_numpy()
    assert a.tobytes() == b.tobytes()
    base = read_labeled_set(tmp_path / "run0.parquet")
    for fmt in ("csv", "npz"):
        other = read_labeled_set(tmp_path / f"x.{fmt}")
        assert np.array_equal(other.tile_id, base.tile_id)
        assert other.text["split"] == base.text["split"]
        assert other.embedding.tobytes() == base.embedding.tobytes()
        assert other.meta["snapshot"] == base.meta["snapshot"]


def test_neighbors_and_null_labels(derm_home: Path, tmp_path: Path) -> None:
    view = SearchService(Store(derm_home)).view("derm")
    out = tmp_path / "nn.parquet"
    with Catalog(derm_home) as cat:
        doc = export_labeled_set(view, cat, out, label_column="fitspatrick", neighbors=3)
    n_null = view.sql("SELECT count(*) AS n FROM tiles WHERE fitspatrick IS NULL")[0]["n"]
    assert n_null > 0 and doc["meta"]["n_dropped_null_label"] == n_null
    t = pq.read_table(out).to_pylist()
    assert len(t) == view.n_tiles - n_null
    labels = {r["tile_id"]: r["label"] for r in t}
    for r in t[:20]:
        assert len(r["nn_tile_id"]) == 3 and r["tile_id"] not in r["nn_tile_id"]
        assert r["nn_score"] == sorted(r["nn_score"], reverse=True)
        assert r["nn_label"] == [labels[i] for i in r["nn_tile_id"]]
