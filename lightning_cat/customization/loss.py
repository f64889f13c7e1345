"""The DreamBooth objective and its batch: instance rows first, class-prior rows after them.

Plain torch over :func:`lightning_cat.diffusion.denoising.diffusion_loss`; the DreamBooth module
and the surrogates of the coupled protections (FSMG, ASPL, MetaCloak, CAAT) train with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_cat.diffusion.denoising import diffusion_loss

__all__ = ["DreamBoothLoss", "DreamBoothRows", "dreambooth_loss", "dreambooth_rows"]


@dataclass
class DreamBoothLoss:
    """The DreamBooth objective and its parts (``prior`` is ``None`` without prior preservation)."""

    loss: torch.Tensor
    instance: torch.Tensor
    prior: torch.Tensor | None = None


def dreambooth_loss(
    unet,
    noise_scheduler,
    latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    *,
    num_instance: int | None = None,
    prior_loss_weight: float = 1.0,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    snr_gamma: float | None = None,
) -> DreamBoothLoss:
    """DreamBooth loss: ``L_DM(instance) + prior_loss_weight * L_DM(class prior)``.

    The batch holds the instance rows first and the class-prior rows after them (one UNet
    forward for both); ``num_instance`` says where they split (``None``: no prior rows).
    """
    batch = latents.shape[0]
    num_instance = batch if num_instance is None else num_instance
    if not 0 < num_instance <= batch:
        raise ValueError(f"num_instance must be in [1, {batch}], got {num_instance}")
    per_sample = diffusion_loss(
        unet,
        noise_scheduler,
        latents,
        encoder_hidden_states,
        noise=noise,
        timesteps=timesteps,
        generator=generator,
        snr_gamma=snr_gamma,
    )
    instance = per_sample[:num_instance].mean()
    if num_instance == batch:
        return DreamBoothLoss(loss=instance, instance=instance)
    prior = per_sample[num_instance:].mean()
    return DreamBoothLoss(loss=instance + prior_loss_weight * prior, instance=instance, prior=prior)


@dataclass
class DreamBoothRows:
    """One DreamBooth batch as a single stack: instance rows first, class-prior rows after.

    ``keys`` name each row's image (its file path) for latent caching, ``None`` when the batch
    carries no paths.
    """

    images: torch.Tensor
    prompts: list[str]
    num_instance: int
    keys: list[str] | None = None

    @property
    def num_prior(self) -> int:
        return self.images.shape[0] - self.num_instance


def dreambooth_rows(batch: dict) -> DreamBoothRows:
    """Stack a DreamBooth batch dict (``image``, ``prompt``; optional ``class_image``, ``class_prompt``).

    Paths (``path`` / ``class_path``) become the row keys when present for every row.
    """
    images, prompts = batch["image"], list(batch["prompt"])
    if len(prompts) != images.shape[0]:
        raise ValueError(f"dreambooth_rows: {len(prompts)} prompts for {images.shape[0]} instance images")
    keys = list(batch["path"]) if "path" in batch else None
    num_instance = images.shape[0]
    if "class_image" in batch:
        class_prompts = list(batch["class_prompt"])
        if len(class_prompts) != batch["class_image"].shape[0]:
            raise ValueError(
                f"dreambooth_rows: {len(class_prompts)} class prompts for {batch['class_image'].shape[0]} class images"
            )
        images = torch.cat([images, batch["class_image"].to(images)])
        prompts += class_prompts
        keys = keys + list(batch["class_path"]) if keys is not None and "class_path" in batch else None
    return DreamBoothRows(images=images, prompts=prompts, num_instance=num_instance, keys=keys)
