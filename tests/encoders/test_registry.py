"""Registry, factory, fingerprints, golden vectors and weight loading of the encoders package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lamina.encoders import (
    DuplicateEncoderError,
    EncoderConfig,
    InvalidImageBatchError,
    TestEncoderRefusedError,
    UnknownEncoderError,
    WeightsMismatchError,
    WeightsNotFoundError,
    create_encoder,
    encoder_table,
    fingerprint_of,
    get_config,
    list_encoders,
    register_encoder,
)
from lamina.encoders.registry import unregister_encoder


def _pattern(seed: int, size: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return np.stack(
        [(x * 4 + seed * 10) % 256, (y * 4) % 256, ((x + y) * 2 + seed * 37) % 256], -1
    ).astype(np.uint8)


# Golden outputs of the seeded test encoders on _pattern(0) and _pattern(1) (first 6 values).
GOLDEN = {
    "test/tiny-vit": [
        [0.224591, 0.117299, 0.018519, -0.154066, 0.058118, -0.037249],
        [0.232002, 0.10222, -0.073832, -0.163003, 0.070006, -0.057519],
    ],
    "test/tiny-resnet": [
        [0.006285, 0.060437, 0.022926, 0.146836, 0.004824, 0.013266],
        [0.014915, 0.058737, 0.023647, 0.153581, 0.007835, 0.00986],
    ],
}


def test_expected_entries_are_registered() -> None:
    keys = {c.key for c in list_encoders()}
    for key in (
        "classic/stain-texture",
        "path/vit_small_patch16",
        "derm/bit_resnet101x3",
        "generic/vit_small_patch16.imagenet",
        "generic/bit_resnet101x3.imagenet",
        "path/uni",
        "test/tiny-vit",
        "test/tiny-resnet",
    ):
        assert key in keys
    assert get_config("path/vit_small_patch16").embed_dim == 384
    assert get_config("derm/bit_resnet101x3").embed_dim == 6144
    assert get_config("derm/bit_resnet101x3").input_px == 448
    assert get_config("path/uni").embed_dim == 1024
    assert not any(c.test_only for c in list_encoders(include_test=False))


def test_unknown_key_raises_with_known_keys() -> None:
    with pytest.raises(UnknownEncoderError, match="classic/stain-texture"):
        create_encoder("path/nope")


def test_duplicate_registration_raises() -> None:
    cfg = EncoderConfig(
        key="test/dup-check",
        modality="any",
        architecture="x",
        embed_dim=2,
        input_px=8,
        test_only=True,
    )
    register_encoder(cfg)(lambda *a, **k: None)
    try:
        with pytest.raises(DuplicateEncoderError):
            register_encoder(cfg)(lambda *a, **k: None)
    finally:
        unregister_encoder("test/dup-check")


def test_keys_must_be_namespaced() -> None:
    with pytest.raises(ValueError, match="namespaced"):
        register_encoder(
            EncoderConfig(key="plain", modality="any", architecture="x", embed_dim=2, input_px=8)
        )


def test_config_is_frozen() -> None:
    cfg = get_config("test/tiny-vit")
    with pytest.raises(AttributeError):
        cfg.embed_dim = 3  # type: ignore[misc]


def test_fingerprint_is_stable_and_sensitive() -> None:
    cfg = get_config("test/tiny-vit")
    assert fingerprint_of(cfg, "seed=0") == fingerprint_of(cfg, "seed=0")
    assert fingerprint_of(cfg, "seed=0") != fingerprint_of(cfg, "seed=1")
    from dataclasses import replace

    assert fingerprint_of(replace(cfg, input_px=96), "seed=0") != fingerprint_of(cfg, "seed=0")
    assert fingerprint_of(replace(cfg, mean=(0.1, 0.2, 0.3)), "seed=0") != fingerprint_of(
        cfg, "seed=0"
    )
    # the fingerprint of a built encoder is the same in every process (no randomness, no paths)
    assert (
        create_encoder("test/tiny-vit", device="cpu").fingerprint
        == "test/tiny-vit@329dd4c99e78ec2b"
    )


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_golden_vectors(key: str) -> None:
    enc = create_encoder(key, device="cpu")
    out = enc.embed(np.stack([_pattern(0), _pattern(1)]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out[:, :6], np.array(GOLDEN[key]), atol=2e-4)


def test_embed_accepts_lists_of_any_size_and_rejects_bad_input() -> None:
    enc = create_encoder("test/tiny-vit", device="cpu")
    out = enc.embed([_pattern(0, 64), _pattern(0, 128)])
    assert out.shape == (2, 64)
    assert enc.embed([]).shape == (0, 64)
    with pytest.raises(InvalidImageBatchError):
        enc.embed(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(InvalidImageBatchError):
        enc.embed([np.zeros((64, 64), np.uint8)])


def test_batching_does_not_change_vectors() -> None:
    enc = create_encoder("test/tiny-vit", device="cpu")
    imgs = np.stack([_pattern(i) for i in range(5)])
    np.testing.assert_allclose(
        enc.embed(imgs, batch_size=2), enc.embed(imgs, batch_size=5), atol=1e-5
    )


def test_test_encoders_refused_when_not_allowed() -> None:
    with pytest.raises(TestEncoderRefusedError, match="--allow-test-encoder"):
        create_encoder("test/tiny-vit", allow_test=False)


def test_missing_weights_say_what_to_obtain(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LAMINA_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError) as info:
        create_encoder("derm/bit_resnet101x3", device="cpu")
    msg = str(info.value)
    assert "derm_bit_resnet101x3.safetensors" in msg and "LAMINA_WEIGHTS_DIR" in msg
    assert "Derm Foundation" in msg
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        create_encoder("path/vit_small_patch16", weights=tmp_path / "none.pt", device="cpu")


def test_real_architecture_loads_local_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """path/vit_small_patch16 built from a local state dict through the real loading code."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    weights = tmp_path / "path_vit_small_patch16.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    monkeypatch.setenv("LAMINA_WEIGHTS_DIR", str(tmp_path))
    enc = create_encoder("path/vit_small_patch16", device="cpu")
    assert enc.weights_path == str(weights)
    out = enc.embed([_pattern(0, 224)])
    with torch.inference_mode():
        x = torch.from_numpy(_pattern(0, 224)).permute(2, 0, 1)[None].float() / 255
        ref = model.eval()((x - 0.5) / 0.5).numpy()
    ref = ref / np.linalg.norm(ref)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    # same file -> same fingerprint; other weights -> other fingerprint
    assert create_encoder("path/vit_small_patch16", device="cpu").fingerprint == enc.fingerprint
    other = tmp_path / "other.pt"
    torch.save({k: v * 0.5 for k, v in model.state_dict().items()}, other)
    assert (
        create_encoder("path/vit_small_patch16", weights=other, device="cpu").fingerprint
        != enc.fingerprint
    )
    bad = tmp_path / "bad.pt"
    torch.save({"nothing": torch.zeros(1)}, bad)
    with pytest.raises(WeightsMismatchError, match="does not fit"):
        create_encoder("path/vit_small_patch16", weights=bad, device="cpu")


def test_encoder_table_reports_weight_availability(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LAMINA_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    rows = {r["key"]: r for r in encoder_table()}
    assert rows["classic/stain-texture"]["weights_available"] is True
    assert rows["path/uni"]["weights_available"] is False
    assert "MahmoodLab/UNI" in str(rows["path/uni"]["weights"])
