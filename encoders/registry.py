"""A small registry of encoder builders, keyed by namespaced names (``path/...``).

Unlike timm, registering a key twice raises instead of warning, and asking for an
unknown key raises ``UnknownEncoderError`` listing what is available.

Plugins: an installed distribution adds encoders through the entry-point group
``lamina.encoders``. Each entry point names a module (importing it registers its encoders with
:func:`register_encoder`) or a callable taking no arguments that does. They are loaded the first
time any process (CLI, server, ingest worker) asks the registry for anything, after the built-in
encoders. A plugin that fails to load is skipped and its error kept (:func:`plugin_errors`,
``lamina encoders``, and the message of an unknown key); a plugin may not replace a built-in key
nor use the ``external/`` namespace, which names vectors imported from elsewhere.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lamina.encoders.config import EncoderConfig
from lamina.encoders.errors import DuplicateEncoderError, UnknownEncoderError

if TYPE_CHECKING:
    from lamina.encoders.base import Encoder

Builder = Callable[..., "Encoder"]


@dataclass(frozen=True)
class RegistryEntry:
    config: EncoderConfig
    builder: Builder
    origin: str = "built-in"
    """``built-in``, or ``plugin <distribution> <version>``."""
    runtime: str = "torch"
    """What runs the model: ``torch``, ``tensorflow`` or ``numpy``. Decides how ``device="auto"``
    is resolved, so that only torch encoders ever import torch."""


_REGISTRY: dict[str, RegistryEntry] = {}
NAMESPACES = ("path", "derm", "generic", "classic", "test")
"""Namespaces of the built-in encoders; plugins may add others."""
RESERVED_NAMESPACES = ("external",)
PLUGIN_GROUP = "lamina.encoders"
_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_PLUGIN_ERRORS: dict[str, str] = {}
_CURRENT_ORIGIN = "built-in"


RUNTIMES = ("torch", "tensorflow", "numpy")


def register_encoder(config: EncoderConfig, runtime: str = "torch") -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(config, weights, device) -> Encoder`` under ``config.key``.

    ``runtime`` names what runs the model (see :data:`RUNTIMES`); plugins default to torch.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    ns = config.key.split("/", 1)[0]
    if not _KEY_RE.match(config.key) or ns in RESERVED_NAMESPACES:
        raise ValueError(
            f"encoder key {config.key!r} must be namespaced, namespace/name (e.g. one of "
            f"{NAMESPACES} or your own; not {', '.join(RESERVED_NAMESPACES)})"
        )
    origin = _CURRENT_ORIGIN

    def decorate(builder: Builder) -> Builder:
        if config.key in _REGISTRY:
            raise DuplicateEncoderError(
                f"encoder {config.key!r} is already registered ({_REGISTRY[config.key].origin})"
            )
        _REGISTRY[config.key] = RegistryEntry(
            config=config, builder=builder, origin=origin, runtime=runtime
        )
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
        failed = "".join(f"; plugin {n} failed to load: {e}" for n, e in _PLUGIN_ERRORS.items())
        raise UnknownEncoderError(f"unknown encoder {key!r}; registered: {known}{failed}") from None


def get_config(key: str) -> EncoderConfig:
    return get_entry(key).config


def list_encoders(include_test: bool = True) -> list[EncoderConfig]:
    _ensure_loaded()
    out = [e.config for e in _REGISTRY.values() if include_test or not e.config.test_only]
    return sorted(out, key=lambda c: c.key)


def origin_of(key: str) -> str:
    """Where ``key`` comes from: ``built-in`` or the plugin that registered it."""
    return get_entry(key).origin


def plugin_errors() -> dict[str, str]:
    """Entry points of the ``lamina.encoders`` group that failed to load, with the error."""
    _ensure_loaded()
    return dict(_PLUGIN_ERRORS)


_READY = False
_LOADING = False
_LOCK = threading.RLock()


def _ensure_loaded() -> None:
    """Import the modules whose decorators fill the registry, then the plugins (once; other
    threads wait until it is done, a plugin asking the registry meanwhile sees what is there)."""
    global _READY, _LOADING
    if _READY:
        return
    with _LOCK:
        if _READY or _LOADING:
            return
        _LOADING = True
        try:
            from lamina.encoders import (  # noqa: F401
                classic,
                foundation,
                pathology_models,
                testing,
                timm_models,
            )

            _load_plugins()
            _READY = True
        finally:
            _LOADING = False


def _load_plugins() -> None:
    global _CURRENT_ORIGIN
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        who = f"{dist.name} {dist.version}" if dist is not None else ep.value
        _CURRENT_ORIGIN = f"plugin {who}"
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type):
                obj()
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the others
            # What it registered before failing stays: the module may be shared with another
            # entry point that would not register it again (modules are imported once).
            _PLUGIN_ERRORS[ep.name] = f"{type(exc).__name__}: {exc}"
        finally:
            _CURRENT_ORIGIN = "built-in"
