"""What a new user meets first: usage errors under --json, a busy port, and ``==`` in filters."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lamina.api.cli import cli

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "derm"


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.stdout, res.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("search", "--collection", "derm", "-k", "abc", "--json"), "'-k'"),
        (("search", "--collection", "derm", "--image", "no-such.jpg", "--json"), "no-such.jpg"),
        (("--json-typo", "status", "--json"), "--json-typo"),
        (("status", "--bogus", "--json"), "--bogus"),
        (("cohort", "show", "--json"), "NAME"),
    ],
)
def test_usage_error_with_json_prints_a_json_error(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    code, out, err = run("--home", str(tmp_path / "home"), *args)
    assert code == 2
    doc = json.loads(out)
    assert doc["ok"] is False and doc["code"] == "USAGE_ERROR" and doc["status"] == 400
    assert says in doc["error"]
    assert "Error:" in err and says in err  # the usual message stays on stderr


def test_usage_error_without_json_prints_nothing_on_stdout(tmp_path: Path) -> None:
    code, out, err = run("--home", str(tmp_path / "home"), "search", "-k", "abc")
    assert code == 2 and out == "" and "'-k'" in err


def test_serve_on_a_busy_port_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "lamina", "--home", str(tmp_path / "home"), "serve"]
            + ["--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: port ") and "already in use" in lines[0]
    assert "--port" in lines[0] and "serving" not in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 demo photos and their labels, indexed with the classic encoder."""
    root = tmp_path_factory.mktemp("usage")
    images = root / "images"
    images.mkdir()
    for src in sorted((DEMO / "images").glob("*.jpg"))[:12]:
        shutil.copy(src, images / src.name)
    home = root / "home"
    code, _, err = run(
        "--home",
        str(home),
        "index",
        str(images),
        "--manifest",
        str(DEMO / "labels.csv"),
        "--source-column",
        "filename",
        "--collection",
        "derm",
        "--no-progress",
    )
    assert code == 0, err
    return home


def _hits(home: Path, expr: str) -> list[int]:
    args = ("search", "--collection", "derm", "--tile-id", "0", "-k", "12", "--json")
    code, out, err = run("--home", str(home), *args, "--filter", expr)
    assert code == 0, err
    return [hit["tile_id"] for hit in json.loads(out)["hits"]]


def test_double_equals_filter_is_the_same_as_equals(demo_home: Path) -> None:
    single = _hits(demo_home, "diagnostic=ACK,BCC")
    assert single, "the filter matches some of the indexed photos"
    assert len(single) < 12, "and not all of them"
    assert _hits(demo_home, "diagnostic==ACK,BCC") == single
    assert _hits(demo_home, "diagnostic == ACK,BCC") == single
