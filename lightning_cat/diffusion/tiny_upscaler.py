"""The offline tiny x4 upscaler (``tiny-upscaler``): a ``StableDiffusionUpscalePipeline`` folder.

Shaped like the SD x4 upscaler (``sd-x4-upscaler``): the UNet takes the noisy latent (4
channels) concatenated with the noised low-resolution image (3 channels) and the noise level as a
class label; the VAE decodes latents at the low-resolution size to images 4x larger (scaling
factor 0.08333); the sampling scheduler is a v-prediction DDIM and the low-resolution image is
noised by a DDPM scheduler up to ``max_noise_level`` 350. Weights are random; the tokenizer is the
real CLIP one (see :mod:`lightning_cat.diffusion.tiny`). Built once, deterministically, into
:func:`~lightning_cat.diffusion.tiny.cache_dir` and loaded through ``from_pretrained`` like the
real checkpoint. 16 px inputs give 64 px outputs.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch

from lightning_cat.diffusion.tiny import build_once, diffusers_version, write_clip_tokenizer

__all__ = ["TINY_UPSCALERS", "ensure_tiny_upscaler", "write_upscaler_index"]

#: Names of tiny upscalers accepted wherever a ``pretrained_model_name_or_path`` is.
TINY_UPSCALERS = ("tiny-upscaler",)
# Bump when the architecture or the written files change, so stale caches are not reused.
_FORMAT = 1
_SEED = 0
_MAX_NOISE_LEVEL = 350


def _build(folder: Path) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(_SEED)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=7,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        num_class_embeds=1000,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=0.08333,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=32,
            vocab_size=49408,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            hidden_act="gelu",
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    low_res_scheduler = DDPMScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    scheduler.save_pretrained(folder / "scheduler")
    low_res_scheduler.save_pretrained(folder / "low_res_scheduler")
    write_clip_tokenizer(folder / "tokenizer")
    write_upscaler_index(folder)


def write_upscaler_index(folder: Path) -> None:
    """``model_index.json`` of a ``StableDiffusionUpscalePipeline`` folder (no safety checker or
    watermarker; DDIM sampling, DDPM noise on the low-resolution image up to level 350)."""
    model_index = {
        "_class_name": "StableDiffusionUpscalePipeline",
        "diffusers_version": diffusers_version(),
        "feature_extractor": [None, None],
        "low_res_scheduler": ["diffusers", "DDPMScheduler"],
        "max_noise_level": _MAX_NOISE_LEVEL,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "watermarker": [None, None],
    }
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2), encoding="utf-8")


@cache
def ensure_tiny_upscaler(name: str = "tiny-upscaler") -> Path:
    """Build the tiny upscaler ``name`` once in the cache and return its diffusers folder."""
    if name not in TINY_UPSCALERS:
        raise ValueError(f"unknown tiny upscaler {name!r}; choose one of {list(TINY_UPSCALERS)}")
    return build_once(f"{name}-f{_FORMAT}", _build)
