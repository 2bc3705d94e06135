"""One behaviour local and remote: every store command of the CLI, run on one home both in
process (``--home``) and through a real `lamina serve` on that home (``--url``), gives the
same ``--json`` document, less the fields listed in conftest.VOLATILE (clocks, ids, this process's
memory, where the answer came from)."""

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
    home = tmp_path_factory.mktemp("modes") / "home"
    shutil.copytree(derm_home / "collections", home / "collections")
    with served_home(home) as server:
        yield cli_on("local", home), cli_on("url", home, server.url)


def same(both: tuple[Any, Any], *args: str, code: int = 0) -> dict[str, Any]:
    """Run ``lamina ARGS --json`` both ways; assert the documents agree; -> the local one."""
    local, remote = both
    a, b = local.json(*args, code=code), remote.json(*args, code=code)
    assert stable(a) == stable(b), args
    return a  # type: ignore[no-any-return]


def test_status_and_collection_show(both: tuple[Any, Any]) -> None:
    doc = same(both, "status")
    assert [c["name"] for c in doc["collections"]] == ["derm"]
    assert doc["collections"][0]["tiles"] > 600 and doc["collections"][0]["last_runs"]
    assert same(both, "status", "--collection", "derm")["collections"][0]["snapshot"]
    shown = same(both, "collection", "show", "derm")["collection"]
    assert shown["index_factory"] == "Flat" and shown["index"]["state"] == "exact"
    err = same(both, "collection", "show", "nope", code=2)
    assert err["code"] == "COLLECTION_NOT_FOUND"


def test_search_every_query_kind(both: tuple[Any, Any], derm_images: list[Path]) -> None:
    doc = same(both, "search", "--collection", "derm", "--tile-id", "7", "-k", "5")
    assert doc["hits"][0]["tile_id"] == 7 and len(doc["hits"]) == 5
    local, remote = both
    for args in (("search", "--collection", "derm", "--tile-id", "7"), ("status",)):
        assert local(*args).stdout == remote(*args).stdout, args  # the same text too
    doc = same(both, "search", "--collection", "derm", "--image", str(derm_images[3]), "-k", "3")
    assert Path(doc["hits"][0]["source"]).name == derm_images[3].name
    assert not Path(doc["hits"][0]["source"]).is_absolute()  # no server path, either way
    doc = same(
        both,
        "search",
        "--collection",
        "derm",
        "--tile-id",
        "7",
        "-k",
        "6",
        "--filter",
        "diagnostic=BCC,MEL",
        "--exclude-same",
        "patient_id",
    )
    assert {h["metadata"]["diagnostic"] for h in doc["hits"]} <= {"BCC", "MEL"}
    err = same(
        both, "search", "--collection", "derm", "--tile-id", "7", "--filter", "nope=1", code=2
    )
    assert err["code"] == "INVALID_FILTER"
    err = same(both, "search", "--collection", "nope", "--tile-id", "7", code=2)
    assert err["code"] == "COLLECTION_NOT_FOUND"


def test_cohorts_versions_and_label_column(both: tuple[Any, Any]) -> None:
    local, remote = both
    one = local.json(
        "cohort", "create", "mel", "--collection", "derm", "--filter", "diagnostic=MEL"
    )
    two = remote.json(
        "cohort", "create", "mel", "--collection", "derm", "--filter", "diagnostic=MEL,BCC"
    )
    assert (one["cohort"]["version"], two["cohort"]["version"]) == (1, 2)
    first = same(both, "cohort", "show", "mel", "--version", "1")["cohort"]
    assert first["version"] == 1 and first["n_tiles"] == one["cohort"]["n_tiles"]
    latest = same(both, "cohort", "show", "mel")["cohort"]
    assert latest["version"] == 2 and latest["n_tiles"] == two["cohort"]["n_tiles"]
    per = same(both, "cohort", "show", "mel", "--label-column", "diagnostic")["cohort"]
    assert list(per["counts"]["per_label"]) == ["diagnostic"]
    assert {r["value"] for r in per["counts"]["per_label"]["diagnostic"]} == {"MEL", "BCC"}
    listed = same(both, "cohort", "list")["cohorts"]
    assert [(c["name"], c["version"]) for c in listed] == [("mel", 2)]
    assert local("cohort", "show", "mel", "--version", "1").stdout == (
        remote("cohort", "show", "mel", "--version", "1").stdout
    )
    assert remote.json("cohort", "delete", "mel") == {"ok": True, "deleted": "mel"}
    err = same(both, "cohort", "show", "mel", code=2)
    assert err["code"] == "COHORT_NOT_FOUND"


