"""`lamina annotate`, `lamina delete`, `lamina compact --erase` and `lamina drop` end to end,
in process (``--home``) and through a real `lamina serve` (``--url``), on the real
PAD-UFES-20 collection: corrected labels match pandas on the manifest exactly (filters, probe,
export); a deleted photo leaves searches at once, its cohort says so, and after compaction no
file under the home holds its vector (float32 or float16 bytes) or its metadata strings."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

DERM_DIR = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "derm" / "pad_ufes20_subset"
)


def _stable(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _stable(v) for k, v in doc.items() if k not in {"snapshot", "seconds", "ms"}}
    if isinstance(doc, list):
        return [_stable(v) for v in doc]
    return doc


def _cli_on_copy(
    mode: str, derm_home: Path, tmp_path: Path, served_home: Any, cli_on: Any
) -> Iterator[Any]:
    home = tmp_path / "home"
    shutil.copytree(derm_home / "collections", home / "collections")
    if mode == "local":
        yield cli_on("local", home)
        return
    with served_home(home) as server:
        yield cli_on("url", home, server.url)


@pytest.fixture(params=["local", "url"])
def cli(
    request: pytest.FixtureRequest, derm_home: Path, tmp_path: Path, served_home: Any, cli_on: Any
) -> Iterator[Any]:
    """The CLI on a private copy of the derm collection, in process and through a server."""
    yield from _cli_on_copy(request.param, derm_home, tmp_path, served_home, cli_on)


@pytest.fixture(params=["local", pytest.param("url", marks=pytest.mark.slow)])
def cli_probing(
    request: pytest.FixtureRequest, derm_home: Path, tmp_path: Path, served_home: Any, cli_on: Any
) -> Iterator[Any]:
    """As ``cli``; the server run of the probe-heavy test (about 40 s) is in the slow suite."""
    yield from _cli_on_copy(request.param, derm_home, tmp_path, served_home, cli_on)


def _truth() -> pd.DataFrame:
    df = pd.read_csv(DERM_DIR / "labels.csv")
    df["name"] = df["filename"].map(lambda f: Path(f).name)
    return df.set_index("name")


def _names(hits: list[dict[str, Any]]) -> set[str]:
    return {Path(str(h["source"])).name for h in hits}


def _indexed(cli: Any) -> set[str]:
    res = cli.json("search", "--collection", "derm", "--tile-id", "0", "-k", "10000")
    return _names(res["hits"])


def test_annotate_corrects_labels_exactly(cli_probing: Any, tmp_path: Path) -> None:
    cli = cli_probing
    truth = _truth()
    # (a byte-identical copy at a second path may be one source with two names: the indexed
    # file names are the truth's rows that the collection holds)
    truth = truth.loc[sorted(_indexed(cli))]
    probe_args = ("probe", "--collection", "derm", "--label-column", "diagnostic",
                  "--split-by", "patient_id")  # fmt: skip
    reference = cli.json(*probe_args)
    # a wrong manifest: the diagnoses shuffled
    wrong = pd.read_csv(DERM_DIR / "labels.csv")
    wrong["diagnostic"] = wrong["diagnostic"].to_numpy()[
        np.random.default_rng(3).permutation(len(wrong))
    ]
    wrong.to_csv(tmp_path / "wrong.csv", index=False)
    annotate = ("annotate", "--collection", "derm", "--source-column", "filename", "--manifest")
    doc = cli.json(*annotate, str(tmp_path / "wrong.csv"))
    moved = {n for n in truth.index if truth.loc[n, "diagnostic"] != wrong.set_index(
        wrong["filename"].map(lambda f: Path(f).name)).loc[n, "diagnostic"]}  # fmt: skip
    assert {Path(c["source"]).name for c in doc["changed"]} == moved
    assert doc["unmatched_sources"] == 0

    # corrected with the real manifest: every change reported old -> new
    doc = cli.json(*annotate, str(DERM_DIR / "labels.csv"))
    changed = {Path(c["source"]).name: c["changes"] for c in doc["changed"]}
    assert set(changed) == moved
    for name, changes in changed.items():
        assert changes == {
            "diagnostic": {
                "old": wrong.set_index("filename").loc[truth.loc[name, "filename"], "diagnostic"],
                "new": truth.loc[name, "diagnostic"],
            }
        }
    text = cli(*annotate, str(DERM_DIR / "labels.csv")).stdout
    assert "0 sources changed" in text and f"{len(truth)} unchanged" in text

    # filters: exactly pandas' rows of the corrected manifest
    for label in ("MEL", "SCC"):
        res = cli.json("search", "--collection", "derm", "--tile-id", "0", "-k", "1000",
                       "--filter", f"diagnostic={label}")  # fmt: skip
        assert _names(res["hits"]) == set(truth.index[truth["diagnostic"] == label])
    # the probe: the same report as before the wrong manifest, class counts as pandas
    probe = cli.json(*probe_args)
    assert _stable(probe) == _stable(reference)
    counts = {c: n["train"] + n["test"] for c, n in probe["class_counts"].items()}
    assert counts == truth["diagnostic"].value_counts().to_dict()
    # the export: one row per photo, labels as pandas
    out = tmp_path / "export.parquet"
    cli("export", "--collection", "derm", "--label-column", "diagnostic", "--out", str(out))
    table = pq.read_table(out).to_pandas()
    got = dict(zip(table["source"].map(lambda s: Path(s).name), table["label"], strict=True))
    assert got == truth["diagnostic"].to_dict()
    # split by patient (the default with a patient column): no patient on both sides
    assert table.groupby("patient")["split"].nunique().max() == 1


def _victim() -> pd.Series:
    """A photo whose patient id appears in no other row of the manifest (its own row names
    it four times: file name, patient_id, img_id, filename)."""
    truth = _truth()
    text = " ".join(f"{n} {r.patient_id} {r.img_id} {r.filename}" for n, r in truth.iterrows())
    for name, row in truth.iterrows():
        if text.count(str(row["patient_id"])) == 4:
            return row.rename(name)
    raise AssertionError("no photo with a unique patient id")


def test_delete_then_erase_leaves_no_trace(cli: Any, tmp_path: Path) -> None:
    victim = _victim()
    name = str(victim.name)
    hit = cli.json("search", "--collection", "derm", "--tile-id", "0", "-k", "1000",
                   "--filter", f"img_id={victim['img_id']}")  # fmt: skip
    [row] = hit["hits"]
    tile_id = int(row["tile_id"])
    cli("cohort", "create", "same-dx", "--collection", "derm",
        "--filter", f"diagnostic={victim['diagnostic']}")  # fmt: skip
    n_members = cli.json("cohort", "show", "same-dx")["cohort"]["n_tiles"]
    vec = _vector_of(cli.home, tile_id)

    # no terminal and no --yes: refused, nothing deleted
    res = cli("delete", "--collection", "derm", name, code=2)
    assert "--yes" in res.stderr
    missing = cli.json("delete", "--collection", "derm", "no-such.jpg", "--yes", code=2)
    assert missing["code"] == "SOURCE_NOT_FOUND"
    doc = cli.json("delete", "--collection", "derm", name, "--yes")
    assert [Path(d["source"]).name for d in doc["deleted"]] == [name] and doc["tiles"] == 1

    # gone from searches at once; a query by its id is a clear not-found
    res = cli.json("search", "--collection", "derm", "--tile-id", "1", "-k", "1000")
    assert tile_id not in {h["tile_id"] for h in res["hits"]} and name not in _names(res["hits"])
    err = cli.json("search", "--collection", "derm", "--tile-id", str(tile_id), code=2)
    assert err["code"] == "TILE_NOT_FOUND" and "deleted" in err["error"]
    # its tile, tile image and thumbnail routes answer 404 too
    from lamina.api.client import NotFound

    client = _client(cli)
    for fetch in (
        lambda: client.tile(tile_id, "derm"),
        lambda: client.tile_image(tile_id, "derm"),
        lambda: client.thumbnail(str(row["source_id"]), "derm"),
    ):
        with pytest.raises(NotFound):
            fetch()
    # the cohort says a member was deleted; its export leaves it out with a warning
    record = cli.json("cohort", "show", "same-dx")["cohort"]
    assert record["deleted_members"] == 1 and record["n_tiles"] == n_members
    assert "1 members deleted" in cli("cohort", "show", "same-dx").stdout
    out = tmp_path / "cohort.parquet"
    cli("export", "--collection", "derm", "--cohort", "same-dx", "--label-column", "diagnostic",
        "--out", str(out))  # fmt: skip
    meta = json.loads(pq.read_schema(out).metadata[b"lamina"])
    assert any("deleted" in w for w in meta["warnings"])
    assert tile_id not in pq.read_table(out).column("tile_id").to_pylist()

    summary = cli.json("compact", "--collection", "derm", "--erase")
    assert summary["collections"][0]["erased_tiles"] == 1
    needles = {
        "float32 vector": vec.astype("<f4").tobytes(),
        "float16 vector": vec.astype("<f2").tobytes(),
        "file stem": Path(name).stem.encode(),
        "patient id": str(victim["patient_id"]).encode(),
    }
    files = [Path(r) / f for r, _, fs in os.walk(cli.home) for f in fs]
    kinds = {f.suffix for f in files}
    assert {".parquet", ".f32", ".json"} <= kinds
    if cli.mode == "url":  # the server's audit log is searched too
        assert any(f.name.startswith("audit.jsonl") for f in files)
    for f in files:
        data = f.read_bytes()
        for what, needle in needles.items():
            assert needle not in data, f"{what} of the deleted photo found in {f}"


def _client(cli: Any) -> Any:
    """A client to the same API the CLI talks to (the server, or the in-process app)."""
    from lamina.api.client import Client
    from lamina.api.local import LOCAL_URL, inprocess_transport, local_app

    if cli.mode == "url":
        return Client(cli.url, token="")
    return Client(LOCAL_URL, token="", transport=inprocess_transport(local_app(cli.home)))


def _vector_of(home: Path, tile_id: int) -> np.ndarray:
    from lamina.search import SearchService, Store

    view = SearchService(Store(home)).view("derm")
    return view.tile_vectors([tile_id])[0]


def test_drop_removes_the_collection_and_its_cohorts(cli: Any) -> None:
    cli("cohort", "create", "mel", "--collection", "derm", "--filter", "diagnostic=MEL")
    res = cli("drop", "derm", code=2)
    assert "--yes" in res.stderr
    assert (cli.home / "collections" / "derm").is_dir()
    doc = cli.json("drop", "derm", "--yes")
    assert doc["dropped"] == "derm" and doc["cohorts_deleted"] == ["mel"]
    assert not (cli.home / "collections" / "derm").exists()
    assert cli.json("drop", "derm", "--yes", code=2)["code"] == "COLLECTION_NOT_FOUND"
    assert cli.json("cohort", "list")["cohorts"] == []


def test_bad_requests_are_clear_and_change_nothing(cli: Any, tmp_path: Path) -> None:
    before = cli.json("status")["collections"][0]["tiles"]
    err = cli.json("annotate", "--collection", "nope", "--manifest",
                   str(DERM_DIR / "labels.csv"), code=2)  # fmt: skip
    assert err["code"] == "COLLECTION_NOT_FOUND"
    bad = tmp_path / "bad.csv"
    bad.write_text("name,diagnostic\nx.jpg,MEL\n")
    err = cli.json("annotate", "--collection", "derm", "--manifest", str(bad), code=2)
    assert "file" in err["error"] and "bad.csv" in err["error"]
    bad.write_text("file,diagnostic\nnot-indexed.jpg,MEL\n")
    err = cli.json("annotate", "--collection", "derm", "--manifest", str(bad), code=2)
    assert err["code"] == "INVALID_MANIFEST" and "nothing was changed" in err["error"]
    assert cli("delete", "--collection", "derm", "--yes", code=2).stderr
    err = cli.json("delete", "--collection", "derm", "--filter", "tissue_fraction>0", "--yes",
                   code=2)  # fmt: skip
    assert err["code"] == "INVALID_QUERY" and "tissue_fraction" in err["error"]
    assert cli.json("status")["collections"][0]["tiles"] == before
