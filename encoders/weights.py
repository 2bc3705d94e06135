"""Finding and verifying local weight files and model folders. Nothing here touches the network.

A weights entry is either one file (a state dict) or, when its ``WeightsSpec.folder_marker`` is
set, a folder such as a TensorFlow SavedModel. Either way it is identified by a sha256: of the
file, or of the folder's model files (:func:`sha256_model_dir`), which the fingerprint binds to.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lamina.encoders.config import EncoderConfig
from lamina.encoders.errors import WeightsMismatchError, WeightsNotFoundError

WEIGHTS_DIR_ENV = "LAMINA_WEIGHTS_DIR"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


MODEL_DIR_PARTS = ("saved_model.pb", "keras_metadata.pb", "variables")
"""What in a SavedModel folder shapes its outputs (READMEs, .gitattributes and fingerprint.pb
do not, so a re-download or a copy with other extras keeps the same identity)."""


def sha256_model_dir(path: str | os.PathLike[str]) -> str:
    """sha256 over (relative path, sha256) of every model file of a SavedModel folder, sorted."""
    root = Path(path)
    files: list[Path] = []
    for part in MODEL_DIR_PARTS:
        p = root / part
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files.extend(f for f in p.rglob("*") if f.is_file())
    if not files:
        raise WeightsNotFoundError(f"{root} holds no model files ({', '.join(MODEL_DIR_PARTS)})")
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.relative_to(root).as_posix()):
        h.update(f"{f.relative_to(root).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def _folder_of(candidate: Path, marker: str) -> Path | None:
    """``candidate`` as a model folder: the folder holding ``marker``, or None."""
    if candidate.is_dir() and (candidate / marker).is_file():
        return candidate
    if candidate.is_file() and candidate.name == marker:
        return candidate.parent
    return None


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
    if spec.folder_marker:
        places = [
            "--weights DIR",
            f"${WEIGHTS_DIR_ENV}/{spec.filename}/ (a folder holding {spec.folder_marker})",
        ]
        if spec.hf_repo:
            places.append(f"Hugging Face cache: {spec.hf_repo} (snapshot folder)")
        return places
    places = ["--weights FILE", f"${WEIGHTS_DIR_ENV}/{spec.filename}"]
    if spec.hf_repo:
        places.append(f"Hugging Face cache: {spec.hf_repo}/{spec.hf_filename or spec.filename}")
    return places


def find_weights(
    config: EncoderConfig, explicit: str | os.PathLike[str] | None = None
) -> Path | None:
    """Return the first existing weights file (or model folder) for ``config``, or None."""
    spec = config.weights
    if spec is not None and spec.folder_marker:
        return _find_folder(config, explicit)
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


def _find_folder(config: EncoderConfig, explicit: str | os.PathLike[str] | None) -> Path | None:
    spec = config.weights
    assert spec is not None and spec.folder_marker
    marker = spec.folder_marker
    if explicit is not None:
        p = Path(explicit).expanduser()
        found = _folder_of(p, marker)
        if found is None:
            raise WeightsNotFoundError(
                f"{config.key}: {p} is not a model folder (no {marker} in it)"
            )
        return found
    wdir = os.environ.get(WEIGHTS_DIR_ENV)
    if wdir:
        found = _folder_of(Path(wdir).expanduser() / spec.filename, marker)
        if found is not None:
            return found
    if spec.hf_repo:
        hit = _hf_cached(spec.hf_repo, marker)
        if hit is not None:
            return hit.parent
    return None


def require_weights(
    config: EncoderConfig, explicit: str | os.PathLike[str] | None = None
) -> tuple[Path, str]:
    """Locate and verify weights; returns (path, sha256). Raises a helpful error if missing."""
    path = find_weights(config, explicit)
    spec = config.weights
    if path is None:
        assert spec is not None  # only called for entries that need weights
        where = "; ".join(weights_locations(config))
        if spec.folder_marker:
            put = (
                f"Then pass --weights DIR, or put the whole folder (with {spec.folder_marker} "
                f"and variables/) at ${WEIGHTS_DIR_ENV}/{spec.filename}/"
            )
        else:
            put = f"Then pass --weights FILE or put the file at ${WEIGHTS_DIR_ENV}/{spec.filename}"
        terms = f" Terms of use: {config.licence}." if config.licence else ""
        raise WeightsNotFoundError(
            f"{config.key} needs weights that are not on this machine. Looked in: {where}."
            f"{terms} To obtain them: {spec.obtain} {put}. Nothing is downloaded automatically."
        )
    digest = (
        sha256_model_dir(path) if spec is not None and spec.folder_marker else sha256_file(path)
    )
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
