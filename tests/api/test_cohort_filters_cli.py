"""Repeated ``--filter`` on one column: every condition holds (they are ANDed), for
`lamina cohort create`, the cohort's recorded definition, and `lamina export` / `lamina probe`
on that cohort. Run twice (``cli_mode``): in process on the home, and with --url against a real
`lamina serve` on it. The expected members come from the photos' labels.csv, not the server."""

from __future__ import annotations

import csv
import hashlib
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
    h = tmp_path_factory.mktemp(f"cohort-filters-{cli_mode}") / "home"
    shutil.copytree(derm_home / "collections", h / "collections")
    return h


@pytest.fixture(scope="module")
def lamina(home: Path, cli_for: Any) -> Any:
    return cli_for(home)


def _ages() -> tuple[dict[str, int], list[int]]:
    """(photo file name -> age, one age per distinct photo content: a file indexed twice under
    two names is one source), for the rows of labels.csv with an age."""
    by_name: dict[str, int] = {}
    by_content: dict[str, int] = {}
    with open(DERM_DIR / "labels.csv") as fh:
        for r in csv.DictReader(fh):
            if r["age"].strip():
                data = (DERM_DIR / r["filename"]).read_bytes()
                by_name[Path(r["filename"]).name] = int(r["age"])
                by_content[hashlib.sha256(data).hexdigest()] = int(r["age"])
    return by_name, list(by_content.values())


def _create(lamina: Any, name: str, *filters: str) -> dict[str, Any]:
    args = [a for f in filters for a in ("--filter", f)]
    doc = lamina.json("cohort", "create", name, "--collection", "derm", *args)
    return dict(doc["cohort"])


def test_two_conditions_on_one_column_both_hold(lamina: Any, tmp_path: Path) -> None:
    ages, distinct = _ages()
    n70 = sum(a >= 70 for a in distinct)
    n60 = sum(a >= 60 for a in distinct)
    assert 0 < n70 < n60  # the second condition alone would select more

    for order in (("age>=70", "age>=60"), ("age>=60", "age>=70")):
        cohort = _create(lamina, "old", *order)
        assert cohort["n_tiles"] == n70, order
        assert cohort["definition"]["filter"] == [
            {"age": {"gte": order[0].split(">=")[1]}},
            {"age": {"gte": order[1].split(">=")[1]}},
        ]
    # with an example image the request is multipart: the expressions still all hold
    photo = next(DERM_DIR / "images" / n for n, a in ages.items() if a >= 70)
    near = lamina.json(
        "cohort", "create", "old-near", "--collection", "derm", "--near", str(photo),
        "--k", str(n60), "--filter", "age>=70", "--filter", "age>=60",
    )["cohort"]  # fmt: skip
    assert near["n_tiles"] == n70 and near["definition"]["filter"] == [
        {"age": {"gte": "70"}},
        {"age": {"gte": "60"}},
    ]
    # a window on one column (two operators): one JSON object holds it
    window = _create(lamina, "sixties", "age>=60", "age<70")
    assert window["n_tiles"] == n60 - n70
    assert window["definition"]["filter"] == {"age": {"gte": "60", "lt": "70"}}
    # two value lists on one column: their intersection
    both = _create(lamina, "mel", "diagnostic=MEL,BCC", "diagnostic=MEL,NEV")
    shown = lamina.json("cohort", "show", "mel", "--label-column", "diagnostic")["cohort"]
    per_label = shown["counts"]["per_label"]["diagnostic"]
    assert [r["value"] for r in per_label] == ["MEL"] and per_label[0]["n"] == both["n_tiles"] > 0

    out = tmp_path / "old.csv"
    lamina(
        "export",
        "--collection",
        "derm",
        "--cohort",
        "old",
        "--label-column",
        "diagnostic",
        "--out",
        str(out),
    )
    with open(out) as fh:
        exported = [Path(r["source"]).name for r in csv.DictReader(fh)]
    assert len(exported) == n70
    assert all(ages[name] >= 70 for name in exported)

    report = lamina.json(
        "probe",
        "--collection",
        "derm",
        "--cohort",
        "old",
        "--label-column",
        "diagnostic",
        "--fractions",
        "1",
    )
    used = report["n_train"] + report["n_test"] + (report.get("n_dropped_null_label") or 0)
    assert used == n70, json.dumps({k: v for k, v in report.items() if k.startswith("n_")})


def test_a_bad_filter_is_a_usage_error(lamina: Any) -> None:
    for expr, said in (("age", "cannot parse filter 'age'"), ("nope>=1", "unknown filter column")):
        res = lamina("cohort", "create", "bad", "--collection", "derm", "--filter", expr, code=2)
        assert said in res.stderr and "Traceback" not in res.stderr
    assert "bad" not in lamina("cohort", "list").stdout
