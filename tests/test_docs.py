"""Documentation stays true to the code: every route, setting and command is documented."""

from __future__ import annotations

import re
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]


def _shape(path: str) -> str:
    """Route or documented path with every parameter written ``{}``."""
    return re.sub(r"\{\w*\}", "{}", re.sub(r"<(?:\w+:)?(\w+)>", "{}", path))


def test_every_route_is_documented() -> None:
    from lamina.api.app import create_app

    doc = _shape((REPO / "docs" / "api.md").read_text())
    app = create_app({"HOME": str(REPO / "nonexistent-home")})
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        assert f"`{_shape(rule.rule)}" in doc or f" {_shape(rule.rule)}" in doc, (
            f"{rule.rule} is not in docs/api.md"
        )


def test_every_setting_is_documented() -> None:
    from lamina.api.app import DEFAULTS

    doc = (REPO / "docs" / "api.md").read_text()
    for key in DEFAULTS:
        if key.startswith("JSON_"):
            continue
        assert f"`{key}`" in doc and f"`LAMINA_{key}`" in doc, key


def test_every_command_and_option_is_documented() -> None:
    from lamina.api.cli import cli

    doc = (
        (REPO / "docs" / "cli.md").read_text()
        + (REPO / "docs" / "api.md").read_text()
        + (REPO / "docs" / "worked-example.md").read_text()
    )
    ctx = click.Context(cli)
    for name, cmd in cli.commands.items():
        assert f"lamina {name}" in doc, f"command {name} is undocumented"
        commands = cmd.commands.values() if isinstance(cmd, click.Group) else [cmd]
        for sub in commands:
            for param in sub.get_params(ctx):
                for opt in getattr(param, "opts", []):
                    if opt.startswith("--") and opt not in ("--help",):
                        assert opt in doc, f"option {opt} of lamina {name} is undocumented"


def test_openapi_covers_every_route() -> None:
    from lamina.api.app import create_app

    app = create_app({"HOME": str(REPO / "nonexistent-home")})
    spec = app.test_client().get("/api/v1/openapi.json").get_json()
    paths = {_shape(p).removeprefix("/api/v1") for p in spec["paths"]}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1"):
            path = _shape(rule.rule).removeprefix("/api/v1")
            assert path in paths, f"{rule.rule} missing from openapi.json"
