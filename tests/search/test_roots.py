"""The roots table: declaring, relocating, resolving stored paths, seen by another process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamina.search.errors import RootError, RootNotFoundError
from lamina.search.roots import Roots


def test_declare_relocate_resolve(tmp_path: Path) -> None:
    home, a, b, c = (tmp_path / n for n in ("home", "a/cases", "b/cases", "c/x"))
    for d in (a, b, c):
        d.mkdir(parents=True)
    roots = Roots(home)
    assert roots.declare(a) == "cases"
    assert roots.declare(a / "sub") == "cases"  # under a root: no new root
    assert roots.declare(b) == "cases-2"  # the name is taken by another folder
    assert roots.declare(c, "study") == "study"
    with pytest.raises(RootError, match="another folder"):
        roots.declare(a, "study")
    with pytest.raises(RootError, match="invalid root name"):
        roots.declare(a, "../x")
    stored = f"{a}/sub/p.jpg"
    assert (
        roots.resolve(stored) == stored and roots.resolve("/elsewhere/q.jpg") == "/elsewhere/q.jpg"
    )
    new = tmp_path / "moved" / "cases"
    new.mkdir(parents=True)
    out = roots.relocate("cases", new)
    assert out["root"] == "cases" and out["version"] == 4  # 3 roots declared, then this move
    assert roots.resolve(stored) == f"{new}/sub/p.jpg"
    assert roots.resolve(f"{a}x/p.jpg") == f"{a}x/p.jpg"  # a sibling folder is not under it
    newer = tmp_path / "newer"
    newer.mkdir()
    roots.relocate("cases", newer)  # moved twice: paths of both earlier places resolve
    assert roots.resolve(stored) == f"{newer}/sub/p.jpg"
    assert roots.resolve(f"{new}/sub/p.jpg") == f"{newer}/sub/p.jpg"
    with pytest.raises(RootNotFoundError, match=r"roots: cases, cases-2, study"):
        roots.relocate("nope", newer)
    with pytest.raises(RootError, match="not a folder"):
        roots.relocate("cases", tmp_path / "missing")
    doc = json.loads((home / "roots.json").read_text())
    assert doc["roots"]["cases"] == {"path": str(newer), "was": [str(a), str(new)]}
    assert [h.get("to") for h in doc["history"] if h["root"] == "cases"][-2:] == [
        str(new),
        str(newer),
    ]


def test_another_process_sees_a_relocation(tmp_path: Path) -> None:
    home, old, new = tmp_path / "home", tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    server, cli = Roots(home), Roots(home)  # two processes' views of one home
    cli.declare(old)
    assert server.resolve(f"{old}/a.jpg") == f"{old}/a.jpg"
    cli.relocate_prefix(old, new)
    assert server.resolve(f"{old}/a.jpg") == f"{new}/a.jpg"
    # a store indexed before roots: --from declares a root for the old folder
    legacy = tmp_path / "legacy-data"
    out = cli.relocate_prefix(legacy, new)
    assert out["root"] == "legacy-data" and server.resolve(f"{legacy}/b.jpg") == f"{new}/b.jpg"
    # a damaged table is not fatal: paths are read as stored
    (home / "roots.json").write_text("{not json")
    assert server.resolve(f"{old}/a.jpg") == f"{old}/a.jpg"
