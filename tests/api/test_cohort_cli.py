"""CLI end to end: `lamina probe`, `lamina export`, `lamina cohort create/show/list/delete`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from lamina.api.cli import cli

DERM_DIR = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "derm" / "pad_ufes20_subset"
)


@pytest.fixture()
def home(derm_home: Path, tmp_path: Path) -> Path:
    """A private copy of the session's derm collection (so the catalog is ours alone)."""
    h = tmp_path / "home"
    shutil.copytree(derm_home / "collections", h / "collections")
    return h


def run(home: Path, *args: str) -> str:
    res = CliRunner().invoke(
        cli, ["--home", str(home), *args], catch_exceptions=False, env={"LAMINA_URL": ""}
    )
    assert res.exit_code == 0, res.output
    return res.stdout


def test_probe_json(home: Path) -> None:
    doc = json.loads(
        run(
            home,
            "probe",
            "--collection",
            "derm",
            "--label-column",
            "diagnostic",
            "--split-by",
            "patient_id",
            "--json",
        )
    )
    assert doc["ok"] and doc["split_by"] == "patient_id" and len(doc["classes"]) == 6
    assert [f["fraction"] for f in doc["fractions"]] == [0.125, 0.25, 0.5, 1.0]
    for f in doc["fractions"]:
        for m in ("auroc", "accuracy", "balanced_accuracy"):
            assert f[m]["ci_low"] <= f[m]["value"] <= f[m]["ci_high"]
    assert set(doc["retrieval"]) == {"acc@1", "acc@3", "acc@5", "mmv@5"}
    table = run(
        home,
        "probe",
        "--collection",
        "derm",
        "--label-column",
        "diagnostic",
        "--split-by",
        "patient_id",
        "--fractions",
        "0.5,1",
    )
    assert "AUROC" in table and "mmv@5" in table


def test_export_no_patient_in_both_splits(home: Path, tmp_path: Path) -> None:
    import duckdb

    out = tmp_path / "set.parquet"
    text = run(
        home,
        "export",
        "--collection",
        "derm",
        "--label-column",
        "diagnostic",
        "--split-by",
        "patient_id",
        "--out",
        str(out),
    )
    assert "snapshot" in text
    con = duckdb.connect()
    leaks = con.execute(
        f"SELECT patient FROM read_parquet('{out}') GROUP BY patient "
        "HAVING count(DISTINCT split) > 1"
    ).fetchall()
    assert leaks == []
    meta = json.loads(
        con.execute(
            f"SELECT value FROM parquet_kv_metadata('{out}') WHERE key = 'lamina'"
        ).fetchone()[0]
    )
    assert meta["snapshot"] and meta["encoder"].startswith("test/tiny-vit@")
    out_csv = tmp_path / "set.csv"
    run(
        home,
        "export",
        "--collection",
        "derm",
        "--label-column",
        "diagnostic",
        "--neighbors",
        "2",
        "--out",
        str(out_csv),
    )
    with open(out_csv) as fh:
        header = next(csv.reader(fh))
    assert (
        header[:8]
        == ["tile_id", "source", "source_id", "patient", "label", "split", "group", "nn_tile_id"]
        and "e63" in header
    )
    assert json.loads(Path(str(out_csv) + ".meta.json").read_text())["seed"] == 0


def test_cohort_create_show_list_delete(home: Path) -> None:
    with open(DERM_DIR / "labels.csv") as fh:
        mel = next(r["filename"] for r in csv.DictReader(fh) if r["diagnostic"] == "MEL")
    created = json.loads(
        run(
            home,
            "cohort",
            "create",
            "mel-like",
            "--collection",
            "derm",
            "--near",
            str(DERM_DIR / mel),
            "--k",
            "50",
            "--json",
        )
    )
    assert created["cohort"]["n_tiles"] == 50 and created["cohort"]["version"] == 1
    shown = json.loads(run(home, "cohort", "show", "mel-like", "--json"))["cohort"]
    counts = shown["counts"]
    assert sum(r["n"] for r in counts["per_patient"]) == 50
    assert sum(r["n"] for r in counts["per_label"]["diagnostic"]) == 50
    assert any(r["value"] == "MEL" for r in counts["per_label"]["diagnostic"])
    run(home, "cohort", "create", "mel-like", "--collection", "derm", "--filter", "diagnostic=MEL")
    listed = json.loads(run(home, "cohort", "list", "--json"))["cohorts"]
    assert [(c["name"], c["version"], c["n_versions"]) for c in listed] == [("mel-like", 2, 2)]
    assert "per diagnostic" in run(home, "cohort", "show", "mel-like")
    run(home, "cohort", "delete", "mel-like")
    res = CliRunner().invoke(
        cli, ["--home", str(home), "cohort", "show", "mel-like"], env={"LAMINA_URL": ""}
    )
    assert res.exit_code == 2 and "no cohort" in res.output
