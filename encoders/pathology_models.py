"""The open pathology foundation models by name, with their published recipes; local weights only.

Each entry records the architecture (timm ViT keyword arguments as published), the preprocessing
(resize of the shorter side with its interpolation, centre crop, mean/std) and the embedding
recipe applied to the token sequence (the pre-head output, (n, tokens, width), final norm
applied):

- ``cls``: the class token (UNI, UNI2-h, H-optimus-0/1, Prov-GigaPath, Phikon-v2);
- ``cls+mean``: the class token concatenated with the mean of the patch tokens, register tokens
  excluded (Virchow2: 1280 + 1280 = 2560-d);
- ``attn-pool``: CONCH's vision tower: the trunk's tokens attention-pooled by one learned query
  (d 512, 8 heads), then LayerNorm; no contrastive projection (512-d).

Weights come from ``--weights FILE``, ``$LAMINA_WEIGHTS_DIR/<file>`` or the local Hugging Face
cache (never the network). Phikon-v2 ships a Hugging Face ``transformers`` Dinov2 state dict; its
keys are renamed to timm's (q, k and v concatenated). Vectors are L2-normalised after the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from lamina.encoders.base import Encoder, TorchEncoder
from lamina.encoders.config import IMAGENET_MEAN, IMAGENET_STD, EncoderConfig, WeightsSpec
from lamina.encoders.errors import WeightsMismatchError
from lamina.encoders.registry import register_encoder
from lamina.encoders.weights import load_state_dict, require_weights

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
NC_ND = "CC BY-NC-ND 4.0"


@dataclass(frozen=True)
class Recipe:
    """How pixels become the published embedding."""

    timm_name: str
    timm_kwargs: tuple[tuple[str, Any], ...]
    pooling: str  # "cls" | "cls+mean" | "attn-pool"
    resize_px: int
    interpolation: str  # "bilinear" | "bicubic"
    crop_px: int
    prefix_tokens: int = 1
    """Tokens before the patch tokens (class + registers)."""
    weights_format: str = "timm"  # "timm" | "hf-dinov2" | "conch"


RECIPES: dict[str, Recipe] = {}

_LAYERS = {"swiglu_packed": ("timm.layers", "SwiGLUPacked"), "silu": ("torch.nn", "SiLU")}


def _resolve(value: Any) -> Any:
    if isinstance(value, str) and value in _LAYERS:
        import importlib

        module, name = _LAYERS[value]
        return getattr(importlib.import_module(module), name)
    return value


def build_model(config: EncoderConfig, depth: int | None = None) -> Any:
    """The torch module of ``config`` (random init): images (n, 3, h, w) -> (n, embed_dim).

    ``depth`` overrides the number of blocks (tests build every architecture at reduced depth).
    """
    import timm
    import torch

    recipe = RECIPES[config.key]
    kwargs = {k: _resolve(v) for k, v in recipe.timm_kwargs}
    if depth is not None:
        kwargs["depth"] = depth
    trunk = timm.create_model(recipe.timm_name, pretrained=False, **kwargs)

    class Embedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = trunk
            if recipe.pooling == "attn-pool":
                width = trunk.num_features
                self.query = torch.nn.Parameter(torch.randn(1, 512))
                self.attn = torch.nn.MultiheadAttention(512, 8, kdim=width, vdim=width)
                self.ln_q = torch.nn.LayerNorm(512)
                self.ln_k = torch.nn.LayerNorm(width)
                self.ln_contrast = torch.nn.LayerNorm(512)

        def forward(self, x: Any) -> Any:
            tokens = self.trunk.forward_features(x)  # type: ignore[operator]  # (n, tokens, width)
            if recipe.pooling == "cls":
                return tokens[:, 0]
            if recipe.pooling == "cls+mean":
                patches = tokens[:, recipe.prefix_tokens :]
                return torch.cat([tokens[:, 0], patches.mean(1)], dim=-1)
            ctx = self.ln_k(tokens).permute(1, 0, 2)  # (L, n, width)
            q = self.ln_q(self.query).unsqueeze(1).expand(-1, x.shape[0], -1)
            pooled = self.attn(q, ctx, ctx, need_weights=False)[0][0]
            return self.ln_contrast(pooled)

    return Embedder()


def hf_dinov2_to_timm(state: dict[str, Any]) -> dict[str, Any]:
    """Rename a transformers Dinov2Model state dict to timm VisionTransformer keys."""
    import torch

    out: dict[str, Any] = {}
    qkv: dict[int, dict[str, dict[str, Any]]] = {}
    for key, val in state.items():
        k = key.removeprefix("dinov2.")
        if k == "embeddings.mask_token" or k.startswith("pooler."):
            continue
        if k == "embeddings.cls_token":
            out["cls_token"] = val
        elif k == "embeddings.position_embeddings":
            out["pos_embed"] = val
        elif k.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + k.rsplit(".", 1)[1]] = val
        elif k.startswith("layernorm."):
            out["norm." + k.rsplit(".", 1)[1]] = val
        elif k.startswith("encoder.layer."):
            pieces = k.split(".")
            i, rest = int(pieces[2]), ".".join(pieces[3:])
            if rest.startswith("attention.attention."):
                _, _, which, kind = rest.split(".")
                qkv.setdefault(i, {}).setdefault(kind, {})[which] = val
                continue
            rest = (
                rest.replace("attention.output.dense", "attn.proj")
                .replace("layer_scale1.lambda1", "ls1.gamma")
                .replace("layer_scale2.lambda1", "ls2.gamma")
            )
            out[f"blocks.{i}.{rest}"] = val
        else:
            out[k] = val
    for i, kinds in qkv.items():
        for kind, qkv_parts in kinds.items():
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [qkv_parts["query"], qkv_parts["key"], qkv_parts["value"]], 0
            )
    return out


def _load(model: Any, recipe: Recipe, state: dict[str, Any], key: str, path: Any) -> None:
    if recipe.weights_format == "hf-dinov2":
        state = hf_dinov2_to_timm(state)
    if recipe.weights_format == "conch":
        vis = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
        state = {
            "trunk." + k.removeprefix("trunk."): v for k, v in vis.items() if k.startswith("trunk.")
        }
        for k, v in vis.items():
            if k.startswith("attn_pool_contrast."):
                state[k.removeprefix("attn_pool_contrast.")] = v
            elif k.startswith("ln_contrast."):
                state[k] = v
    else:
        state = {"trunk." + k.removeprefix("module."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsMismatchError(
            f"{key}: {path} does not fit {recipe.timm_name}: {len(missing)} missing tensors "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def preprocess(images: Any, recipe: Recipe) -> np.ndarray:
    """The recipe's resize (shorter side, its interpolation) and centre crop, uint8 out."""
    bicubic = recipe.interpolation == "bicubic"
    method = Image.Resampling.BICUBIC if bicubic else Image.Resampling.BILINEAR
    out = []
    for im in images:
        pil = Image.fromarray(np.asarray(im, dtype=np.uint8))
        w, h = pil.size
        scale = recipe.resize_px / min(w, h)
        size = (max(recipe.crop_px, round(w * scale)), max(recipe.crop_px, round(h * scale)))
        if (w, h) != size:
            pil = pil.resize(size, method)
        left, top = (size[0] - recipe.crop_px) // 2, (size[1] - recipe.crop_px) // 2
        out.append(np.asarray(pil.crop((left, top, left + recipe.crop_px, top + recipe.crop_px))))
    if not out:
        return np.zeros((0, recipe.crop_px, recipe.crop_px, 3), np.uint8)
    return np.stack(out)


