"""`lamina encoders|index|status|search` end to end on the real PAD-UFES-20 photos.

The store queries (status, search) run twice (``cli_mode``): as `lamina --home H ...` and as
`lamina --url U ...` against a real `lamina serve` on H, each in a subprocess; `index` is
local by nature and runs with --home in both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

LAMINA = [sys.executable, "-m", "lamina.api"]


def run(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*LAMINA, "--home", str(home), *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}")
    return proc


def ask(cli: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`lamina ARGS` in a subprocess on ``cli.home``: with --home, or in url mode with --url
    of the server on that home (and a --home that does not exist)."""
    if cli.mode == "url":
        return run(cli.home.parent / "no-such-home", "--url", cli.url, *args, check=check)
    return run(cli.home, *args, check=check)


@pytest.fixture(scope="module")
def spine(derm_home: Path, cli_for: Any) -> Any:
    """The module's derm home in this run's mode."""
    return cli_for(derm_home)


@pytest.fixture(scope="module")
def derm_home(tmp_path_factory: pytest.TempPathFactory, derm_dir: Path) -> Path:
    home = tmp_path_factory.mktemp("cli-home")
    proc = run(
        home,
        "index",
        str(derm_dir / "images"),
        "--manifest",
        str(derm_dir / "labels.csv"),
        "--source-column",
        "filename",
        "--collection",
        "derm",
        "--encoder",
        "classic/stain-texture",
        "--json",
    )
    report = json.loads(proc.stdout)
    # 686 photos holding one byte-identical pair: 685 indexed, the twin reported as duplicate
    assert report["indexed"] == 685 and report["failed"] == [] and report["ok"] is True
    assert len(report["duplicates"]) == 1
    assert "indexing derm" in proc.stderr  # progress on stderr, JSON alone on stdout
    return home


def test_rerun_adds_nothing(derm_home: Path, derm_dir: Path) -> None:
    proc = run(
        derm_home,
        "index",
        str(derm_dir / "images"),
        "--manifest",
        str(derm_dir / "labels.csv"),
        "--source-column",
        "filename",
        "--collection",
        "derm",
        "--json",
    )
    report = json.loads(proc.stdout)
    assert report["indexed"] == 0 and report["unchanged"] == 685 and report["segments"] == []


def test_status(spine: Any) -> None:
    doc = json.loads(ask(spine, "status", "--json").stdout)
    (col,) = doc["collections"]
    assert col["name"] == "derm" and col["encoder"] == "classic/stain-texture"
    assert col["tiles"] == 685 and col["sources"] == 685 and col["index_type"] == "Flat"
    assert col["fingerprint"].startswith("classic/stain-texture@")
    assert len(col["last_runs"]) >= 1
    assert "derm" in ask(spine, "status").stdout


def test_search_by_image_finds_itself(spine: Any, derm_dir: Path) -> None:
    photo = derm_dir / "images" / "PAT_46_881_939.jpg"
    doc = json.loads(
        ask(
            spine, "search", "--collection", "derm", "--image", str(photo), "-k", "5", "--json"
        ).stdout
    )
    assert doc["ok"] is True and doc["collection"] == "derm" and doc["snapshot"]
    assert len(doc["hits"]) == 5
    top = doc["hits"][0]
    assert Path(top["source"]).name == photo.name and top["score"] >= 0.999
    assert set(top) >= {
        "tile_id",
        "score",
        "source_id",
        "source",
        "x",
        "y",
        "size_px",
        "mpp",
        "metadata",
    }
    assert top["metadata"]["patient_id"] == "PAT_46"


def search_json(cli: Any, *args: str) -> dict[str, Any]:
    """`lamina search --collection derm ARGS --json`, parsed."""
    return json.loads(ask(cli, "search", "--collection", "derm", *args, "--json").stdout)


def test_search_filters(spine: Any, derm_dir: Path) -> None:
    photo = str(derm_dir / "images" / "PAT_46_881_939.jpg")
    doc = search_json(spine, "--image", photo, "-k", "5", "--filter", "diagnostic=MEL")
    assert len(doc["hits"]) == 5 and {h["metadata"]["diagnostic"] for h in doc["hits"]} == {"MEL"}
    doc = search_json(
        spine,
        "--image",
        photo,
        "-k",
        "50",
        "--filter",
        "diagnostic=MEL,BCC",
        "--filter",
        "age>=60",
    )
    assert len(doc["hits"]) == 50
    assert all(
        h["metadata"]["diagnostic"] in ("MEL", "BCC") and h["metadata"]["age"] >= 60
        for h in doc["hits"]
    )


def test_search_by_tile_and_grouping(spine: Any) -> None:
    doc = json.loads(
        ask(
            spine,
            "search",
            "--collection",
            "derm",
            "--tile-id",
            "7",
            "-k",
            "4",
            "--group-by",
            "patient",
            "--exclude-same",
            "patient_id",
            "--json",
        ).stdout
    )
    assert len(doc["groups"]) == 4
    own = json.loads(
        ask(spine, "search", "--collection", "derm", "--tile-id", "7", "-k", "1", "--json").stdout
    )["hits"][0]
    assert own["tile_id"] == 7 and own["score"] >= 0.999
    assert all(g["value"] != own["metadata"]["patient_id"] for g in doc["groups"])
    text = ask(spine, "search", "--collection", "derm", "--tile-id", "7", "-k", "3").stdout
    assert "snapshot" in text and text.count("tile ") >= 3


