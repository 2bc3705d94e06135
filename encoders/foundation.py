"""Path Foundation and Derm Foundation as published: TensorFlow SavedModels, run as their model
cards describe.

- ``path/foundation``: 224 x 224 RGB tiles, float32 scaled to [0, 1], batched into the single
  input of the ``serving_default`` signature; the 384-d embedding is ``output_0``.
- ``derm/foundation``: each image (448 x 448 px) PNG-encoded and wrapped in a serialized
  ``tf.train.Example`` with the bytes under ``image/encoded``, the batch passed as ``inputs`` to
  ``serving_default``; the 6,144-d embedding is ``embedding``.

The model folder comes from ``--weights DIR``, ``$LAMINA_WEIGHTS_DIR/<name>/`` or the local
Hugging Face cache (snapshot layout); nothing is downloaded. The fingerprint binds to the sha256
of the folder's model files (``saved_model.pb``, ``variables/``), so another checkpoint can never
write into the same collection.

Why TensorFlow and not ONNX: the Derm signature parses Examples and decodes PNGs
(``ParseExampleV2``, ``DecodePng``), which tf2onnx cannot convert, and for the Path ViT
onnxruntime was no faster than TensorFlow on the CPU (``python -m bench.foundation_routes``,
docs/benchmarks.md). TensorFlow is an optional extra: ``pip install 'lamina[tensorflow]'``.
Vectors are L2-normalised by :class:`Encoder` after the model (cosine is unchanged by that).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lamina.encoders.base import Encoder
from lamina.encoders.config import EncoderConfig, WeightsSpec
from lamina.encoders.errors import EncoderError, WeightsMismatchError
from lamina.encoders.registry import register_encoder
from lamina.encoders.weights import require_weights

SIGNATURE = "serving_default"
HAI_DEF_TERMS = (
    "Health AI Developer Foundations terms of use "
    "(https://developers.google.com/health-ai-developer-foundations/terms)"
)


class TensorFlowMissingError(EncoderError):
    """An encoder that runs on TensorFlow was asked for, and TensorFlow is not installed."""


def import_tensorflow(key: str) -> Any:
    """TensorFlow, quiet, or an error saying which extra to install.

    Triton (which torch's CUDA wheels bring, and torchvision imports) is loaded first when it is
    installed: both bundle LLVM, and importing triton after TensorFlow segfaults the process,
    while the other order works.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules:
        with contextlib.suppress(ImportError):
            import triton  # noqa: F401
    try:
        import tensorflow as tf
    except ImportError:
        raise TensorFlowMissingError(
            f"{key} runs on TensorFlow, which is not installed: pip install 'lamina[tensorflow]'"
        ) from None
    return tf


def _spec_of(signature: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    _, inputs = signature.structured_input_signature
    return dict(inputs), dict(signature.structured_outputs)


class SavedModelEncoder(Encoder):
    """One published SavedModel behind its ``serving_default`` signature.

    Subclasses turn a uint8 batch into the signature's input (:meth:`_feed`); ``output_key``
    names the embedding. The signature is checked at load: input dtype, output name and width.
    """

    output_key = ""
    input_dtype = ""

    def __init__(
        self,
        config: EncoderConfig,
        folder: Path,
        digest: str,
        device: str = "cpu",
        batch_size: int = 32,
    ) -> None:
        tf = import_tensorflow(config.key)
        gpus = tf.config.list_logical_devices("GPU")
        use_gpu = device.startswith("cuda") and bool(gpus)
        super().__init__(config, digest, "cuda" if use_gpu else "cpu", batch_size, str(folder))
        self._tf = tf
        self._tf_device = "/GPU:0" if use_gpu else "/CPU:0"
        with tf.device(self._tf_device):
            self._model = tf.saved_model.load(str(folder))
        signatures = getattr(self._model, "signatures", {})
        if SIGNATURE not in signatures:
            raise WeightsMismatchError(
                f"{config.key}: {folder} has no {SIGNATURE!r} signature "
                f"(it has {sorted(signatures) or 'none'}); is it the published model?"
            )
        self._fn = signatures[SIGNATURE]
        inputs, outputs = _spec_of(self._fn)
        if len(inputs) != 1:
            raise WeightsMismatchError(
                f"{config.key}: {SIGNATURE} takes {sorted(inputs)}; expected one input"
            )
        self._input_name, in_spec = next(iter(inputs.items()))
        if in_spec.dtype.name != self.input_dtype:
            raise WeightsMismatchError(
                f"{config.key}: {SIGNATURE} input {self._input_name!r} is {in_spec.dtype.name}, "
                f"expected {self.input_dtype}"
            )
        out = outputs.get(self.output_key)
        if out is None or out.shape.rank != 2 or out.shape[-1] not in (None, config.embed_dim):
            raise WeightsMismatchError(
                f"{config.key}: {SIGNATURE} outputs {sorted(outputs)}; expected "
                f"{self.output_key!r} of width {config.embed_dim}"
            )

    def _feed(self, batch: np.ndarray) -> Any:
        raise NotImplementedError

    def _embed_batch(self, batch: np.ndarray) -> np.ndarray:
        with self._tf.device(self._tf_device):
            result = self._fn(**{self._input_name: self._feed(batch)})
        return np.asarray(result[self.output_key].numpy(), dtype=np.float32)


class PathFoundationEncoder(SavedModelEncoder):
    """Tiles as float32 in [0, 1], (n, 224, 224, 3), into the one input; ``output_0`` out."""

    output_key = "output_0"
    input_dtype = "float32"

    def _feed(self, batch: np.ndarray) -> Any:
        return self._tf.constant(batch.astype(np.float32) / np.float32(255.0))


def derm_example(image: np.ndarray) -> bytes:
    """One image as the serialized tf.train.Example Derm Foundation takes (PNG under
    ``image/encoded``)."""
    from tensorflow.core.example import example_pb2, feature_pb2

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    feature = feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[buf.getvalue()]))
    features = feature_pb2.Features(feature={"image/encoded": feature})
    return bytes(example_pb2.Example(features=features).SerializeToString())


