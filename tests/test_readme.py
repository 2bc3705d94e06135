"""README.md's shell blocks run as written, so the README cannot drift from the code.

Every ```sh block is run, in order, by one bash process (so ``. .venv/bin/activate`` holds for
what follows), each command followed by a check of its exit status; a block is left out only
when the line above its fence says ``<!-- not run by tests/test_readme.py: REASON -->`` (a
server that runs until stopped, a server on a network). The commands run in a scratch folder
laid out like a checkout (``demo`` -> the repository's, ``../shared/data`` -> the shared data),
with ``HOME`` there too and no ``LAMINA_*`` variables, so the store is the default
``./lamina-data`` and nothing is written into the repository. ``.venv/bin/activate`` stands for
the environment running the tests.

Running the blocks takes about a minute on a 2-core machine (the quick start alone ~17 s), so
both runs are marked slow (CI runs them); finding and parsing the blocks is in the default suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SKIP = re.compile(r"<!-- not run by tests/test_readme\.py: (.+?) -->")


def sh_blocks(text: str) -> list[tuple[list[str], str | None]]:
    """The README's ```sh blocks: (commands with continuation lines joined, skip reason)."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```sh":
            skip = SKIP.search(lines[i - 1]) if i else None
            body = []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            blocks.append((commands(body), skip.group(1) if skip else None))
        i += 1
    return blocks


def commands(body: list[str]) -> list[str]:
    out: list[str] = []
    pending = ""
    for line in body:
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(pending + line.strip())
        pending = ""
    assert not pending, "a README command ends with a line continuation"
    return out


def workdir(tmp: Path) -> Path:
    """A folder where the README's relative paths mean what they mean in a checkout."""
    root = tmp / "checkout"
    root.mkdir()
    (root / "demo").symlink_to(REPO / "demo")
    from tests.conftest import SHARED

    (tmp / "shared").mkdir()
    (tmp / "shared" / "data").symlink_to(SHARED)
    (tmp / "home").mkdir()
    return root


def run_commands(cmds: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    bindir = Path(sys.executable).parent
    lines = ["set -u"]
    for n, cmd in enumerate(cmds):
        if cmd == ". .venv/bin/activate":
            cmd = f'export PATH="{bindir}:$PATH"'  # the environment running the tests
        lines.append(f'{cmd} || {{ echo "README-FAILED {n} exit $?" >&2; exit 1; }}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    env.update(HOME=str(cwd.parent / "home"), PATH=f"{bindir}:{env.get('PATH', '')}")
    return subprocess.run(
        ["bash", "-c", "\n".join(lines)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def check(proc: subprocess.CompletedProcess[str], cmds: list[str]) -> None:
    failed = re.search(r"README-FAILED (\d+) exit (\d+)", proc.stderr)
    assert failed is None, (
        f"README command failed with exit {failed.group(2)}: {cmds[int(failed.group(1))]}\n"
        + proc.stderr[-3000:]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


BLOCKS = sh_blocks(README.read_text())


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    cwd = workdir(tmp_path_factory.mktemp("readme"))
    cmds, skip = BLOCKS[0]
    assert skip is None
    proc = run_commands(cmds, cwd)
    check(proc, cmds)
    return cwd, proc.stdout


def test_readme_blocks_are_found() -> None:
    assert len(BLOCKS) >= 5
    first, _ = BLOCKS[0]
    assert first[0] == ". .venv/bin/activate" and first[1].startswith("lamina index demo/")
    for cmds, skip in BLOCKS:
        assert cmds, "an empty sh block"
        assert skip is not None or not any(" serve" in c for c in cmds), "serve would block"


@pytest.mark.slow
def test_quick_start_runs_as_written(quick_start: tuple[Path, str]) -> None:
    cwd, out = quick_start
    assert (cwd / "lamina-data" / "collections" / "derm").is_dir()
    assert "sound" in out  # lamina verify found the store sound
    assert '"hits"' in out  # the --json search printed its document


@pytest.mark.slow
def test_every_other_readme_block_runs_as_written(quick_start: tuple[Path, str]) -> None:
    cwd, _ = quick_start
    rest = [c for cmds, skip in BLOCKS[1:] if skip is None for c in cmds]
    assert any(c.startswith("lamina cohort create") for c in rest)
    check(run_commands(rest, cwd), rest)