def test_usage_errors_exit_2(derm_home: Path, spine: Any, derm_dir: Path) -> None:
    photo = str(derm_dir / "images" / "PAT_46_881_939.jpg")
    p = ask(spine, "search", "--collection", "nope", "--image", photo, check=False)
    assert p.returncode == 2 and "does not exist" in p.stderr
    p = ask(
        spine,
        "search",
        "--collection",
        "derm",
        "--image",
        photo,
        "--filter",
        "nope=1",
        "--json",
        check=False,
    )
    assert p.returncode == 2 and json.loads(p.stdout)["code"] == "INVALID_FILTER"
    p = ask(spine, "search", "--collection", "derm", check=False)
    assert p.returncode == 2 and "exactly one" in p.stderr
    p = run(
        derm_home, "index", photo, "--collection", "t", "--encoder", "test/tiny-vit", check=False
    )
    assert p.returncode == 2 and "--allow-test-encoder" in p.stderr
    p = run(
        derm_home,
        "index",
        photo,
        "--collection",
        "derm",
        "--encoder",
        "test/tiny-vit",
        "--allow-test-encoder",
        check=False,
    )
    assert p.returncode == 2 and "uses classic/stain-texture" in p.stderr


def test_failed_inputs_exit_1(tmp_path: Path, bad_images: dict[str, Path], cli_for: Any) -> None:
    p = run(
        tmp_path / "h",
        "index",
        str(bad_images["empty"].parent),
        "--collection",
        "bad",
        "--json",
        check=False,
    )
    assert p.returncode == 1
    report = json.loads(p.stdout)
    assert len(report["failed"]) == 4 and report["indexed"] == 0
    p = ask(cli_for(tmp_path / "h"), "status", "--json")
    failures = json.loads(p.stdout)["collections"][0]["failures"]
    assert {Path(f["file"]).name for f in failures} == {b.name for b in bad_images.values()}


def test_encoders_command() -> None:
    p = subprocess.run([*LAMINA, "encoders", "--json"], capture_output=True, text=True, check=True)
    rows = {r["key"]: r for r in json.loads(p.stdout)["encoders"]}
    assert rows["classic/stain-texture"]["weights_available"] is True
    assert rows["derm/bit_resnet101x3"]["embed_dim"] == 6144
    p = subprocess.run([*LAMINA, "encoders"], capture_output=True, text=True, check=True)
    assert "path/vit_small_patch16" in p.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "lamina"
    assert script.is_file()
    assert (
        "index"
        in subprocess.run(
            [str(script), "--help"], capture_output=True, text=True, check=True
        ).stdout
    )


def test_unreachable_server_is_a_clean_error(tmp_path: Path) -> None:
    p = subprocess.run(
        [
            *LAMINA,
            "--url",
            "http://127.0.0.1:9",
            "search",
            "--collection",
            "derm",
            "--tile-id",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert json.loads(p.stdout)["code"] == "UNREACHABLE"


def test_explicit_tile_px_tiles_photos(tmp_path: Path, derm_dir: Path) -> None:
    photo = str(derm_dir / "images" / "PAT_46_881_939.jpg")
    plain = json.loads(run(tmp_path / "a", "index", photo, "--collection", "p", "--json").stdout)
    tiled = json.loads(
        run(
            tmp_path / "b", "index", photo, "--collection", "p", "--tile-px", "150", "--json"
        ).stdout
    )
    assert plain["tiles"] == 1 and tiled["tiles"] == 1 + 4


def test_status_drops_failures_fixed_by_a_later_run(
    tmp_path: Path, derm_dir: Path, cli_for: Any
) -> None:
    import shutil

    target = tmp_path / "late.jpg"
    missing = run(tmp_path / "h", "index", str(target), "--collection", "c", check=False)
    assert missing.returncode == 2 and str(target) in missing.stderr  # a usage error
    target.write_bytes(b"not a photo yet")  # an unreadable file: a failure the run records
    assert (
        run(tmp_path / "h", "index", str(target), "--collection", "c", check=False).returncode == 1
    )
    home = cli_for(tmp_path / "h")
    failures = json.loads(ask(home, "status", "--json").stdout)["collections"][0]["failures"]
    assert [Path(f["file"]).name for f in failures] == ["late.jpg"]
    shutil.copy(derm_dir / "images" / "PAT_46_881_939.jpg", target)
    run(tmp_path / "h", "index", str(target), "--collection", "c")
    col = json.loads(ask(home, "status", "--json").stdout)["collections"][0]
    assert col["failures"] == [] and col["tiles"] == 1


def test_index_factory_can_be_changed_without_reembedding(
    derm_home: Path, spine: Any, derm_dir: Path
) -> None:
    photo = str(derm_dir / "images" / "PAT_46_881_939.jpg")
    bad = run(
        derm_home,
        "index",
        photo,
        "--collection",
        "derm",
        "--index-factory",
        "Nope12",
        "--json",
        check=False,
    )
    assert bad.returncode == 2 and json.loads(bad.stdout)["code"] == "INVALID_INDEX_FACTORY"
    report = json.loads(
        run(
            derm_home, "index", photo, "--collection", "derm", "--index-factory", "HNSW32", "--json"
        ).stdout
    )
    assert report["indexed"] == 0  # nothing re-embedded
    col = json.loads(ask(spine, "status", "--json").stdout)["collections"][0]
    assert col["index_type"] == "HNSW32"
    doc = search_json(spine, "--image", photo, "-k", "5", "--filter", "diagnostic=MEL")
    assert len(doc["hits"]) == 5 and {h["metadata"]["diagnostic"] for h in doc["hits"]} == {"MEL"}
    top = search_json(spine, "--image", photo, "-k", "1")["hits"][0]
    assert Path(top["source"]).name == "PAT_46_881_939.jpg"
    run(derm_home, "index", photo, "--collection", "derm", "--index-factory", "Flat")
