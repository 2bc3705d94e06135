"""The open pathology models by name: each published architecture instantiated (random init,
reduced depth; full size on the meta device), its embedding recipe, preprocessing and weight
layout checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lamina.encoders import WeightsNotFoundError, create_encoder, encoder_table, get_config
from lamina.encoders.pathology_models import (
    RECIPES,
    RecipeEncoder,
    _load,
    build_model,
    hf_dinov2_to_timm,
    preprocess,
)

# key -> (embedding dim, tokens out of the trunk at the input size, full-size parameters, M)
PUBLISHED = {
    "path/uni2-h": (1536, 1 + 8 + 256, 681),
    "path/virchow2": (2560, 1 + 4 + 256, 631),
    "path/h-optimus-0": (1536, 1 + 4 + 256, 1134),
    "path/h-optimus-1": (1536, 1 + 4 + 256, 1134),
    "path/prov-gigapath": (1536, 1 + 196, 1134),
    "path/phikon-v2": (1024, 1 + 196, 303),
    "path/conch": (512, 1 + 784, 86),
}


def test_every_model_is_registered_with_its_recipe() -> None:
    assert set(PUBLISHED) == set(RECIPES)
    for key, (dim, _, _) in PUBLISHED.items():
        cfg = get_config(key)
        assert cfg.embed_dim == dim and cfg.mpp == 0.5 and cfg.licence
        assert cfg.weights is not None and cfg.weights.hf_repo
    assert get_config("path/conch").input_px == 448
    assert get_config("path/h-optimus-0").mean == (0.707223, 0.578729, 0.703617)


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_recipe_and_output_shape_at_reduced_depth(key: str) -> None:
    cfg = get_config(key)
    dim, n_tokens, _ = PUBLISHED[key]
    torch.manual_seed(0)
    model = build_model(cfg, depth=1).eval()
    x = torch.randn(2, 3, cfg.input_px, cfg.input_px)
    with torch.no_grad():
        out = model(x)
        tokens = model.trunk.forward_features(x)
    assert out.shape == (2, dim)
    assert tokens.shape[1] == n_tokens
    recipe = RECIPES[key]
    if recipe.pooling == "cls":
        torch.testing.assert_close(out, tokens[:, 0])
    elif recipe.pooling == "cls+mean":  # Virchow2: registers left out of the mean
        width = tokens.shape[-1]
        torch.testing.assert_close(out[:, :width], tokens[:, 0])
        torch.testing.assert_close(out[:, width:], tokens[:, 5:].mean(1))
        assert not torch.allclose(out[:, width:], tokens[:, 1:].mean(1))
    else:  # CONCH: attention pooling ends in a LayerNorm (unit affine at init)
        torch.testing.assert_close(out.mean(1), torch.zeros(2), atol=1e-4, rtol=0)
        assert not torch.allclose(out, tokens[:, 0, :512])


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_full_size_architecture(key: str) -> None:
    """Every published size, built on the meta device (no memory): parameter count in millions."""
    with torch.device("meta"):
        model = build_model(get_config(key))
    n = sum(p.numel() for p in model.trunk.parameters()) / 1e6
    assert abs(n - PUBLISHED[key][2]) / PUBLISHED[key][2] < 0.01, n


def test_preprocessing_resize_shorter_side_then_centre_crop() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    got = preprocess([image], RECIPES["path/prov-gigapath"])[0]
    resized = Image.fromarray(image).resize((341, 256), Image.Resampling.BICUBIC)
    want = np.asarray(resized.crop((58, 16, 58 + 224, 16 + 224)))
    np.testing.assert_array_equal(got, want)
    tile = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess([tile], RECIPES["path/virchow2"])[0], tile)


def _published_state(key: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict laid out as the model's own release (timm, transformers Dinov2, CONCH)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fmt = RECIPES[key].weights_format
    trunk = {k.removeprefix("trunk."): v for k, v in state.items() if k.startswith("trunk.")}
    if fmt == "timm":
        return trunk
    if fmt == "conch":
        out = {f"visual.trunk.{k}": v for k, v in trunk.items()}
        for k, v in state.items():
            if not k.startswith("trunk."):
                name = k if k.startswith("ln_contrast") else f"attn_pool_contrast.{k}"
                out[f"visual.{name}"] = v
        out["text.token_embedding.weight"] = torch.zeros(4, 4)  # other towers are ignored
        return out
    hf: dict[str, torch.Tensor] = {"embeddings.mask_token": torch.zeros(1, 1024)}
    names = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
             "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}  # fmt: skip
    for k, v in trunk.items():
        if k in names:
            hf[names[k]] = v
        elif k.startswith("patch_embed.proj."):
            hf["embeddings.patch_embeddings.projection." + k.rsplit(".", 1)[1]] = v
        elif ".attn.qkv." in k:
            i, kind = k.split(".")[1], k.rsplit(".", 1)[1]
            for part, t in zip(("query", "key", "value"), v.chunk(3), strict=True):
                hf[f"encoder.layer.{i}.attention.attention.{part}.{kind}"] = t
        else:
            rest = (k.replace("attn.proj", "attention.output.dense")
                    .replace("ls1.gamma", "layer_scale1.lambda1")
                    .replace("ls2.gamma", "layer_scale2.lambda1"))  # fmt: skip
            hf["encoder.layer." + rest.removeprefix("blocks.")] = v
    return hf


@pytest.mark.parametrize("key", ["path/virchow2", "path/phikon-v2", "path/conch"])
def test_published_weight_layouts_load(key: str) -> None:
    cfg = get_config(key)
    torch.manual_seed(1)
    source = build_model(cfg, depth=1).eval()
    torch.manual_seed(2)
    target = build_model(cfg, depth=1).eval()
    _load(target, RECIPES[key], _published_state(key, source), key, "test")
    x = torch.randn(1, 3, cfg.input_px, cfg.input_px)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))
    assert hf_dinov2_to_timm({"embeddings.mask_token": torch.zeros(1)}) == {}


def test_encoder_runs_the_recipe_end_to_end() -> None:
    cfg = get_config("path/prov-gigapath")
    enc = RecipeEncoder(cfg, build_model(cfg, depth=1), "seed=0", "cpu", 4)
    images = [np.full((300, 500, 3), v, np.uint8) for v in (40, 200)]
    vecs = enc.embed(images)
    assert vecs.shape == (2, 1536)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)


def test_missing_weights_and_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("LAMINA_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(
        WeightsNotFoundError, match=r"CC BY-NC-ND.*huggingface.co/paige-ai/Virchow2"
    ):
        create_encoder("path/virchow2")
    rows = {r["key"]: r for r in encoder_table()}
    assert rows["path/virchow2"]["weights_available"] is False
    (tmp_path / "virchow2_pytorch_model.bin").write_bytes(b"x")
    rows = {r["key"]: r for r in encoder_table()}
    assert rows["path/virchow2"]["weights_available"] is True
    assert str(rows["path/virchow2"]["licence"]).startswith("CC BY-NC-ND 4.0")


def test_uni_architecture_and_recipe() -> None:
    """path/uni (registered with the timm encoders): ViT-L/16 with layer scale, class token."""
    import timm

    cfg = get_config("path/uni")
    kwargs = dict(cfg.model_kwargs)
    small = timm.create_model(cfg.architecture, num_classes=0, depth=1, **kwargs).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(small(x), small.forward_features(x)[:, 0])  # type: ignore[operator]
    assert small(x).shape == (2, cfg.embed_dim) == (2, 1024)
    with torch.device("meta"):
        full = timm.create_model(cfg.architecture, num_classes=0, **kwargs)
    assert round(sum(p.numel() for p in full.parameters()) / 1e6) == 303
    assert (cfg.mean, cfg.input_px, cfg.mpp) == ((0.485, 0.456, 0.406), 224, 0.5)
