"""Roots: a moved data folder is `lamina relocate`, not a re-index; re-indexing the same bytes
at a new path moves the sources. Real slide (CMU-1-Small-Region.svs) and PAD-UFES-20 photos,
the real Flask app and the CLI through its one client path."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from lamina.api.cli import cli

ENC = ["--encoder", "test/tiny-vit", "--allow-test-encoder", "--no-progress"]


def lamina(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def _folder(base: Path, derm_dir: Path, slides_dir: Path, slide: bool = True) -> Path:
    folder = base / "data" / "cases"
    (folder / "skin").mkdir(parents=True)
    for p in sorted((derm_dir / "images").glob("*.jpg"))[:3]:
        shutil.copy(p, folder / "skin" / p.name)
    if slide:
        shutil.copy(slides_dir / "CMU-1-Small-Region.svs", folder / "CMU-1-Small-Region.svs")
    return folder


def _index(home: Path, folder: Path, *extra: str) -> dict[str, Any]:
    result = lamina(home, "index", str(folder), "--collection", "c", *ENC, *extra, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _app(home: Path) -> Any:
    from lamina.api.app import create_app

    return create_app({"HOME": str(home), "TESTING": True, "API_TOKEN": None}).test_client()


def _rows(home: Path) -> list[dict[str, Any]]:
    from lamina.search import SearchService, Store

    view = SearchService(Store(home)).view("c")
    return view.sql("SELECT tile_id, source_id, source, kind, x, y FROM tiles ORDER BY tile_id")


def _reads(client: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Status and body of a slide tile image, a photo thumbnail and a region search."""
    tile = next(r for r in rows if r["kind"] == "tile")
    photo = next(r for r in rows if r["kind"] == "photo")
    region = {"slide": tile["source_id"], "x": tile["x"], "y": tile["y"], "w": 224, "h": 224}
    return {
        "tile": client.get(f"/api/v1/tiles/{tile['tile_id']}/image?collection=c"),
        "thumb": client.get(f"/api/v1/sources/{photo['source_id']}/thumbnail?collection=c"),
        "region": client.post("/api/v1/collections/c/search", json={"region": region, "k": 2}),
        "dzi": client.get(f"/api/v1/collections/c/sources/{tile['source_id']}/dzi"),
        "tile_id": tile["tile_id"],
    }


