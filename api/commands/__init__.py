"""CLI commands, one module per command group; each exposes ``register(cli)``."""

from __future__ import annotations

from types import ModuleType


def extra_commands() -> list[ModuleType]:
    """Command modules beyond the core four (serve, cohort, export, probe), when present."""
    import importlib

    out = []
    names = ("serve", "cohorts", "exports", "probes", "compact", "integrity", "qc", "edits")
    for name in (*names, "roots"):
        try:
            out.append(importlib.import_module(f"lamina.api.commands.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"lamina.api.commands.{name}":
                raise
    return out
