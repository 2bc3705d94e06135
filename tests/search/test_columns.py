"""Column roles and group-by on real PAD-UFES-20 photos (patient_id, lesion_id, diagnostic):
grouped answers equal a pandas groupby-max over an exact scan; declared patient columns drive
group-by, exclude-same, splits and cohort counts; case-insensitive filters and their warnings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lamina.search import SearchService, Store
from lamina.search.cohorts import summary_counts
from lamina.search.columns import declare, group_column, patient_column, split_column
from lamina.search.errors import FilterError, InvalidQueryError
from lamina.search.exports import build_labeled_set
from lamina.search.filters import compile_conditions, parse_filters
from lamina.search.probes import probe_labeled_set


def _frame(view: Any, q: np.ndarray) -> pd.DataFrame:
    """Every tile with its exact score against ``q`` and its metadata (a brute-force scan)."""
    ids = view.all_tile_ids()
    rows = view.rows_at(np.arange(view.n_tiles))
    df = pd.DataFrame([view.metadata_of(r) for r in rows])
    df["tile_id"] = ids
    df["source_id"] = [r["source_id"] for r in rows]
    df["score"] = np.asarray(view.vectors[np.arange(view.n_tiles)], np.float64) @ q
    return df


def _expected(df: pd.DataFrame, column: str, k: int) -> pd.DataFrame:
    """The k best groups by their best tile: pandas groupby max (ties to the lower tile id)."""
    best = df.sort_values(["score", "tile_id"], ascending=[False, True]).groupby(column).head(1)
    size = df.groupby(column).size().rename("n")
    out = (
        best.set_index(column).join(size).sort_values(["score", "tile_id"], ascending=[False, True])
    )
    return out.head(k)


@pytest.mark.parametrize(
    ("group_by", "column", "filters"),
    [
        ("patient", "patient_id", []),
        ("lesion_id", "lesion_id", []),
        ("slide", "source_id", []),
        ("region", "region", ["diagnostic=NEV,BCC,SEK"]),
        ("lesion_id", "lesion_id", ["age>=50"]),
    ],
)
def test_groups_equal_pandas_groupby_max(
    derm_home: Path, group_by: str, column: str, filters: list[str]
) -> None:
    svc = SearchService(Store(derm_home))
    view = svc.view("derm")
    q = np.asarray(view.tile_vectors([7])[0], np.float64)
    q /= np.linalg.norm(q)
    df = _frame(view, q)
    for f in filters:  # the same filters, applied by pandas
        col, _, val = f.partition(">=") if ">=" in f else f.partition("=")
        df = df[df[col] >= int(val)] if ">=" in f else df[df[col].isin(val.split(","))]
    k = 12
    want = _expected(df.dropna(subset=[column]), column, k)
    res = svc.search("derm", q, k, filters=filters, group_by=group_by, params={"strategy": "exact"})
    assert res.groups is not None and len(res.groups) == len(want) == k
    # one hit per group, the group's best tile, in group order
    assert [h.tile_id for h in res.hits] == [g.hits[0].tile_id for g in res.groups]
    assert [h.tile_id for h in res.hits] == want["tile_id"].tolist()
    got_values = [g.value for g in res.groups]
    assert got_values == want.index.tolist()
    np.testing.assert_allclose([g.score for g in res.groups], want["score"], atol=1e-5)
    assert [g.n_hits for g in res.groups] == want["n"].tolist()
    assert len({json.dumps(v) for v in got_values}) == k  # k distinct groups
    key = "slide" if column == "source_id" else column
    assert all(g.key == key for g in res.groups)
    if column == "source_id":  # slide groups name the file the hits show
        assert all(g.name == g.hits[0].source for g in res.groups)
        assert all(Path(g.name or "").suffix == ".jpg" for g in res.groups)
    else:
        assert all(g.name is None for g in res.groups)


def test_group_by_errors_name_the_columns_and_the_fix(derm_home: Path) -> None:
    svc = SearchService(Store(derm_home))
    q = svc.view("derm").tile_vectors([0])[0]
    with pytest.raises(InvalidQueryError, match="not a column.*lesion_id"):
        svc.search("derm", q, 3, group_by="ward")
    with pytest.raises(InvalidQueryError, match="declares no case column.*--case-column"):
        svc.search("derm", q, 3, group_by="case")
    col = svc.view("derm").collection
    with pytest.raises(InvalidQueryError, match="'ward' is not a column.*patient_id"):
        declare(col, {"patient": "ward"}, svc.view("derm").metadata_columns)
    with pytest.raises(InvalidQueryError, match="unknown column role"):
        declare(col, {"doctor": "patient_id"}, svc.view("derm").metadata_columns)


def test_declared_patient_column_drives_grouping_exclusion_splits_and_counts(
    derm_home: Path,
) -> None:
    store = Store(derm_home)
    svc = SearchService(store)
    view = svc.view("derm")
    assert patient_column(view) == "patient_id"  # no declaration: the patient_id column
    assert (
        json.loads((view.collection.path / "collection.json").read_text()).get("patient_column")
        is None
    )
    declare(view.collection, {"patient": "lesion_id", "lesion": "lesion_id"}, view.metadata_columns)
    fresh = SearchService(store).view("derm")  # another process reads it from disk
    assert patient_column(fresh) == "lesion_id" and group_column(fresh, "lesion") == "lesion_id"
    res = SearchService(store).search_tile("derm", 3, 8, group_by="patient", exclude_same="patient")
    own = fresh.tile(3)["lesion_id"]
    assert res.groups is not None and all(g.key == "lesion_id" for g in res.groups)
    assert all(g.value != own for g in res.groups)
    # default split: the declared column, no warning; every lesion on one side
    ls = build_labeled_set(fresh, "diagnostic")
    assert ls.meta["split_by"] == "lesion_id" and ls.meta["warnings"] == []
    lesions = pd.DataFrame({"g": ls.text["group"], "s": ls.text["split"]})
    assert lesions.groupby("g")["s"].nunique().max() == 1
    assert ls.text["patient"] == [str(fresh.tile(int(t))["lesion_id"]) for t in ls.tile_id]
    # counts use the declared column
    ids = fresh.all_tile_ids()[:40]
    pdf = pd.DataFrame([fresh.tile(int(t)) for t in ids])
    assert summary_counts(fresh, ids)["n_patients"] == pdf["lesion_id"].nunique()


def test_default_split_is_the_patient_column_and_image_split_warns(derm_home: Path) -> None:
    view = SearchService(Store(derm_home)).view("derm")
    assert split_column(view, None) == ("patient_id", [])
    assert split_column(view, "patient") == ("patient_id", [])
    col, warnings = split_column(view, "image")
    assert col is None and len(warnings) == 1
    assert "patient column ('patient_id')" in warnings[0] and "inflated" in warnings[0]
    with pytest.raises(InvalidQueryError, match="'ward' is not a column"):
        split_column(view, "ward")
    by_patient = build_labeled_set(view, "diagnostic")
    by_image = build_labeled_set(view, "diagnostic", split_by="image")
    assert by_patient.meta["split_by"] == "patient_id"
    assert by_image.meta["split_by"] is None and by_image.meta["warnings"] == warnings
    assert all(g.startswith("tile:") for g in by_image.text["group"])
    patients = pd.DataFrame({"p": by_patient.text["patient"], "s": by_patient.text["split"]})
    assert patients.groupby("p")["s"].nunique().max() == 1  # no patient on both sides
    report = probe_labeled_set(by_image, (1.0,), 0, 20)
    assert report["warnings"] == warnings and report["split_by"] is None


def test_case_insensitive_filter_and_warnings(derm_home: Path) -> None:
    svc = SearchService(Store(derm_home))
    view = svc.view("derm")
    q = view.tile_vectors([0])[0]
    exact = svc.search("derm", q, 500, filters=["diagnostic=NEV,BCC"])
    folded = svc.search("derm", q, 500, filters=["diagnostic~=nev,Bcc"])
    assert exact.warnings == [] and folded.warnings == []
    assert [h.tile_id for h in folded.hits] == [h.tile_id for h in exact.hits]
    assert folded.hits and {h.metadata["diagnostic"] for h in folded.hits} == {"NEV", "BCC"}
    same = svc.search("derm", q, 500, filter_json={"diagnostic": {"iin": "nev"}})
    assert {h.metadata["diagnostic"] for h in same.hits} == {"NEV"}
    wrong_case = svc.search("derm", q, 5, filters=["diagnostic=nev"])
    assert wrong_case.hits == [] and len(wrong_case.warnings) == 1
    assert "'NEV'" in wrong_case.warnings[0] and "diagnostic~=" in wrong_case.warnings[0]
    nothing = svc.search("derm", q, 5, filters=["region=ELBOW", "age=7"])
    assert nothing.hits == [] and len(nothing.warnings) == 2
    assert "no tile has region 'ELBOW'" in nothing.warnings[0]
    assert "differing only in case" not in nothing.warnings[0]
    assert "no tile has age 7" in nothing.warnings[1]
    assert "warnings" in nothing.to_dict() and nothing.to_dict()["warnings"] == nothing.warnings
    # the SQL form (cohorts, shards) selects the same tiles as the column-wise form
    conds = parse_filters(["diagnostic~=nev,bcc", "region~=face"])
    where, params = compile_conditions(conds, view.schema)
    n_sql = view.sql(f"SELECT count(*) AS n FROM tiles WHERE {where}", params)[0]["n"]
    mask = view.mask(conds)
    assert mask is not None and n_sql == int(mask.sum()) > 0
    df = pd.DataFrame([view.metadata_of(r) for r in view.rows_at(np.arange(view.n_tiles))])
    expect = df["diagnostic"].str.lower().isin(["nev", "bcc"]) & (
        df["region"].str.lower() == "face"
    )
    assert int(expect.sum()) == n_sql
    with pytest.raises(FilterError):
        parse_filters(["diagnostic~="])


@pytest.fixture(scope="module")
def ebhi(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Any:
    """The 240 EBHI-Seg H&E tiles (168 cases) with their case and specimen ids, declared as the
    patient and case columns as `lamina index --patient-column case_id --case-column
    specimen_id` does."""
    from lamina.encoders import create_encoder
    from lamina.indexer import IngestOptions, Manifest, ingest

    src = shared_data / "path_tiles" / "ebhi_seg_224"
    home = tmp_path_factory.mktemp("ebhi") / "home"
    store = Store(home)
    ingest(
        store,
        "ebhi",
        [str(src / "images")],
        create_encoder("classic/stain-texture"),
        IngestOptions(progress=False),
        Manifest.load(src / "labels.csv", "filename"),
    )
    col = store.collection("ebhi")
    view = SearchService(store).view("ebhi")
    declare(col, {"patient": "case_id", "case": "specimen_id"}, view.metadata_columns)
    return store


def test_he_tiles_split_by_case_by_default_and_image_split_leaks(ebhi: Any) -> None:
    view = SearchService(ebhi).view("ebhi")
    assert view.n_tiles == 240 and patient_column(view) == "case_id"
    by_case = build_labeled_set(view, "class_code", seed=3)
    by_image = build_labeled_set(view, "class_code", split_by="image", seed=3)
    cases = [str(view.tile(int(t))["case_id"]) for t in by_case.tile_id]
    a = pd.DataFrame({"case": cases, "split": by_case.text["split"]})
    b = pd.DataFrame({"case": cases, "split": by_image.text["split"]})
    assert by_case.meta["split_by"] == "case_id" and by_case.meta["warnings"] == []
    assert a.groupby("case")["split"].nunique().max() == 1  # no case on both sides
    assert by_case.text["patient"] == cases
    # by image, cases with several tiles land on both sides: the leak the warning names
    assert (b.groupby("case")["split"].nunique() == 2).sum() > 0
    assert "inflated" in by_image.meta["warnings"][0]


def test_he_group_by_case_equals_pandas(ebhi: Any) -> None:
    svc = SearchService(ebhi)
    view = svc.view("ebhi")
    q = np.asarray(view.tile_vectors([11])[0], np.float64)
    df = _frame(view, q / np.linalg.norm(q))
    want = _expected(df, "specimen_id", 10)
    res = svc.search_tile("ebhi", 11, 10, group_by="case", params={"strategy": "exact"})
    assert res.groups is not None
    assert [g.value for g in res.groups] == want.index.tolist()
    assert [g.n_hits for g in res.groups] == want["n"].tolist()
    assert [h.tile_id for h in res.hits] == want["tile_id"].tolist()
    excl = svc.search_tile("ebhi", 11, 10, group_by="patient", exclude_same="patient")
    own = view.tile(11)["case_id"]
    assert excl.groups and all(g.key == "case_id" and g.value != own for g in excl.groups)


def test_a_running_service_sees_roles_declared_by_another_process(ebhi: Any) -> None:
    import time

    server = SearchService(ebhi, background=True)
    assert patient_column(server.view("ebhi")) == "case_id"
    other = Store(ebhi.home).collection("ebhi")  # as another process would open it
    declare(other, {"patient": "specimen_id"}, ["specimen_id", "case_id"])
    time.sleep(0.15)  # older than the file-time granularity the service trusts
    view = server.view("ebhi")
    assert patient_column(view) == "specimen_id"
    assert group_column(view, "patient") == "specimen_id"
    declare(other, {"patient": "case_id"}, ["specimen_id", "case_id"])  # as the module expects