def test_probe(both: tuple[Any, Any]) -> None:
    doc = same(
        both,
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
    assert doc["label_column"] == "diagnostic" and len(doc["fractions"]) == 2


def test_export_files_and_csv_sidecar(both: tuple[Any, Any], tmp_path: Path) -> None:
    local, remote = both
    docs, outs = [], []
    for runner, name in ((local, "local"), (remote, "url")):
        out = tmp_path / name / "set.csv"
        docs.append(
            runner.json(
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
        )
        outs.append(out)
    assert stable(docs[0]) == stable(docs[1])
    assert docs[0]["meta"]["n_rows"] > 0 and docs[0]["export"]["rows"] == docs[0]["meta"]["n_rows"]
    assert outs[0].read_bytes() == outs[1].read_bytes()  # the same file, byte for byte
    sidecars = [json.loads(Path(str(o) + ".meta.json").read_text()) for o in outs]
    assert stable(sidecars[0]) == stable(sidecars[1]) == stable(docs[0]["meta"])
    assert "/" not in str(docs[0]["export"].get("path") or "")  # no path of this machine


def test_collection_set_and_compact(both: tuple[Any, Any]) -> None:
    local, remote = both
    a = local.json("collection", "set", "derm", "--nprobe", "3")["collection"]
    b = remote.json("collection", "set", "derm", "--nprobe", "3")["collection"]
    assert stable(a) == stable(b) and a["index_params"] == {"nprobe": 3}
    err = same(both, "collection", "set", "derm", "--index-factory", "Nope12", code=2)
    assert err["code"] == "INVALID_INDEX_FACTORY"
    # compaction changes the store: the second run finds what the first one left
    first = local.json("compact", "--collection", "derm", "--no-progress")["collections"][0]
    then = remote.json("compact", "--collection", "derm", "--no-progress")["collections"][0]
    assert set(first) == set(then) and then["segments_before"] == first["segments_after"] == 1
    assert then["merged"] == [] and then["tiles"] == first["tiles"]
    assert same(both, "status")["collections"][0]["segments"] == 1


def test_local_by_nature_commands_refuse_url(both: tuple[Any, Any], tmp_path: Path) -> None:
    _, remote = both
    res = remote(
        "import", str(tmp_path / "x.h5"), "--collection", "c", "--encoder-name", "e", code=2
    )
    assert "import_embeddings" in res.stderr
    for args in (
        ("collection", "build", "derm"),
        ("index", str(tmp_path), "--collection", "c"),
        ("verify", "derm"),
        ("repair", "derm"),
    ):
        res = remote(*args, code=2)
        assert "does not take --url" in res.stderr, args


def test_columns_annotate_roots_and_qc(both: tuple[Any, Any], derm_images: list[Path]) -> None:
    from tests.api.conftest import DERM_DIR

    roles = same(both, "collection", "columns", "derm")["collection"]
    assert roles["patient_column"] == "patient_id"
    manifest = str(DERM_DIR / "labels.csv")
    args = ("annotate", "--collection", "derm", "--manifest", manifest)
    doc = same(both, *args, "--source-column", "filename")  # as indexed: nothing changes
    assert doc["changed"] == [] and doc["matched_sources"] > 600
    assert "roots" in same(both, "relocate", "--list")
    err = same(both, "qc", str(derm_images[0]), "--collection", "derm", code=2)
    assert err["code"] == "NO_SLIDE_QC"  # a photo: slides only


def test_delete_and_drop(both: tuple[Any, Any], synthetic: Any) -> None:
    import numpy as np

    local, remote = both
    rng = np.random.default_rng(0)
    for name in ("gone-a", "gone-b"):
        synthetic(local.home, name, {f"s{i}": rng.normal(size=(3, 8)) for i in range(4)}, 8)
    a = local.json("delete", "--collection", "gone-a", "s1", "--yes")
    b = remote.json("delete", "--collection", "gone-b", "s1", "--yes")
    assert stable(rename(a, "gone-a")) == stable(rename(b, "gone-b"))
    a = local.json("drop", "gone-a", "--yes")
    b = remote.json("drop", "gone-b", "--yes")
    assert stable(rename(a, "gone-a")) == stable(rename(b, "gone-b"))
    assert [c["name"] for c in same(both, "status")["collections"]] == ["derm"]


def rename(doc: Any, name: str) -> Any:
    """``doc`` with the collection name ``name`` written COLLECTION and without its snapshot
    id (two collections built alike have different ones), to compare runs on two of them."""
    doc = json.loads(json.dumps(doc).replace(json.dumps(name), '"COLLECTION"'))
    return {k: v for k, v in doc.items() if k != "snapshot"}
