"""`lamina collection set|build|show`, `lamina index --index-factory/--nprobe/--vector-dtype`
and `lamina search --nprobe/--strategy/--explain`, in process on real PAD-UFES-20 photos.

`collection set|show` and `search` run twice (``cli_mode``): on the home, and with --url against
a real `lamina serve` on it (``cli_for``); `index` and `collection build` are local by nature."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from lamina.api.cli import cli


def lamina(home: Path, *args: str, code: int = 0) -> Result:
    res = CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    return res


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, derm_images: list[Path]) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for f in derm_images[:24]:
        shutil.copy(f, folder / f.name)
    return folder


def _index(home: Path, target: Path | str, *extra: str, code: int = 0) -> Result:
    return lamina(
        home, "index", str(target), "--collection", "c", "--no-progress", *extra, code=code
    )


def test_index_builds_the_index_and_keeps_the_dtype(
    tmp_path: Path, photos: Path, cli_for: Any
) -> None:
    home = tmp_path / "h"
    args = ("--vector-dtype", "float16", "--index-factory", "IVF4", "--nprobe", "2", "--json")
    report = json.loads(_index(home, photos, *args).stdout)
    assert report["indexed"] == 24
    ann = report["ann_index"]
    assert ann["factory"] == "IVF4" and ann["trained"] and ann["tiles_indexed"] == 24
    shown = json.loads(cli_for(home)("collection", "show", "c", "--json").stdout)["collection"]
    assert shown["vector_dtype"] == "float16" and shown["index_params"] == {"nprobe": 2}
    assert shown["index"]["state"] == "ready" and shown["index"]["tiles_indexed"] == 24
    dim = json.loads((home / "collections" / "c" / "collection.json").read_text())["embed_dim"]
    (vectors,) = (home / "collections" / "c" / "segments").rglob("vectors.*")
    assert vectors.name == "vectors.f16" and vectors.stat().st_size == 24 * dim * 2

    refused = _index(home, photos, "--vector-dtype", "float32", "--json", code=2)
    err = json.loads(refused.stdout)
    assert err["code"] == "COLLECTION_CONFLICT" and "float16" in err["error"]
    again = json.loads(_index(home, photos, "--vector-dtype", "float16", "--json").stdout)
    assert again["indexed"] == 0 and again["ann_index"]["segments_indexed"] == 0


def test_search_params_and_explain(tmp_path: Path, photos: Path, cli_for: Any) -> None:
    home = tmp_path / "h"
    _index(home, photos, "--index-factory", "IVF4")
    query = ("search", "--collection", "c", "--tile-id", "3", "-k", "5")
    exact = json.loads(cli_for(home)(*query, "--strategy", "exact", "--json").stdout)
    assert exact["plan"]["strategy"] == "exact" and exact["plan"]["index"] == "IVF4"
    full = json.loads(cli_for(home)(*query, "--strategy", "ann", "--nprobe", "4", "--json").stdout)
    assert full["plan"]["strategy"] == "ann" and full["plan"]["nprobe"] == 4
    assert full["plan"]["candidates"] == 24  # every list probed: every tile scored
    assert [h["tile_id"] for h in full["hits"]] == [h["tile_id"] for h in exact["hits"]]
    text = cli_for(home)(*query, "--strategy", "ann", "--nprobe", "1", "--explain")
    assert text.stdout.startswith("collection c") and "plan: ann over index IVF4" in text.stderr
    assert "nprobe 1" in text.stderr and "ms: filter" in text.stderr
    assert "plan:" not in cli_for(home)(*query).stderr  # only with --explain
    bad = cli_for(home)(*query, "--nprobe", "0", code=2)
    assert "--nprobe" in bad.stderr


def test_collection_set_build_show(
    tmp_path: Path, photos: Path, derm_images: list[Path], cli_for: Any
) -> None:
    home = tmp_path / "h"
    _index(home, photos)
    shown = json.loads(cli_for(home)("collection", "show", "c", "--json").stdout)["collection"]
    assert shown["index_factory"] == "Flat" and shown["index"]["state"] == "exact"
    assert shown["vector_dtype"] == "float32"

    cli_for(home)("collection", "set", "c", "--index-factory", "IVF4", "--refine", "5")
    text = cli_for(home)("collection", "show", "c").stdout
    assert "index IVF4" in text and "index none: 0/1 segments" in text and "refine=5" in text

    built = lamina(home, "collection", "build", "c")
    assert "training IVF4" in built.stderr and "indexing c" in built.stderr
    assert "IVF4 version" in built.stdout and "1 segments, 24 tiles indexed" in built.stdout
    doc = json.loads(lamina(home, "collection", "build", "c", "--json").stdout)
    assert doc["build"]["segments_indexed"] == 0 and not doc["build"]["trained"]
    version = doc["collection"]["index"]["version"]
    doc = json.loads(lamina(home, "collection", "build", "c", "--rebuild", "--json").stdout)
    assert doc["build"]["trained"] and doc["collection"]["index"]["version"] != version
    assert doc["collection"]["index"]["state"] == "ready"

    # `lamina index` ends by indexing its new segment into the current version
    report = json.loads(_index(home, derm_images[30], "--json").stdout)
    assert report["indexed"] == 1 and not report["ann_index"]["trained"]
    assert report["ann_index"]["segments_indexed"] == 1
    state: dict[str, Any] = json.loads(cli_for(home)("collection", "show", "c", "--json").stdout)
    assert state["collection"]["index"]["state"] == "ready"
    assert state["collection"]["index"]["segments_indexed"] == state["collection"]["segments"] == 2


def test_collection_errors(tmp_path: Path, photos: Path, cli_for: Any) -> None:
    home = tmp_path / "h"
    _index(home, photos)
    assert "give --index-factory" in cli_for(home)("collection", "set", "c", code=2).stderr
    bad = cli_for(home)("collection", "set", "c", "--index-factory", "Nope9", "--json", code=2)
    assert json.loads(bad.stdout)["code"] == "INVALID_INDEX_FACTORY"
    lost = cli_for(home)("collection", "show", "nope", "--json", code=2)
    assert json.loads(lost.stdout)["code"] == "COLLECTION_NOT_FOUND"
    remote = lamina(home, "--url", "http://127.0.0.1:9", "collection", "build", "c", code=2)
    assert "does not take --url" in remote.stderr
    # more lists than vectors: the build says so; `lamina index` reports it and still succeeds
    cli_for(home)("collection", "set", "c", "--index-factory", "IVF64")
    err = json.loads(lamina(home, "collection", "build", "c", "--json", code=2).stdout)
    assert err["code"] == "INVALID_INDEX_FACTORY" and "at least 64" in err["error"]
    report = json.loads(_index(home, photos, "--json").stdout)
    assert "at least 64" in report["ann_index"]["error"] and report["ok"]
