"""Generic Stable Diffusion plumbing in plain torch/diffusers: loading a checkpoint by path, hub id
or short name, the offline tiny models, latents, prompts, noise and the denoising objective."""

from lightning_cat.diffusion.checkpointing import (
    enable_gradient_checkpointing,
    gradient_checkpointing,
    layerwise_checkpoint,
)
from lightning_cat.diffusion.denoising import diffusion_loss, sample_noise_and_timesteps, snr_weights, training_target
from lightning_cat.diffusion.hub import HUB_MODELS, REMOVED_HUB_IDS
from lightning_cat.diffusion.latents import (
    LatentCache,
    LatentDistribution,
    decode_latents,
    encode_latents,
    latent_distribution,
    latent_shape,
    scale_latents,
    unscale_latents,
    vae_scale_factor,
)
from lightning_cat.diffusion.loading import (
    COMPONENTS,
    SCHEDULERS,
    DiffusionComponents,
    SchedulerName,
    build_pipeline,
    check_model_name,
    load_components,
    load_inference_scheduler,
    load_upscale_pipeline,
    load_vae,
    resolve_model_path,
    weight_dtype,
)
from lightning_cat.diffusion.testbed import TESTBED_MODELS, TESTBED_RESOLUTION, testbed_model_path
from lightning_cat.diffusion.text import encode_prompts, tokenize_prompts
from lightning_cat.diffusion.tiny import TINY_MODELS, TINY_RESOLUTION, ensure_tiny_model
from lightning_cat.diffusion.tiny_upscaler import TINY_UPSCALERS, ensure_tiny_upscaler

__all__ = [
    "COMPONENTS",
    "HUB_MODELS",
    "REMOVED_HUB_IDS",
    "SCHEDULERS",
    "TESTBED_MODELS",
    "TESTBED_RESOLUTION",
    "TINY_MODELS",
    "TINY_RESOLUTION",
    "TINY_UPSCALERS",
    "DiffusionComponents",
    "SchedulerName",
    "LatentCache",
    "LatentDistribution",
    "build_pipeline",
    "check_model_name",
    "decode_latents",
    "diffusion_loss",
    "enable_gradient_checkpointing",
    "encode_latents",
    "encode_prompts",
    "ensure_tiny_model",
    "ensure_tiny_upscaler",
    "gradient_checkpointing",
    "latent_distribution",
    "layerwise_checkpoint",
    "latent_shape",
    "load_components",
    "load_inference_scheduler",
    "load_upscale_pipeline",
    "load_vae",
    "resolve_model_path",
    "sample_noise_and_timesteps",
    "scale_latents",
    "snr_weights",
    "testbed_model_path",
    "tokenize_prompts",
    "training_target",
    "unscale_latents",
    "vae_scale_factor",
    "weight_dtype",
]
