"""A small registry of encoder builders, keyed by namespaced names (``path/...``).

Unlike timm, registering a key twice raises instead of warning, and asking for an
unknown key raises ``UnknownEncoderError`` listing what is available.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from encoders.config import EncoderConfig
from encoders.errors import DuplicateEncoderError, UnknownEncoderError

if TYPE_CHECKING:
    from encoders.base import Encoder

Builder = Callable[..., "Encoder"]


@dataclass(frozen=True)
class RegistryEntry:
    config: EncoderConfig
    builder: Builder


_REGISTRY: dict[str, RegistryEntry] = {}
NAMESPACES = ("path", "derm", "generic", "classic", "test")


def register_encoder(config: EncoderConfig) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(config, weights, device) -> Encoder`` under ``config.key``."""
    ns = config.key.split("/", 1)[0]
    if "/" not in config.key or ns not in NAMESPACES:
        raise ValueError(f"encoder key {config.key!r} must be namespaced, one of {NAMESPACES}")

    def decorate(builder: Builder) -> Builder:
        if config.key in _REGISTRY:
            raise DuplicateEncoderError(f"encoder {config.key!r} is already registered")
        _REGISTRY[config.key] = RegistryEntry(config=config, builder=builder)
        return builder

    return decorate


def unregister_encoder(key: str) -> None:
    """Remove an entry (used by tests that register temporary encoders)."""
    _REGISTRY.pop(key, None)


def get_entry(key: str) -> RegistryEntry:
    _ensure_loaded()
    try:
        return _REGISTRY[key]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownEncoderError(f"unknown encoder {key!r}; registered: {known}") from None


def get_config(key: str) -> EncoderConfig:
    return get_entry(key).config


def list_encoders(include_test: bool = True) -> list[EncoderConfig]:
    _ensure_loaded()
    out = [e.config for e in _REGISTRY.values() if include_test or not e.config.test_only]
    return sorted(out, key=lambda c: c.key)


_LOADED = False


def _ensure_loaded() -> None:
    """Import the modules whose decorators fill the registry (once)."""
    global _LOADED
    if _LOADED:
        return
    from encoders import classic, foundation, pathology_models, testing, timm_models  # noqa: F401

    _LOADED = True
