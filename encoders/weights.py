"""Finding and verifying local weight files. Nothing here touches the network."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from encoders.config import EncoderConfig
from encoders.errors import WeightsMismatchError, WeightsNotFoundError

WEIGHTS_DIR_ENV = "LAMINA_WEIGHTS_DIR"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _hf_cached(repo: str, filename: str) -> Path | None:
    """Path of ``filename`` in the local Hugging Face cache, without any network access."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    found = try_to_load_from_cache(repo_id=repo, filename=filename)
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def weights_locations(config: EncoderConfig) -> list[str]:
    """Human-readable list of the places searched for this encoder's weights."""
    spec = config.weights
    if spec is None:
        return []
    places = ["--weights FILE", f"${WEIGHTS_DIR_ENV}/{spec.filename}"]
    if spec.hf_repo:
        places.append(f"Hugging Face cache: {spec.hf_repo}/{spec.hf_filename or spec.filename}")
    return places


def find_weights(
    config: EncoderConfig, explicit: str | os.PathLike[str] | None = None
) -> Path | None:
    """Return the first existing weights file for ``config``, or None."""
    spec = config.weights
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"{config.key}: weights file {p} does not exist")
        return p
    if spec is None:
        return None
    wdir = os.environ.get(WEIGHTS_DIR_ENV)
    if wdir:
        p = Path(wdir).expanduser() / spec.filename
        if p.is_file():
            return p
    if spec.hf_repo:
        return _hf_cached(spec.hf_repo, spec.hf_filename or spec.filename)
    return None


def require_weights(
    config: EncoderConfig, explicit: str | os.PathLike[str] | None = None
) -> tuple[Path, str]:
    """Locate and verify weights; returns (path, sha256). Raises a helpful error if missing."""
    path = find_weights(config, explicit)
    if path is None:
        spec = config.weights
        assert spec is not None  # only called for entries that need weights
        where = "; ".join(weights_locations(config))
        raise WeightsNotFoundError(
            f"{config.key} needs weights that are not on this machine. Looked in: {where}. "
            f"To obtain them: {spec.obtain} Then pass --weights FILE or put the file at "
            f"${WEIGHTS_DIR_ENV}/{spec.filename}. Nothing is downloaded automatically."
        )
    digest = sha256_file(path)
    spec = config.weights
    if spec is not None and spec.sha256 and explicit is None and digest != spec.sha256:
        raise WeightsMismatchError(
            f"{config.key}: {path} has sha256 {digest}, expected {spec.sha256}"
        )
    if spec is not None and spec.sha256 and explicit is not None and digest != spec.sha256:
        raise WeightsMismatchError(
            f"{config.key}: --weights {path} has sha256 {digest}, expected {spec.sha256} "
            "(a different checkpoint would silently change every vector)"
        )
    return path, digest


def load_state_dict(path: Path) -> dict:
    """Load a state dict from .safetensors, .pt/.pth/.bin (weights_only) or .npz files."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "teacher"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise WeightsMismatchError(f"{path}: not a state dict")
    return obj
