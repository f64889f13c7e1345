"""The architecture-only SD x4 upscaler (``sd-x4-upscaler-shape``), for noisy upscaling at scale.

The published architecture of ``stabilityai/stable-diffusion-x4-upscaler`` with random weights:
its 473 M UNet (7 input channels: the noisy latent and the noised low-resolution image; the
noise level as a class label; cross-attention only in the first three levels), its 3-level VAE
(scaling factor 0.08333) and SD 2's OpenCLIP-H text encoder and tokenizer. The values come from
the model's original config (``configs/stable-diffusion/x4-upscaling.yaml`` of
Stability-AI/stablediffusion: model_channels 256, channel_mult [1, 2, 2, 4], attention at
levels 2, 4, 8, disable_self_attentions [True, True, True, False], 8 heads, context_dim 1024,
linear projections, num_classes 1000; the VAE's ch 128, ch_mult [1, 2, 4]; max_noise_level 350)
written in diffusers' names. Memory and time do not depend on the weights' values; the outputs
mean nothing. Built once into the cache (about 3.5 GB) and loaded through ``from_pretrained``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import torch

from lightning_cat.diffusion.shape import SD2_TEXT_ENCODER, write_sd2_tokenizer
from lightning_cat.diffusion.tiny import build_once
from lightning_cat.diffusion.tiny_upscaler import write_upscaler_index

__all__ = ["SHAPE_UPSCALERS", "ensure_shape_upscaler", "shape_upscaler_configs"]

#: Names of architecture-only upscalers accepted wherever a ``pretrained_model_name_or_path`` is.
SHAPE_UPSCALERS = ("sd-x4-upscaler-shape",)
# Bump when the written files change, so stale caches are not reused.
_FORMAT = 1
_SEED = 0


def shape_upscaler_configs() -> dict[str, dict[str, Any]]:
    """The ``unet`` / ``vae`` / ``text_encoder`` / scheduler configs of the x4 upscaler."""
    unet = {
        "sample_size": 128,
        "in_channels": 7,
        "out_channels": 4,
        "block_out_channels": [256, 512, 512, 1024],
        "layers_per_block": 2,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "only_cross_attention": [True, True, True, False],
        "attention_head_dim": 8,  # diffusers' legacy name: 8 heads per attention layer
        "cross_attention_dim": 1024,
        "use_linear_projection": True,
        "num_class_embeds": 1000,
        "norm_num_groups": 32,
        "norm_eps": 1e-05,
        "act_fn": "silu",
    }
    vae = {
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": [128, 256, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "sample_size": 256,
        "scaling_factor": 0.08333,
    }
    # LDM's "linear" schedule from 1e-4 to 2e-2 is diffusers' scaled_linear.
    betas = {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
    scheduler = {**betas, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": dict(SD2_TEXT_ENCODER),
        "scheduler": {**scheduler, "prediction_type": "v_prediction"},
        "low_res_scheduler": betas,
    }


def _build(folder: Path) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = shape_upscaler_configs()
    builders = {
        "unet": lambda: UNet2DConditionModel(**configs["unet"]),
        "vae": lambda: AutoencoderKL(**configs["vae"]),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
    }
    for index, (part, make) in enumerate(builders.items()):
        torch.manual_seed(_SEED + index)
        model = make()  # one component in memory at a time
        model.save_pretrained(folder / part, safe_serialization=True)
        del model
    DDIMScheduler(**configs["scheduler"]).save_pretrained(folder / "scheduler")
    DDPMScheduler(**configs["low_res_scheduler"]).save_pretrained(folder / "low_res_scheduler")
    write_sd2_tokenizer(folder / "tokenizer")
    write_upscaler_index(folder)


@cache
def ensure_shape_upscaler(name: str = "sd-x4-upscaler-shape") -> Path:
    """Build the architecture-only upscaler ``name`` once in the cache and return its folder."""
    if name not in SHAPE_UPSCALERS:
        raise ValueError(f"unknown shape upscaler {name!r}; choose one of {list(SHAPE_UPSCALERS)}")
    return build_once(f"{name}-f{_FORMAT}", _build)
