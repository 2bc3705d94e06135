"""The measured alternative to TensorFlow: tf2onnx + onnxruntime on the published signatures
(bench/foundation_routes.py at a reduced size, real converters and runtimes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lamina.encoders.foundation import import_tensorflow  # noqa: E402

# test dependencies (the `test` extra): a missing one fails, never skips
import_tensorflow("tests")  # before tf2onnx imports TensorFlow itself
import onnxruntime  # noqa: E402, F401
import tf2onnx  # noqa: E402, F401

from bench.foundation_routes import compare_path, try_derm  # noqa: E402


@pytest.mark.slow
def test_onnx_route_gives_the_tensorflow_vectors(tmp_path: Path) -> None:
    tiles = np.random.default_rng(0).integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
    doc = compare_path(tmp_path, tiles, width=32, depth=2, heads=2, batch=4, reps=1)
    assert doc["min_cosine_onnx_vs_tf"] >= 0.9999
    assert doc["tensorflow_images_per_s"] > 0 and doc["onnxruntime_images_per_s"] > 0


@pytest.mark.slow
def test_the_derm_signature_does_not_convert(tmp_path: Path) -> None:
    doc = try_derm(tmp_path)
    assert doc["converted"] is False and doc["runs_on_onnxruntime"] is False
    assert "ParseExampleV2" in doc["tf2onnx_errors"] and "DecodePng" in doc["tf2onnx_errors"]
