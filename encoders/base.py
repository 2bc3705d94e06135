"""The encoder interface: batches of uint8 RGB images in, L2-normalised float32 vectors out."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from lamina.encoders.config import EncoderConfig, fingerprint_of
from lamina.encoders.errors import InvalidImageBatchError

ImageBatch = np.ndarray | Sequence[np.ndarray]


def check_device(device: str) -> str:
    """``device`` itself when it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; else ValueError."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    return device


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible to torch, else ``cpu`` (imports torch)."""
    if check_device(device) != "auto":
        return device
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def resize_rgb(image: np.ndarray, size_px: int) -> np.ndarray:
    """Resize one HxWx3 uint8 image to size_px x size_px (antialiased bilinear)."""
    if image.shape[0] == size_px and image.shape[1] == size_px:
        return image
    pil = Image.fromarray(image)
    return np.asarray(pil.resize((size_px, size_px), Image.Resampling.BILINEAR, reducing_gap=None))


def as_batch(images: ImageBatch, size_px: int) -> np.ndarray:
    """Validate images and stack them into one (n, size_px, size_px, 3) uint8 array."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        arr = images
        if arr.dtype != np.uint8 or arr.shape[-1] != 3:
            raise InvalidImageBatchError(
                f"expected uint8 images of shape (n, h, w, 3), got {arr.dtype} {arr.shape}"
            )
        if arr.shape[1] == size_px and arr.shape[2] == size_px:
            return np.ascontiguousarray(arr)
        return np.stack([resize_rgb(im, size_px) for im in arr])
    out = []
    for i, im in enumerate(images):
        if (
            not isinstance(im, np.ndarray)
            or im.dtype != np.uint8
            or im.ndim != 3
            or im.shape[2] != 3
        ):
            desc = f"{im.dtype} {im.shape}" if isinstance(im, np.ndarray) else type(im).__name__
            raise InvalidImageBatchError(f"image {i}: expected a uint8 (h, w, 3) array, got {desc}")
        out.append(resize_rgb(im, size_px))
    if not out:
        return np.zeros((0, size_px, size_px, 3), np.uint8)
    return np.stack(out)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (vectors / norms).astype(np.float32, copy=False)


class Encoder(abc.ABC):
    """One loaded encoder. Subclasses implement :meth:`_embed_batch`."""

    def __init__(
        self,
        config: EncoderConfig,
        weights_id: str,
        device: str = "cpu",
        batch_size: int = 64,
        weights_path: str | None = None,
    ) -> None:
        self.config = config
        self.weights_id = weights_id
        self.weights_path = weights_path
        self.device = device
        self.batch_size = batch_size
        self.fingerprint = fingerprint_of(config, weights_id)

    @property
    def key(self) -> str:
        return self.config.key

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def input_px(self) -> int:
        return self.config.input_px

    def embed(self, images: ImageBatch, batch_size: int | None = None) -> np.ndarray:
        """Embed uint8 RGB images (any size; resized to ``input_px``) -> (n, dim) float32, L2 = 1."""
        batch = as_batch(images, self.config.input_px)
        bs = batch_size or self.batch_size
        if len(batch) == 0:
            return np.zeros((0, self.config.embed_dim), np.float32)
        parts = [self._embed_batch(batch[i : i + bs]) for i in range(0, len(batch), bs)]
        out = l2_normalise(np.concatenate(parts, axis=0))
        if out.shape != (len(batch), self.config.embed_dim):
            raise RuntimeError(
                f"{self.key} produced {out.shape}, expected ({len(batch)}, {self.config.embed_dim})"
            )
        return out

    @abc.abstractmethod
    def _embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """(n, input_px, input_px, 3) uint8 -> (n, dim) float (normalisation happens after)."""

    def describe(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "fingerprint": self.fingerprint,
            "embed_dim": self.embed_dim,
            "input_px": self.input_px,
            "device": self.device,
            "weights": self.weights_id,
        }


class TorchEncoder(Encoder):
    """Runs a torch module (usually a timm model with ``num_classes=0``) on image batches.

    On CUDA the forward pass runs under bf16 autocast; outputs are returned as float32.
    """

    def __init__(
        self,
        config: EncoderConfig,
        model: Any,
        weights_id: str,
        device: str = "cpu",
        batch_size: int = 64,
        weights_path: str | None = None,
    ) -> None:
        import torch

        super().__init__(config, weights_id, device, batch_size, weights_path)
        self._torch = torch
        self.model = model.eval().to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._mean = torch.tensor(config.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(config.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def _embed_batch(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            x = (x - self._mean) / self._std
            if self.device.startswith("cuda"):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    y = self.model(x)
            else:
                y = self.model(x)
            if y.ndim > 2:  # feature maps -> global average pool
                y = y.flatten(2).mean(-1)
            return y.float().cpu().numpy()