class RecipeEncoder(TorchEncoder):
    """A :class:`TorchEncoder` whose images first go through the model's published resize/crop."""

    def embed(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        return super().embed(preprocess(images, RECIPES[self.key]), batch_size)


def build_pathology_encoder(
    config: EncoderConfig, weights: str | None = None, device: str = "cpu", batch_size: int = 32
) -> Encoder:
    path, digest = require_weights(config, weights)
    model = build_model(config)
    _load(model, RECIPES[config.key], load_state_dict(path), config.key, path)
    return RecipeEncoder(config, model, digest, device, batch_size, weights_path=str(path))


def _entry(
    key: str,
    recipe: Recipe,
    *,
    dim: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    licence: str,
    description: str,
    hf_repo: str,
    hf_filename: str,
    filename: str,
    mpp: float = 0.5,
) -> None:
    RECIPES[key] = recipe
    prep = (("resize", recipe.resize_px, recipe.interpolation), ("center_crop", recipe.crop_px),
            ("pooling", recipe.pooling))  # fmt: skip
    config = EncoderConfig(
        key=key,
        modality="pathology",
        architecture=recipe.timm_name,
        embed_dim=dim,
        input_px=recipe.crop_px,
        mpp=mpp,
        mean=mean,
        std=std,
        licence=licence,
        description=description,
        model_kwargs=(*recipe.timm_kwargs, ("recipe", prep)),
        weights=WeightsSpec(
            filename=filename,
            hf_repo=hf_repo,
            hf_filename=hf_filename,
            obtain=f"request access on https://huggingface.co/{hf_repo} and copy its "
            f"{hf_filename} (or `hf download {hf_repo} {hf_filename}` into the local cache).",
        ),
    )
    register_encoder(config)(build_pathology_encoder)


_GIANT_SWIGLU = (("mlp_layer", "swiglu_packed"), ("act_layer", "silu"))

_entry(
    "path/uni2-h",
    Recipe("vit_giant_patch14_224", (("img_size", 224), ("patch_size", 14), ("depth", 24),
           ("num_heads", 24), ("init_values", 1e-5), ("embed_dim", 1536),
           ("mlp_ratio", 2.66667 * 2), ("num_classes", 0), ("no_embed_class", True),
           *_GIANT_SWIGLU, ("reg_tokens", 8), ("dynamic_img_size", True)),
           "cls", 224, "bilinear", 224, prefix_tokens=9),  # fmt: skip
    dim=1536, mean=IMAGENET_MEAN, std=IMAGENET_STD, licence=f"{NC_ND} (MahmoodLab/UNI2-h, gated)",
    description="UNI2-h ViT-H/14 (SwiGLU, 8 registers), class token, 1536-d.",
    hf_repo="MahmoodLab/UNI2-h", hf_filename="pytorch_model.bin", filename="uni2-h_pytorch_model.bin",
)  # fmt: skip
_entry(
    "path/virchow2",
    Recipe("vit_huge_patch14_224", (("img_size", 224), ("init_values", 1e-5), ("num_classes", 0),
           ("reg_tokens", 4), ("mlp_ratio", 5.3375), ("global_pool", ""),
           ("dynamic_img_size", True), *_GIANT_SWIGLU),
           "cls+mean", 224, "bicubic", 224, prefix_tokens=5),  # fmt: skip
    dim=2560, mean=IMAGENET_MEAN, std=IMAGENET_STD, licence=f"{NC_ND} (paige-ai/Virchow2, gated)",
    description="Virchow2 ViT-H/14 (SwiGLU, 4 registers): class token + mean of patch tokens, 2560-d.",
    hf_repo="paige-ai/Virchow2", hf_filename="pytorch_model.bin", filename="virchow2_pytorch_model.bin",
)  # fmt: skip
for _key, _repo, _lic in (
    ("path/h-optimus-0", "bioptimus/H-optimus-0", "Apache-2.0 (bioptimus/H-optimus-0)"),
    ("path/h-optimus-1", "bioptimus/H-optimus-1",
     "bioptimus H-optimus-1 licence, non-commercial (gated; see the model card)"),
):  # fmt: skip
    _entry(
        _key,
        Recipe("vit_giant_patch14_reg4_dinov2", (("num_classes", 0), ("img_size", 224),
               ("global_pool", "token"), ("init_values", 1e-5), ("dynamic_img_size", True)),
               "cls", 224, "bilinear", 224, prefix_tokens=5),  # fmt: skip
        dim=1536, mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD, licence=_lic,
        description=f"{_repo.split('/')[1]} ViT-g/14 (DINOv2, 4 registers), class token, 1536-d.",
        hf_repo=_repo, hf_filename="pytorch_model.bin",
        filename=f"{_repo.split('/')[1].lower()}_pytorch_model.bin",
    )  # fmt: skip
_entry(
    "path/prov-gigapath",
    Recipe("vit_giant_patch14_dinov2", (("img_size", 224), ("in_chans", 3), ("patch_size", 16),
           ("embed_dim", 1536), ("depth", 40), ("num_heads", 24), ("init_values", 1e-5),
           ("mlp_ratio", 5.33334), ("num_classes", 0), ("dynamic_img_size", True)),
           "cls", 256, "bicubic", 224),  # fmt: skip
    dim=1536, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    licence="Apache-2.0 (prov-gigapath/prov-gigapath, gated; research use)",
    description="Prov-GigaPath tile encoder ViT-g/16 (DINOv2), class token, 1536-d; "
    "resize 256 bicubic, centre crop 224.",
    hf_repo="prov-gigapath/prov-gigapath", hf_filename="pytorch_model.bin",
    filename="prov-gigapath_pytorch_model.bin",
)  # fmt: skip
_entry(
    "path/phikon-v2",
    Recipe("vit_large_patch16_224", (("img_size", 224), ("init_values", 1e-5), ("num_classes", 0)),
           "cls", 224, "bilinear", 224, weights_format="hf-dinov2"),  # fmt: skip
    dim=1024, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    licence="Owkin non-commercial licence (owkin/phikon-v2)",
    description="Phikon-v2 ViT-L/16 (DINOv2), class token of the last hidden state, 1024-d.",
    hf_repo="owkin/phikon-v2", hf_filename="model.safetensors",
    filename="phikon-v2_model.safetensors",
)  # fmt: skip
_entry(
    "path/conch",
    Recipe("vit_base_patch16_224", (("img_size", 448), ("num_classes", 0), ("global_pool", "")),
           "attn-pool", 448, "bicubic", 448, weights_format="conch"),  # fmt: skip
    dim=512, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
    licence=f"{NC_ND} (MahmoodLab/CONCH, gated)",
    description="CONCH vision tower: ViT-B/16 at 448 px, attention-pooled (1 query) + LayerNorm, "
    "no contrastive projection, 512-d.",
    hf_repo="MahmoodLab/CONCH", hf_filename="pytorch_model.bin", filename="conch_pytorch_model.bin",
)  # fmt: skip
