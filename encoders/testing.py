"""Deterministic encoders for tests: seeded random-init tiny timm models on the real torch path.

They are registered under ``test/`` and refused by the CLI unless ``--allow-test-encoder``.
Their vectors carry no meaning beyond being a fixed, deterministic function of the pixels.
"""

from __future__ import annotations

from lamina.encoders.base import Encoder, TorchEncoder
from lamina.encoders.config import HALF_MEAN, HALF_STD, EncoderConfig
from lamina.encoders.registry import register_encoder
from lamina.encoders.weights import load_state_dict, require_weights

SEED = 0


def build_seeded_timm(
    config: EncoderConfig, weights: str | None = None, device: str = "cpu", batch_size: int = 64
) -> Encoder:
    import timm
    import torch

    # Initialise on the CPU from a private generator state so results do not depend on
    # what else the process has drawn from torch's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = timm.create_model(
            config.architecture, pretrained=False, num_classes=0, **dict(config.model_kwargs)
        )
    weights_id = f"seed={SEED}"
    path = None
    if weights is not None:
        path, weights_id = require_weights(config, weights)
        model.load_state_dict(load_state_dict(path), strict=True)
    return TorchEncoder(
        config,
        model,
        weights_id=weights_id,
        device=device,
        batch_size=batch_size,
        weights_path=str(path) if path else None,
    )


register_encoder(
    EncoderConfig(
        key="test/tiny-vit",
        modality="any",
        architecture="vit_tiny_patch16_224",
        embed_dim=64,
        input_px=64,
        mpp=0.5,
        mean=HALF_MEAN,
        std=HALF_STD,
        licence="n/a (random initialisation)",
        description="Seeded random-init 2-block ViT (patch 16, 64-d) for tests.",
        model_kwargs=(("img_size", 64), ("embed_dim", 64), ("depth", 2), ("num_heads", 2)),
        test_only=True,
    )
)(build_seeded_timm)

register_encoder(
    EncoderConfig(
        key="test/tiny-resnet",
        modality="any",
        architecture="resnetv2_18",
        embed_dim=512,
        input_px=64,
        mean=HALF_MEAN,
        std=HALF_STD,
        licence="n/a (random initialisation)",
        description="Seeded random-init pre-activation ResNetV2-18 (BiT family, 512-d) for tests.",
        test_only=True,
    )
)(build_seeded_timm)
