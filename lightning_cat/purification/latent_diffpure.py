"""Latent DiffPure: SDEdit in the customization model's own latent space."""

from __future__ import annotations

from typing import Any, Literal

import torch

from lightning_cat.diffusion import decode_latents, encode_prompts, latent_distribution, load_components, scale_latents
from lightning_cat.diffusion.latents import vae_scale_factor
from lightning_cat.purification.pretrained import PretrainedPurifier
from lightning_cat.purification.sdedit import sdedit_latents, sdedit_timesteps

__all__ = ["LatentDiffPure", "LatentDiffusionPurifier"]


class LatentDiffusionPurifier(PretrainedPurifier):
    """Shared machinery of purifiers that run SDEdit with a Stable Diffusion checkpoint.

    Images are encoded by the checkpoint's VAE (posterior mean), noised to ``t* - 1`` and denoised
    with DDPM ancestral steps by its UNet (see :mod:`.sdedit`), then decoded.

    Args:
        pretrained_model_name_or_path: the Stable Diffusion checkpoint (the customization model).
        timestep: ``t*``, forward diffusion steps (of the scheduler's 1000) applied to the latent.
        num_inference_steps: reverse steps from ``t* - 1`` to 0 (``None``: all ``t*``).
        prompt: conditioning prompt (``""``: unconditional, as DiffPure's unconditional model).
        guidance_scale: classifier-free guidance against the empty prompt (``<= 1``: off).
        revision, variant, dtype, progress_bar: see :class:`PretrainedPurifier`.
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str,
        timestep: int,
        num_inference_steps: int | None = None,
        prompt: str = "",
        guidance_scale: float = 1.0,
        revision: str | None = None,
        variant: str | None = None,
        dtype: Literal["float32", "float16", "bfloat16"] = "float32",
        progress_bar: bool = False,
    ) -> None:
        super().__init__(pretrained_model_name_or_path, revision, variant, dtype, progress_bar)
        owner = type(self).__name__
        if not 1 <= timestep <= 1000:
            raise ValueError(f"{owner}: timestep must be in [1, 1000], got {timestep}")
        if num_inference_steps is not None and not 1 <= num_inference_steps <= timestep:
            raise ValueError(
                f"{owner}: num_inference_steps must be in [1, timestep={timestep}], got {num_inference_steps}"
            )
        if guidance_scale < 0:
            raise ValueError(f"{owner}: guidance_scale must be >= 0, got {guidance_scale}")
        self.timestep = timestep
        self.num_inference_steps = num_inference_steps
        self.prompt = prompt
        self.guidance_scale = guidance_scale

    def load(self) -> dict[str, Any]:
        from diffusers import DDPMScheduler

        parts = load_components(
            self.pretrained_model_name_or_path,
            revision=self.revision,
            variant=self.variant,
            parts=("tokenizer", "text_encoder", "vae", "unet", "noise_scheduler"),
        )
        num_train = parts.noise_scheduler.config.num_train_timesteps
        if self.timestep > num_train:
            raise ValueError(f"{type(self).__name__}: timestep={self.timestep} exceeds the model's {num_train} steps")
        # Latents are not bounded by [-1, 1]: never clip the predicted x0.
        scheduler = DDPMScheduler.from_config(parts.noise_scheduler.config, clip_sample=False, thresholding=False)
        return {
            "tokenizer": parts.tokenizer,
            "text_encoder": parts.text_encoder,
            "vae": parts.vae,
            "unet": parts.unet,
            "scheduler": scheduler,
        }

    def check_size(self, height: int, width: int, vae) -> None:
        factor = vae_scale_factor(vae)
        if height % factor or width % factor:
            raise ValueError(
                f"{type(self).__name__}: images of {height}x{width} px cannot pass the VAE; sides must be "
                f"multiples of {factor}"
            )

    def sdedit_images(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Encode, SDEdit and decode a batch ``[N, 3, H, W]`` in ``[-1, 1]`` (float32 result, clamped)."""
        models = self.models(images.device)
        vae, unet = models["vae"], models["unet"]
        self.check_size(*images.shape[-2:], vae)
        latents = scale_latents(vae, latent_distribution(vae, images).mean).float()
        prompts = [self.prompt] * len(images)
        context = encode_prompts(models["tokenizer"], models["text_encoder"], prompts)
        uncond = None
        if self.guidance_scale > 1.0:
            uncond = encode_prompts(models["tokenizer"], models["text_encoder"], [""] * len(images))
        purified = sdedit_latents(
            unet,
            models["scheduler"],
            latents,
            context,
            sdedit_timesteps(self.timestep, self.num_inference_steps),
            uncond_hidden_states=uncond,
            guidance_scale=self.guidance_scale,
            generator=generator,
            progress_bar=self.progress_bar,
        )
        return decode_latents(vae, purified).float().clamp(-1.0, 1.0)


class LatentDiffPure(LatentDiffusionPurifier):
    """DiffPure in latent space (SDEdit): noise the VAE latent to ``t*`` and denoise it.

    DiffPure (Nie et al. 2022) diffuses the image to ``t*`` (0.1 of the schedule on CIFAR-10)
    and runs the reverse process; GrIDPure's DiffPure baseline uses ``pure_steps=100`` of 1000.
    Here the customization model's own VAE latent is purified (Liu et al.'s latent variant), with
    the same default ``t* = 100`` and all 100 DDPM reverse steps.

    Args:
        pretrained_model_name_or_path: the Stable Diffusion checkpoint (``tiny`` offline).
        timestep: ``t*`` (default 100).
        num_inference_steps: reverse steps (``None``: ``t*``).
        prompt, guidance_scale, revision, variant, dtype, progress_bar: see
            :class:`LatentDiffusionPurifier`.
    """

    name = "latent_diffpure"

    def __init__(
        self,
        pretrained_model_name_or_path: str = "sd21-base",
        timestep: int = 100,
        num_inference_steps: int | None = None,
        prompt: str = "",
        guidance_scale: float = 1.0,
        revision: str | None = None,
        variant: str | None = None,
        dtype: Literal["float32", "float16", "bfloat16"] = "float32",
        progress_bar: bool = False,
    ) -> None:
        super().__init__(
            pretrained_model_name_or_path,
            timestep,
            num_inference_steps,
            prompt,
            guidance_scale,
            revision,
            variant,
            dtype,
            progress_bar,
        )

    def purify(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sdedit_images(images, generator)