class DermFoundationEncoder(SavedModelEncoder):
    """Images PNG-encoded in serialized Examples, (n,) strings, into ``inputs``; ``embedding``."""

    output_key = "embedding"
    input_dtype = "string"

    def _feed(self, batch: np.ndarray) -> Any:
        return self._tf.constant([derm_example(im) for im in batch])


def _builder(cls: type[SavedModelEncoder]) -> Any:
    def build(
        config: EncoderConfig,
        weights: str | None = None,
        device: str = "cpu",
        batch_size: int = 32,
    ) -> Encoder:
        import_tensorflow(config.key)  # say what to install before hashing gigabytes
        folder, digest = require_weights(config, weights)
        return cls(config, folder, digest, device=device, batch_size=batch_size)

    return build


PATH_FOUNDATION = EncoderConfig(
    key="path/foundation",
    modality="pathology",
    architecture="tf-savedmodel:google/path-foundation (ViT-S/16)",
    embed_dim=384,
    input_px=224,
    mpp=0.5,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    licence=HAI_DEF_TERMS,
    description=(
        "Path Foundation as published (TensorFlow SavedModel): H&E tiles at 224 px, [0, 1] "
        "floats, 384-d. Trained on several magnifications; 0.5 um/px is the default here."
    ),
    weights=WeightsSpec(
        filename="path-foundation",
        folder_marker="saved_model.pb",
        hf_repo="google/path-foundation",
        obtain=(
            "accept the terms on https://huggingface.co/google/path-foundation, then "
            "`hf download google/path-foundation` (fills the local Hugging Face cache) or "
            "download the repository's files (saved_model.pb, variables/) into a folder."
        ),
    ),
)

DERM_FOUNDATION = EncoderConfig(
    key="derm/foundation",
    modality="dermatology",
    architecture="tf-savedmodel:google/derm-foundation (BiT ResNet-101x3)",
    embed_dim=6144,
    input_px=448,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    licence=HAI_DEF_TERMS,
    description=(
        "Derm Foundation as published (TensorFlow SavedModel): skin photos at 448 px, "
        "PNG in a tf.train.Example, 6144-d."
    ),
    weights=WeightsSpec(
        filename="derm-foundation",
        folder_marker="saved_model.pb",
        hf_repo="google/derm-foundation",
        obtain=(
            "accept the terms on https://huggingface.co/google/derm-foundation, then "
            "`hf download google/derm-foundation` (fills the local Hugging Face cache) or "
            "download the repository's files (saved_model.pb, variables/) into a folder."
        ),
    ),
)

register_encoder(PATH_FOUNDATION, runtime="tensorflow")(_builder(PathFoundationEncoder))
register_encoder(DERM_FOUNDATION, runtime="tensorflow")(_builder(DermFoundationEncoder))
