"""Column roles, group-by any column, filter warnings and default splits through the CLI, run
both in process (``--home``) and against a real `lamina serve` (``--url``) on one home of real
PAD-UFES-20 photos; exit codes of index and search on missing paths."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import stable


@pytest.fixture(scope="module")
def both(
    derm_home: Path, tmp_path_factory: pytest.TempPathFactory, served_home: Any, cli_on: Any
) -> Iterator[tuple[Any, Any]]:
    home = tmp_path_factory.mktemp("columns") / "home"
    shutil.copytree(derm_home / "collections", home / "collections")
    with served_home(home) as server:
        yield cli_on("local", home), cli_on("url", home, server.url)


def same(both: tuple[Any, Any], *args: str, code: int = 0) -> tuple[dict[str, Any], Any]:
    """``lamina ARGS --json`` both ways: equal documents and equal warnings on stderr (progress
    lines depend on timing); -> (doc, result)."""
    local, remote = both
    a, b = local(*args, "--json", code=code), remote(*args, "--json", code=code)
    da, db = json.loads(a.stdout), json.loads(b.stdout)
    assert stable(da) == stable(db), args

    def warnings(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("warning:")]

    assert warnings(a.stderr) == warnings(b.stderr), args
    return da, a


def test_declare_columns_and_group_by_them(both: tuple[Any, Any]) -> None:
    doc, _ = same(both, "collection", "columns", "derm")
    col = doc["collection"]
    assert col["patient_column"] == "patient_id" and col["declared"]["patient_column"] is None
    assert col["lesion_column"] is None and "lesion_id" in col["metadata_columns"]
    err, res = same(both, "collection", "columns", "derm", "--lesion-column", "ward", code=2)
    assert err["code"] == "INVALID_QUERY" and "lesion_id" in err["error"]
    assert "'ward' is not a column" in res.stderr
    err, _ = same(
        both, "search", "--collection", "derm", "--tile-id", "5", "--group-by", "lesion", code=2
    )
    assert "--lesion-column" in err["error"]
    doc, _ = same(both, "collection", "columns", "derm", "--lesion-column", "lesion_id")
    assert doc["collection"]["lesion_column"] == "lesion_id"
    assert doc["collection"]["declared"]["lesion_column"] == "lesion_id"
    by_role, _ = same(
        both, "search", "--collection", "derm", "--tile-id", "5", "-k", "6", "--group-by", "lesion"
    )
    by_name, _ = same(
        both,
        "search",
        "--collection",
        "derm",
        "--tile-id",
        "5",
        "-k",
        "6",
        "--group-by",
        "lesion_id",
    )
    assert by_role["groups"] == by_name["groups"] and len(by_name["groups"]) == 6
    assert [h["tile_id"] for h in by_name["hits"]] == [
        g["hits"][0]["tile_id"] for g in by_name["groups"]
    ]
    assert len({g["value"] for g in by_name["groups"]}) == 6
    status, _ = same(both, "status", "--collection", "derm")
    assert status["collections"][0]["lesion_column"] == "lesion_id"
    text = both[0]("status", "--collection", "derm").stdout
    assert "columns: patient patient_id, lesion lesion_id" in text
    doc, _ = same(both, "collection", "columns", "derm", "--clear", "lesion")
    assert doc["collection"]["lesion_column"] is None


def test_group_by_slide_names_files_and_exclude_same_patient(both: tuple[Any, Any]) -> None:
    doc, res = same(
        both, "search", "--collection", "derm", "--tile-id", "9", "-k", "4", "--group-by", "slide"
    )
    for g in doc["groups"]:
        assert g["key"] == "slide" and g["name"] == g["hits"][0]["source"]
        assert g["name"].endswith(".jpg") and not Path(g["name"]).is_absolute()
    text = both[1](
        "search", "--collection", "derm", "--tile-id", "9", "-k", "4", "--group-by", "slide"
    ).stdout
    assert f"group slide={Path(doc['groups'][0]['name']).name}:" in text
    assert doc["groups"][0]["value"] not in text  # the file name, not the source hash
    q = both[0].json("search", "--collection", "derm", "--tile-id", "9", "-k", "1")["hits"][0]
    own = q["metadata"]["patient_id"]
    doc, _ = same(
        both,
        "search",
        "--collection",
        "derm",
        "--tile-id",
        "9",
        "-k",
        "5",
        "--group-by",
        "patient",
        "--exclude-same",
        "patient",
    )
    assert len(doc["groups"]) == 5 and all(g["value"] != own for g in doc["groups"])
    assert all(g["key"] == "patient_id" for g in doc["groups"])


def test_filter_case_and_values_that_match_nothing(both: tuple[Any, Any]) -> None:
    doc, res = same(
        both, "search", "--collection", "derm", "--tile-id", "2", "--filter", "diagnostic=mel"
    )
    assert doc["hits"] == [] and len(doc["warnings"]) == 1 and "'MEL'" in doc["warnings"][0]
    assert "warning: filter on 'diagnostic': no tile has diagnostic 'mel'" in res.stderr
    doc, res = same(
        both,
        "search",
        "--collection",
        "derm",
        "--tile-id",
        "2",
        "-k",
        "50",
        "--filter",
        "diagnostic~=mel",
    )
    assert doc["warnings"] == [] and res.stderr == ""
    assert doc["hits"] and {h["metadata"]["diagnostic"] for h in doc["hits"]} == {"MEL"}
    exact, _ = same(
        both,
        "search",
        "--collection",
        "derm",
        "--tile-id",
        "2",
        "-k",
        "50",
        "--filter",
        "diagnostic=MEL",
    )
    assert [h["tile_id"] for h in exact["hits"]] == [h["tile_id"] for h in doc["hits"]]
    n_mel = exact["plan"]["matched"]  # every MEL tile (the filter's matches)
    doc, _ = same(
        both, "search", "--collection", "derm", "--tile-id", "2", "--filter", "region=MOON"
    )
    assert doc["warnings"] == ["filter on 'region': no tile has region 'MOON'"]
    for mode, cli in zip(("local", "url"), both, strict=True):  # cohorts say it too (not stored)
        name = f"mel-{mode}"
        res = cli("cohort", "create", name, "--collection", "derm", "--filter", "diagnostic=mel")
        assert "warning: filter on 'diagnostic': no tile has diagnostic 'mel'" in res.stderr
        made = cli.json(
            "cohort", "create", name, "--collection", "derm", "--filter", "diagnostic~=mel"
        )
        assert made["cohort"]["warnings"] == [] and made["cohort"]["n_tiles"] == n_mel
        assert "warnings" not in cli.json("cohort", "show", name)["cohort"]


def test_probe_splits_by_patient_unless_told_and_warns(both: tuple[Any, Any]) -> None:
    args = ("probe", "--collection", "derm", "--label-column", "diagnostic", "--fractions", "1")
    doc, res = same(both, *args)
    assert doc["split_by"] == "patient_id" and doc["warnings"] == []
    assert "warning:" not in res.stderr
    res = both[0](*args, "--split-by", "image", "--json")  # one mode: a probe takes seconds
    doc = json.loads(res.stdout)
    assert doc["split_by"] is None and len(doc["warnings"]) == 1
    assert "warning: split by image" in res.stderr and "inflated" in res.stderr
    assert "'patient_id'" in res.stderr


def test_index_declares_columns_and_missing_paths_exit_2(
    tmp_path: Path, cli_on: Any, derm_dir: Path
) -> None:
    images = tmp_path / "src" / "images"
    images.mkdir(parents=True)
    for p in sorted((derm_dir / "images").glob("*.jpg"))[:12]:
        shutil.copy(p, images / p.name)
    home = tmp_path / "home"
    cli = cli_on("local", home)
    base = ["index", str(images), "--collection", "d", "--manifest", str(derm_dir / "labels.csv")]
    base += ["--source-column", "filename", "--no-progress", "--encoder", "test/tiny-vit"]
    base += ["--allow-test-encoder"]
    res = cli(*base, "--patient-column", "ward", code=2)
    assert "--patient-column ward" in res.stderr and "patient_id" in res.stderr
    assert not (home / "collections" / "d").exists()  # refused before anything was created
    cli(*base, "--patient-column", "lesion_id", "--case-column", "img_id")
    doc = cli.json("collection", "columns", "d")["collection"]
    assert doc["declared"] == {
        "patient_column": "lesion_id",
        "case_column": "img_id",
        "lesion_column": None,
    }
    info = json.loads((home / "collections" / "d" / "collection.json").read_text())
    assert info["patient_column"] == "lesion_id" and info["case_column"] == "img_id"
    missing = tmp_path / "nowhere" / "x.jpg"
    res = cli("index", str(missing), "--collection", "d", code=2)
    assert str(missing) in res.stderr
    res = cli("search", "--collection", "d", "--image", str(missing), code=2)
    assert "x.jpg" in res.stderr and "does not exist" in res.stderr
    res = cli("search", "--collection", "d", "--tile-id", "0", "--group-by", "ward", code=2)
    assert "'ward' is not a column" in res.stderr and "lesion_id" in res.stderr
    # the other documented exit codes: 1 when some inputs failed (named), 2 for bad arguments
    broken = images / "zz_broken.jpg"
    broken.write_bytes(next(images.glob("PAT_*.jpg")).read_bytes()[:2000])
    res = cli(*base, code=1)
    assert "zz_broken.jpg" in res.stdout + res.stderr
    res = cli("probe", "--collection", "d", "--label-column", "ward", code=2)
    assert "unknown label column 'ward'" in res.stderr
    res = cli("export", "--collection", "d", "--label-column", "diagnostic", "--split-by", "ward",
              "--out", str(tmp_path / "x.parquet"), code=2)  # fmt: skip
    assert "split_by: 'ward' is not a column" in res.stderr
    assert not (tmp_path / "x.parquet").exists()
