"""The two Dockerfiles, read as text (no container engine needed), against the repository.

Checked for both images: one user (``lamina``, uid 1000) that the image switches to; a
HEALTHCHECK that asks, with Python's standard library, a route the app really serves on the
port the default command listens on; every package folder of pyproject.toml copied in; the
install extras are those docker/README.md documents; nothing mentions slide label or macro
images or associated images.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
FILES = ("Dockerfile.cpu", "Dockerfile.gpu")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def of(path: Path, word: str) -> list[str]:
    return [args for w, args in instructions(path) if w == word]


@pytest.mark.parametrize("name", FILES)
def test_one_user_uid_1000_and_the_image_runs_as_it(name: str) -> None:
    path = DOCKER / name
    runs = " ".join(of(path, "RUN"))
    assert re.search(r"useradd [^&;]*--uid 1000 [^&;]*\blamina\b", runs), runs
    users = of(path, "USER")
    assert users and users[-1] == "lamina"
    # the user is switched to after the last RUN (nothing after it runs as root)
    words = [w for w, _ in instructions(path)]
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
    assert "chown lamina" in runs and "/data" in runs


@pytest.mark.parametrize("name", FILES)
def test_healthcheck_asks_a_real_route_on_the_served_port(name: str, tmp_path: Path) -> None:
    path = DOCKER / name
    (check,) = of(path, "HEALTHCHECK")
    assert "CMD" in check and "urllib.request" in check and "curl" not in check
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\S+?)'", check)
    assert url, check
    port, route = url.group(1), url.group(2)
    (cmd,) = of(path, "CMD")
    assert f'"--port", "{port}"' in cmd and port in of(path, "EXPOSE")
    from lamina.api.app import create_app

    app = create_app({"HOME": str(tmp_path / "home")})
    response = app.test_client().get(route)
    assert response.status_code == 200 and response.get_json()["ok"] is True


@pytest.mark.parametrize("name", FILES)
def test_every_package_folder_is_copied_and_installed_with_the_documented_extras(
    name: str,
) -> None:
    path = DOCKER / name
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = {d.split("/")[0] for d in project["tool"]["setuptools"]["package-dir"].values()}
    copied = {part for args in of(path, "COPY") for part in args.split()[:-1]}
    missing = (folders | {"pyproject.toml", "README.md"}) - copied
    assert not missing, f"{name} does not copy {sorted(missing)}"
    for src in copied:
        assert (REPO / src).exists(), f"{name} copies {src}, which does not exist"
    installs = re.findall(r'pip install "?\.\[([a-z,]+)\]"?', " ".join(of(path, "RUN")))
    assert installs == ["server,torch"], installs
    extras = set(project["project"]["optional-dependencies"])
    assert set(installs[0].split(",")) <= extras
    readme = (DOCKER / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}`"))
    assert f'pip install ".[{installs[0]}]"' in row


@pytest.mark.parametrize("name", FILES)
def test_no_label_macro_or_associated_images(name: str) -> None:
    text = (DOCKER / name).read_text().lower()
    for word in ("macro", "label image", "associated"):
        assert word not in text


def test_readme_documents_uid_healthcheck_and_read_only_slide_mounts() -> None:
    readme = (DOCKER / "README.md").read_text()
    assert "uid 1000" in readme and "HEALTHCHECK" in readme and "/api/v1/health" in readme
    assert ":ro" in readme and "same path" in readme
    for name in FILES:
        assert "/slides:/slides:ro" in (DOCKER / name).read_text()
