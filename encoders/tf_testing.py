"""Random-weight TensorFlow SavedModels with the published Path / Derm Foundation signatures.

They let tests and benchmarks exercise the exact calling convention of the real models without
their (gated) weights:

- Path Foundation: ``serving_default(<one input>: float32 (n, 224, 224, 3) in [0, 1])``
  -> ``{"output_0": float32 (n, 384)}``; here a ViT (patch 16, pre-norm blocks, mean of the
  patch tokens) of configurable width and depth.
- Derm Foundation: ``serving_default(inputs: string (n,))`` where each string is a serialized
  ``tf.train.Example`` with the PNG bytes under ``image/encoded`` -> ``{"embedding": float32
  (n, 6144)}``; here parse -> PNG decode -> [0, 1] floats at 448 px -> a small strided CNN ->
  global average pool -> dense to 6144.

Weights come from a seeded numpy generator, so a model is a deterministic function of its
arguments. Nothing here is imported unless TensorFlow is installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

PATH_DIM = 384
DERM_DIM = 6144
DERM_PX = 448


def _tf() -> Any:
    from lamina.encoders.foundation import import_tensorflow

    return import_tensorflow("lamina.encoders.tf_testing")


def _gelu(tf: Any, x: Any) -> Any:
    """Exact GELU written with erf, as Keras writes it (tf.nn.gelu lowers to Erfc, which ONNX
    lacks)."""
    return 0.5 * x * (1.0 + tf.math.erf(x * 0.7071067811865476))


def build_path_savedmodel(
    out: str | os.PathLike[str],
    *,
    width: int = 32,
    depth: int = 1,
    heads: int = 2,
    seed: int = 0,
    input_name: str = "inputs",
) -> Path:
    """Write a Path Foundation-signature ViT SavedModel to ``out``; returns the folder."""
    tf = _tf()
    rng = np.random.default_rng(seed)

    def var(*shape: int, scale: float = 0.02) -> Any:
        return tf.Variable(rng.normal(0.0, scale, shape).astype(np.float32))

    class PathViT(tf.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.patch = var(16, 16, 3, width, scale=0.05)
            self.pos = var(1, 196, width)
            self.blocks = [
                {
                    "qkv": var(width, 3 * width, scale=width**-0.5),
                    "proj": var(width, width, scale=width**-0.5),
                    "fc1": var(width, 4 * width, scale=width**-0.5),
                    "fc2": var(4 * width, width, scale=(4 * width) ** -0.5),
                }
                for _ in range(depth)
            ]
            self.head = var(width, PATH_DIM, scale=width**-0.5)

        def _norm(self, x: Any) -> Any:
            mean, var_ = tf.nn.moments(x, axes=[-1], keepdims=True)
            return (x - mean) * tf.math.rsqrt(var_ + 1e-6)

        def _attention(self, x: Any, qkv_w: Any, proj_w: Any) -> Any:
            n = tf.shape(x)[0]
            qkv = tf.reshape(tf.matmul(x, qkv_w), [n, 196, 3, heads, width // heads])
            q, k, v = (tf.transpose(qkv[:, :, i], [0, 2, 1, 3]) for i in range(3))
            att = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) * (width // heads) ** -0.5)
            y = tf.reshape(tf.transpose(tf.matmul(att, v), [0, 2, 1, 3]), [n, 196, width])
            return tf.matmul(y, proj_w)

        @tf.function(
            input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name=input_name)]
        )
        def serve(self, images: Any) -> dict[str, Any]:
            x = tf.nn.conv2d(images * 2.0 - 1.0, self.patch, strides=16, padding="VALID")
            x = tf.reshape(x, [tf.shape(x)[0], 196, width]) + self.pos
            for b in self.blocks:
                x = x + self._attention(self._norm(x), b["qkv"], b["proj"])
                x = x + tf.matmul(_gelu(tf, tf.matmul(self._norm(x), b["fc1"])), b["fc2"])
            return {"output_0": tf.matmul(tf.reduce_mean(self._norm(x), axis=1), self.head)}

    model = PathViT()
    out = Path(out)
    tf.saved_model.save(model, str(out), signatures={"serving_default": model.serve})
    return out


def build_derm_savedmodel(out: str | os.PathLike[str], *, channels: int = 8, seed: int = 0) -> Path:
    """Write a Derm Foundation-signature SavedModel (serialized Examples in) to ``out``."""
    tf = _tf()
    rng = np.random.default_rng(seed)

    class DermNet(tf.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            c = channels
            self.c1 = tf.Variable(rng.normal(0, 0.3, (7, 7, 3, c)).astype(np.float32))
            self.c2 = tf.Variable(rng.normal(0, 0.3, (3, 3, c, 2 * c)).astype(np.float32))
            self.c3 = tf.Variable(rng.normal(0, 0.3, (3, 3, 2 * c, 4 * c)).astype(np.float32))
            self.head = tf.Variable(
                rng.normal(0, (4 * c) ** -0.5, (4 * c, DERM_DIM)).astype(np.float32)
            )

        def _decode(self, png: Any) -> Any:
            img = tf.io.decode_png(png, channels=3)
            img = tf.image.convert_image_dtype(img, tf.float32)
            return tf.image.resize(img, [DERM_PX, DERM_PX])

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def serve(self, inputs: Any) -> dict[str, Any]:
            spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
            parsed = tf.io.parse_example(inputs, spec)
            x = tf.map_fn(
                self._decode,
                parsed["image/encoded"],
                fn_output_signature=tf.TensorSpec([DERM_PX, DERM_PX, 3], tf.float32),
            )
            x = tf.nn.relu(tf.nn.conv2d(x - 0.5, self.c1, strides=4, padding="SAME"))
            x = tf.nn.relu(tf.nn.conv2d(x, self.c2, strides=2, padding="SAME"))
            x = tf.nn.relu(tf.nn.conv2d(x, self.c3, strides=2, padding="SAME"))
            return {"embedding": tf.matmul(tf.reduce_mean(x, axis=[1, 2]), self.head)}

    model = DermNet()
    out = Path(out)
    tf.saved_model.save(model, str(out), signatures={"serving_default": model.serve})
    return out
