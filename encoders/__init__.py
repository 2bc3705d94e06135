"""Images -> vectors. Knows nothing of slides, FAISS, DuckDB or Flask.

>>> from lamina.encoders import create_encoder
>>> enc = create_encoder("classic/stain-texture")
>>> vectors = enc.embed(images)          # uint8 (n, h, w, 3) -> float32 (n, dim), L2 = 1
"""

from __future__ import annotations

import os

from lamina.encoders.base import Encoder, TorchEncoder, check_device, resolve_device
from lamina.encoders.config import EncoderConfig, WeightsSpec, fingerprint_of
from lamina.encoders.errors import (
    DuplicateEncoderError,
    EncoderError,
    InvalidImageBatchError,
    NoLocalEncoderError,
    TestEncoderRefusedError,
    UnknownEncoderError,
    WeightsMismatchError,
    WeightsNotFoundError,
)
from lamina.encoders.registry import (
    get_config,
    list_encoders,
    origin_of,
    plugin_errors,
    register_encoder,
)
from lamina.encoders.weights import find_weights, weights_locations

__all__ = [
    "DuplicateEncoderError",
    "Encoder",
    "EncoderConfig",
    "EncoderError",
    "InvalidImageBatchError",
    "NoLocalEncoderError",
    "TestEncoderRefusedError",
    "TorchEncoder",
    "UnknownEncoderError",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "WeightsSpec",
    "create_encoder",
    "device_for",
    "encoder_table",
    "fingerprint_of",
    "get_config",
    "list_encoders",
    "origin_of",
    "plugin_errors",
    "register_encoder",
    "resolve_device",
]


def create_encoder(
    key: str,
    weights: str | os.PathLike[str] | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    allow_test: bool = True,
) -> Encoder:
    """The one factory: build the registered encoder ``key`` on ``device``.

    ``weights`` is an explicit local weights file; otherwise LAMINA_WEIGHTS_DIR and the local
    Hugging Face cache are searched. ``allow_test=False`` refuses ``test/*`` entries.
    """
    from lamina.encoders.registry import get_entry

    entry = get_entry(key)
    if entry.config.test_only and not allow_test:
        raise TestEncoderRefusedError(
            f"{key} is a test encoder whose vectors mean nothing; pass --allow-test-encoder to use it"
        )
    kwargs: dict[str, object] = {
        "weights": None if weights is None else str(weights),
        "device": device_for(entry.runtime, device),
    }
    if batch_size:
        kwargs["batch_size"] = batch_size
    return entry.builder(entry.config, **kwargs)


def device_for(runtime: str, device: str) -> str:
    """The device handed to a builder: torch encoders resolve ``auto`` with torch; TensorFlow
    encoders get ``cuda`` for ``auto`` and use a GPU only where TensorFlow sees one; numpy
    encoders run on the CPU. So a weights-free encoder never imports torch."""
    if runtime == "torch":
        return resolve_device(device)
    check_device(device)
    if runtime == "numpy":
        return "cpu"
    return "cuda" if device == "auto" else device


def encoder_table() -> list[dict[str, object]]:
    """Rows for `lamina encoders`: key, modality, dims and whether weights are on this machine."""
    rows = []
    for cfg in list_encoders():
        if cfg.weights is None:
            available, where = True, "built in (no weights needed)"
        else:
            try:
                found = find_weights(cfg)
            except EncoderError:
                found = None
            available = found is not None
            where = str(found) if found else "missing: " + "; ".join(weights_locations(cfg))
        rows.append(
            {
                "key": cfg.key,
                "modality": cfg.modality,
                "embed_dim": cfg.embed_dim,
                "input_px": cfg.input_px,
                "mpp": cfg.mpp,
                "weights_available": available,
                "weights": where,
                "licence": cfg.licence,
                "test_only": cfg.test_only,
                "origin": origin_of(cfg.key),
                "description": cfg.description,
            }
        )
    return rows
