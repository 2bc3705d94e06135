"""Frozen per-encoder configuration and the fingerprint of everything that shapes its output."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class WeightsSpec:
    """Where an encoder's weights come from. Nothing is ever downloaded."""

    filename: str
    """File name looked up in LAMINA_WEIGHTS_DIR (and the default name for --weights)."""
    sha256: str | None = None
    """Expected sha256 of the file when it is known; checked on load."""
    hf_repo: str | None = None
    """Hugging Face repository whose *local cache* is searched (never the network)."""
    hf_filename: str | None = None
    """File inside that repository."""
    obtain: str = ""
    """Human instructions: where a user gets the file and under which licence."""
    folder_marker: str | None = None
    """When set, the weights are a folder (e.g. a TensorFlow SavedModel) recognised by this file
    inside it (``saved_model.pb``); ``filename`` is then the folder's name in the weights dir
    and ``hf_repo`` is found through this file in the local Hugging Face cache."""


@dataclass(frozen=True)
class EncoderConfig:
    """Everything that defines one registered encoder."""

    key: str
    modality: str
    architecture: str
    embed_dim: int
    input_px: int
    mpp: float | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    licence: str = ""
    weights: WeightsSpec | None = None
    description: str = ""
    model_kwargs: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    test_only: bool = False
    code_version: str = "1"
    """Bumped whenever the code that turns pixels into vectors changes for this entry."""

    @property
    def namespace(self) -> str:
        return self.key.split("/", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model_kwargs"] = dict(self.model_kwargs)
        return d


def fingerprint_of(config: EncoderConfig, weights_id: str) -> str:
    """Stable hash of what changes the output vectors: code, preprocessing and weights.

    ``weights_id`` is the sha256 of the weights file actually loaded, or a
    description of a deterministic initialisation (``seed=0``) or ``none``.
    """
    payload = {
        "key": config.key,
        "architecture": config.architecture,
        "embed_dim": config.embed_dim,
        "input_px": config.input_px,
        "mean": [round(float(v), 6) for v in config.mean],
        "std": [round(float(v), 6) for v in config.std],
        "model_kwargs": sorted((k, repr(v)) for k, v in config.model_kwargs),
        "code_version": config.code_version,
        "weights": weights_id,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return config.key + "@" + hashlib.sha256(blob).hexdigest()[:16]