def test_moved_folder_is_relocated_not_reindexed(
    tmp_path: Path, derm_dir: Path, slides_dir: Path
) -> None:
    home = tmp_path / "home"
    folder = _folder(tmp_path, derm_dir, slides_dir)
    report = _index(home, folder)
    assert report["roots"] == ["cases"] and report["indexed"] == 4
    rows = _rows(home)
    segments = sorted(os.listdir(home / "collections" / "c" / "segments"))
    before = _reads(_app(home), rows)
    assert {k: before[k].status_code for k in ("tile", "thumb", "region", "dzi")} == dict.fromkeys(
        ("tile", "thumb", "region", "dzi"), 200
    )

    moved = tmp_path / "archive" / "2024" / "cases"
    moved.parent.mkdir(parents=True)
    os.rename(folder, moved)
    gone = _reads(_app(home), rows)
    for key in ("tile", "thumb", "region", "dzi"):  # a clear 404, never a 5xx
        assert gone[key].status_code == 404, (key, gone[key].get_json())
        assert gone[key].get_json()["code"] == "SOURCE_FILE_MISSING"
        assert str(tmp_path) not in gone[key].get_data(as_text=True)  # no server paths shown

    result = lamina(home, "relocate", "cases", str(moved), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["root"] == "cases" and out["sources"] == out["found"] == 4 and not out["missing"]
    after = _reads(_app(home), rows)
    assert after["tile"].status_code == 200 and after["tile"].data == before["tile"].data
    assert after["thumb"].status_code == 200 and after["thumb"].data == before["thumb"].data
    assert after["region"].status_code == 200
    assert after["region"].get_json()["hits"][0]["tile_id"] == before["tile_id"]
    assert after["dzi"].status_code == 200
    # a metadata change: no segment written, tile ids and vectors as they were
    assert sorted(os.listdir(home / "collections" / "c" / "segments")) == segments
    assert _rows(home) == rows
    status = json.loads(lamina(home, "status", "--json").stdout)["collections"][0]
    assert status["changed_sources"]["gone"] == 0 and status["sources"] == 4
    # indexing the folder at its new place finds everything committed
    again = _index(home, moved)
    assert again["indexed"] == 0 and again["unchanged"] == 4 and again["moved"] == []
    text = lamina(home, "relocate", "--list").stdout
    assert "cases: present, earlier folders: 1" in text


def test_relocate_errors_and_stores_indexed_before_roots(
    tmp_path: Path, derm_dir: Path, slides_dir: Path
) -> None:
    home = tmp_path / "home"
    folder = _folder(tmp_path, derm_dir, slides_dir, slide=False)
    _index(home, folder, "--root", f"derm={folder.parent}")
    assert json.loads((home / "roots.json").read_text())["roots"]["derm"]["path"] == str(
        folder.parent
    )
    (home / "roots.json").unlink()  # as a store written before roots existed
    new = tmp_path / "new-place"
    os.rename(folder.parent, new)
    result = lamina(home, "relocate", "nope", str(new), "--json")
    assert result.exit_code == 2 and json.loads(result.stdout)["code"] == "ROOT_NOT_FOUND"
    result = lamina(home, "relocate", "--from", str(tmp_path / "elsewhere"), "--to", str(new))
    assert result.exit_code == 2 and "no indexed source is under" in result.stderr
    result = lamina(home, "relocate", "--from", str(folder.parent), "--to", str(new / "x"))
    assert result.exit_code == 2 and "is not a folder" in result.stderr
    result = lamina(home, "relocate", "--from", str(folder.parent), "--to", str(new), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["found"] == 3
    client = _app(home)
    photo = _rows(home)[0]
    r = client.get(f"/api/v1/sources/{photo['source_id']}/thumbnail?collection=c")
    assert r.status_code == 200
    r = client.post("/api/v1/roots/relocate", json={"root": "data", "to": "relative/path"})
    assert r.status_code == 422 and r.get_json()["code"] == "INVALID_ROOT"
    r = client.post("/api/v1/roots/relocate", json={"to": str(new)})
    assert r.status_code == 422 and r.get_json()["code"] == "INVALID_QUERY"
    with pytest.raises(AssertionError):  # --root must hold what is indexed
        _index(home, new, "--root", f"other={tmp_path / 'home'}")


def test_reindexing_a_copy_moves_sources(tmp_path: Path, derm_dir: Path, slides_dir: Path) -> None:
    home = tmp_path / "home"
    folder = _folder(tmp_path, derm_dir, slides_dir)
    first = _index(home, folder)
    rows = _rows(home)
    copy = tmp_path / "copy" / "cases-2024"
    shutil.copytree(folder, copy)  # bytes identical, another path (and mtimes kept)
    second = _index(home, copy)
    assert second["indexed"] == 0 and second["tiles"] == 0
    assert len(second["moved"]) == 4 and not second["duplicates"]
    assert {Path(m["from"]).parent.name for m in second["moved"]} == {"cases", "skin"}
    now = _rows(home)
    assert [r["tile_id"] for r in now] == [r["tile_id"] for r in rows]  # same vectors and ids
    assert len(now) == first["tiles"] and len({r["source_id"] for r in now}) == 4
    assert all(r["source"].startswith(str(copy)) for r in now)
    shutil.rmtree(folder)  # the old copy may go: everything is read from the new one
    reads = _reads(_app(home), now)
    assert reads["tile"].status_code == 200 and reads["thumb"].status_code == 200
    text = lamina(home, "index", str(copy), "--collection", "c", *ENC).stdout
    assert "4 unchanged" in text and "0 moved, 0 duplicates" in text
