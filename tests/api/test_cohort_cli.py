"""CLI end to end: `lamina probe`, `lamina export`, `lamina cohort create/show/list/delete`,
each test run twice (``cli_mode``): in process on the home, and with --url against a real
`lamina serve` on it."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

DERM_DIR = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "derm" / "pad_ufes20_subset"
)


@pytest.fixture(scope="module")
def home(derm_home: Path, tmp_path_factory: pytest.TempPathFactory, cli_mode: str) -> Path:
    """A private copy of the session's derm collection per mode (the catalog is ours alone)."""
    h = tmp_path_factory.mktemp(f"cohort-cli-{cli_mode}") / "home"
    shutil.copytree(derm_home / "collections", h / "collections")
    return h


@pytest.fixture(scope="module")
def lamina(home: Path, cli_for: Any) -> Any:
    """The CLI on ``home``, in this module's mode (local or --url)."""
    return cli_for(home)


def run(lamina: Any, *args: str) -> str:
    return str(lamina(*args).stdout)


def test_probe_json(lamina: Any) -> None:
    doc = json.loads(
        run(
            lamina,
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
        lamina,
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


def test_export_no_patient_in_both_splits(lamina: Any, tmp_path: Path) -> None:
    import duckdb

    out = tmp_path / "set.parquet"
    text = run(
        lamina,
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
        lamina,
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
    assert header[:7] == ["tile_id", "source", "source_id", "patient", "label", "split", "group"]
    assert {"x", "y", "nn_tile_id", "nn_score", "nn_label", "e63"} <= set(header)
    assert json.loads(Path(str(out_csv) + ".meta.json").read_text())["seed"] == 0


def test_cohort_create_show_list_delete(lamina: Any) -> None:
    with open(DERM_DIR / "labels.csv") as fh:
        mel = next(r["filename"] for r in csv.DictReader(fh) if r["diagnostic"] == "MEL")
    created = json.loads(
        run(
            lamina,
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
    shown = json.loads(run(lamina, "cohort", "show", "mel-like", "--json"))["cohort"]
    counts = shown["counts"]
    assert sum(r["n"] for r in counts["per_patient"]) == 50
    assert sum(r["n"] for r in counts["per_label"]["diagnostic"]) == 50
    assert any(r["value"] == "MEL" for r in counts["per_label"]["diagnostic"])
    run(
        lamina, "cohort", "create", "mel-like", "--collection", "derm", "--filter", "diagnostic=MEL"
    )
    listed = json.loads(run(lamina, "cohort", "list", "--json"))["cohorts"]
    assert [(c["name"], c["version"], c["n_versions"]) for c in listed] == [("mel-like", 2, 2)]
    assert "per diagnostic" in run(lamina, "cohort", "show", "mel-like")
    run(lamina, "cohort", "delete", "mel-like")
    res = lamina("cohort", "show", "mel-like", code=2)
    assert "no cohort" in res.stderr
