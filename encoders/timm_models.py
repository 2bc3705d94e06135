"""Real encoder architectures built through timm; weights only from local files."""

from __future__ import annotations

from typing import Any

from lamina.encoders.base import Encoder, TorchEncoder
from lamina.encoders.config import (
    HALF_MEAN,
    HALF_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderConfig,
    WeightsSpec,
)
from lamina.encoders.errors import WeightsMismatchError
from lamina.encoders.registry import register_encoder
from lamina.encoders.weights import load_state_dict, require_weights


def build_timm_encoder(
    config: EncoderConfig, weights: str | None = None, device: str = "cpu", batch_size: int = 32
) -> Encoder:
    """Create the timm model of ``config`` and load its weights from a local file."""
    import timm

    path, digest = require_weights(config, weights)
    model = timm.create_model(
        config.architecture, pretrained=False, num_classes=0, **dict(config.model_kwargs)
    )
    state = load_state_dict(path)
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    state = {
        k: v
        for k, v in state.items()
        if not k.startswith(("head.", "fc.", "classifier.")) or k in model.state_dict()
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise WeightsMismatchError(
            f"{config.key}: {path} does not fit {config.architecture}: "
            f"{len(missing)} missing tensors (e.g. {missing[:3]}), {len(unexpected)} unexpected"
        )
    return TorchEncoder(
        config,
        model,
        weights_id=digest,
        device=device,
        batch_size=batch_size,
        weights_path=str(path),
    )


def _timm_entry(key: str, **kwargs: Any) -> None:
    config = EncoderConfig(key=key, **kwargs)
    register_encoder(config)(build_timm_encoder)


_timm_entry(
    "path/vit_small_patch16",
    modality="pathology",
    architecture="vit_small_patch16_224",
    embed_dim=384,
    input_px=224,
    mpp=0.5,
    mean=HALF_MEAN,
    std=HALF_STD,
    licence="Health AI Developer Foundations terms of use",
    description="Path Foundation-class ViT-S/16 for H&E tiles at 224 px, 0.5 um/px (384-d).",
    weights=WeightsSpec(
        filename="path_vit_small_patch16.safetensors",
        obtain=(
            "Accept the Path Foundation terms (google/path-foundation), convert its ViT-S/16 "
            "weights to a timm vit_small_patch16_224 state dict (.safetensors or .pt)."
        ),
    ),
)

_timm_entry(
    "derm/bit_resnet101x3",
    modality="dermatology",
    architecture="resnetv2_101x3_bit",
    embed_dim=6144,
    input_px=448,
    mean=HALF_MEAN,
    std=HALF_STD,
    licence="Health AI Developer Foundations terms of use",
    description="Derm Foundation-class BiT ResNet-101x3 for skin photos at 448 px (6144-d).",
    weights=WeightsSpec(
        filename="derm_bit_resnet101x3.safetensors",
        obtain=(
            "Accept the Derm Foundation terms (google/derm-foundation), convert its BiT-R101x3 "
            "weights to a timm resnetv2_101x3_bit state dict (.safetensors or .pt)."
        ),
    ),
)

_timm_entry(
    "generic/vit_small_patch16.imagenet",
    modality="generic",
    architecture="vit_small_patch16_224",
    embed_dim=384,
    input_px=224,
    mpp=0.5,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    licence="Apache-2.0",
    description="ImageNet ViT-S/16 (augreg in21k->in1k): the generic baseline for path/vit_small_patch16.",
    weights=WeightsSpec(
        filename="vit_small_patch16_224.augreg_in21k_ft_in1k.safetensors",
        hf_repo="timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
        hf_filename="model.safetensors",
        obtain="Copy model.safetensors of timm/vit_small_patch16_224.augreg_in21k_ft_in1k (Apache-2.0).",
    ),
)

_timm_entry(
    "generic/bit_resnet101x3.imagenet",
    modality="generic",
    architecture="resnetv2_101x3_bit",
    embed_dim=6144,
    input_px=448,
    mean=HALF_MEAN,
    std=HALF_STD,
    licence="Apache-2.0",
    description="ImageNet-21k BiT-M R101x3: the generic baseline for derm/bit_resnet101x3.",
    weights=WeightsSpec(
        filename="resnetv2_101x3_bit.goog_in21k.safetensors",
        hf_repo="timm/resnetv2_101x3_bit.goog_in21k",
        hf_filename="model.safetensors",
        obtain="Copy model.safetensors of timm/resnetv2_101x3_bit.goog_in21k (Apache-2.0).",
    ),
)

_timm_entry(
    "path/uni",
    modality="pathology",
    architecture="vit_large_patch16_224",
    embed_dim=1024,
    input_px=224,
    mpp=0.5,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    licence="CC BY-NC-ND 4.0 (MahmoodLab/UNI, gated)",
    description="UNI ViT-L/16 pathology foundation model (1024-d).",
    model_kwargs=(("init_values", 1e-5), ("dynamic_img_size", True)),
    weights=WeightsSpec(
        filename="uni_pytorch_model.bin",
        hf_repo="MahmoodLab/UNI",
        hf_filename="pytorch_model.bin",
        obtain="Request access to MahmoodLab/UNI and copy its pytorch_model.bin.",
    ),
)
