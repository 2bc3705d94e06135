"""Tests of the weights-free classic/stain-texture encoder (encoders/classic.py)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lamina.encoders import EncoderError, create_encoder, get_config, list_encoders

KEY = "classic/stain-texture"


def _shared_data() -> Path:
    env = os.environ.get("LAMINA_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


LC25000 = _shared_data() / "path_tiles" / "lc25000_lung_224"


@pytest.fixture(scope="module")
def encoder():
    return create_encoder(KEY)


def _images(n: int, seed: int = 0, size: int = 224) -> np.ndarray:
    """Smooth random colour images (blocky noise upsampled), so texture and colour both vary."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, size // 8, size // 8, 3), dtype=np.uint8)
    fine = rng.integers(-20, 21, size=(n, size, size, 3))
    up = coarse.repeat(8, axis=1).repeat(8, axis=2).astype(np.int64)
    return np.clip(up + fine, 0, 255).astype(np.uint8)


def test_registered_with_expected_config():
    assert KEY in [c.key for c in list_encoders(include_test=False)]
    cfg = get_config(KEY)
    assert (cfg.modality, cfg.architecture, cfg.input_px, cfg.mpp) == ("any", "classic", 224, 0.5)
    assert cfg.weights is None and cfg.licence == "Apache-2.0" and not cfg.test_only
    assert 256 <= cfg.embed_dim <= 512


def test_builder_refuses_weights_and_runs_on_cpu():
    with pytest.raises(EncoderError, match="takes no weights"):
        create_encoder(KEY, weights="some.safetensors")
    enc = create_encoder(KEY, device="cuda")
    assert enc.device == "cpu" and enc.weights_id == "none"


def test_shape_dtype_and_unit_norm(encoder):
    out = encoder.embed(_images(5))
    assert out.shape == (5, encoder.embed_dim) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_deterministic(encoder):
    images = _images(4, seed=1)
    first = encoder.embed(images)
    again = create_encoder(KEY).embed(images.copy())
    assert np.array_equal(first, again)


def test_different_inputs_give_different_vectors(encoder):
    out = encoder.embed(_images(6, seed=2))
    sims = out @ out.T
    assert np.all(sims[~np.eye(6, dtype=bool)] < 0.9999)


def test_independent_of_batch_composition(encoder):
    images = _images(40, seed=3)  # more than one internal chunk
    together = encoder.embed(images)
    for i in (0, 35, 39):
        alone = encoder.embed(images[i : i + 1])
        np.testing.assert_allclose(alone[0], together[i], atol=1e-6)
    np.testing.assert_allclose(encoder.embed(images[::-1])[::-1], together, atol=1e-6)


@pytest.mark.parametrize("value", [0, 128, 255])
def test_uniform_images_are_finite(encoder, value):
    out = encoder.embed(np.full((2, 224, 224, 3), value, np.uint8))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_other_sizes_are_resized(encoder):
    out = encoder.embed([_images(1, seed=4, size=96)[0], _images(1, seed=5, size=304)[0]])
    assert out.shape == (2, encoder.embed_dim) and np.all(np.isfinite(out))


@pytest.mark.skipif(
    not (LC25000 / "labels.csv").is_file(),
    reason=f"LC25000 tiles not found at {LC25000} (set LAMINA_SHARED_DATA)",
)
def test_lc25000_one_nn_beats_chance(encoder):
    with open(LC25000 / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    picked: dict[str, dict[str, str]] = {}
    for row in sorted(rows, key=lambda r: (r["group_id"], r["filename"])):
        picked.setdefault(row["group_id"], row)  # one tile per near-duplicate group
    chosen = []
    for cls in sorted({r["class_code"] for r in rows}):
        chosen += [r for r in picked.values() if r["class_code"] == cls][:20]
    assert len(chosen) == 60
    images = []
    for r in chosen:
        with Image.open(LC25000 / r["filename"]) as im:
            images.append(np.asarray(im.convert("RGB")))
    labels = np.array([r["class_code"] for r in chosen])
    vectors = encoder.embed(images)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    accuracy = float((labels[sims.argmax(1)] == labels).mean())
    print(f"LC25000 60-tile leave-one-out 1-NN accuracy: {accuracy:.3f}")
    assert accuracy > 0.5, f"leave-one-out 1-NN accuracy {accuracy:.2f} (chance 0.33)"
