"""Glaze-style style cloaking: the objective the Glaze paper describes (Shan et al., USENIX Security 2023).

Glaze itself is a closed-source application. Its paper (section 5) cloaks an artwork ``x`` against
style mimicry by pulling the image features of ``x + delta`` onto those of a style-transferred
copy ``Omega(x, T)`` of ``x`` in a different style ``T``, under a perceptual budget::

    min_delta  || Phi(x + delta) - Phi(Omega(x, T)) ||_2^2  +  lpips_weight * max(LPIPS(x + delta, x) - lpips_budget, 0)

Here ``Phi`` is the target model's image feature extractor, Stable Diffusion's VAE encoder
(posterior mean), and ``Omega(x, T)`` is either a user-supplied style image (``target_image``) or
Stable Diffusion img2img of ``x`` with a style prompt (``style_prompt``, strength
``style_strength``), made once per image from its own seed.

What differs from the product: the feature extractor, the style transfer model, the target-style
choice and the optimiser of the Glaze application are not published; this uses the library's
PGD (sign steps, descending the objective) with a hard L_inf cap ``eps_255`` beside the LPIPS
penalty, and SD img2img (DDPM ancestral steps from ``style_strength * T``) for ``Omega``. The
paper's perceptual budget is ``p = 0.07`` (LPIPS); its penalty weight is adapted during the
optimisation, where here it is the fixed ``lpips_weight``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lightning_cat.diffusion import decode_latents, encode_latents, latent_distribution
from lightning_cat.diffusion.text import encode_prompts
from lightning_cat.perceptual import load_lpips
from lightning_cat.protections.advdm import PGD_DEFAULTS
from lightning_cat.protections.base import Objective, ObjectiveProtection
from lightning_cat.protections.targets import load_target_image
from lightning_cat.purification.sdedit import sdedit_latents, sdedit_timesteps
from lightning_cat.seeding import image_generators

__all__ = ["GlazeStyle", "StyleCloakObjective"]


class StyleCloakObjective(Objective):
    """Per image: ``||mu(E(x')) - target||^2 + lpips_weight * max(LPIPS(x', x) - lpips_budget, 0)``; descended.

    Args:
        vae: the VAE whose encoder is the feature extractor.
        target: encoder means ``[B, C, h, w]`` of the style targets, one per image.
        clean: the images ``[B, 3, H, W]`` being cloaked (the LPIPS reference).
        lpips: a frozen LPIPS network.
        lpips_budget: LPIPS allowed before the penalty starts.
        lpips_weight: weight of the penalty.
    """

    ascend = False

    def __init__(self, vae, target, clean, lpips, lpips_budget: float, lpips_weight: float) -> None:
        self.vae = vae
        self.target = target.detach().float()
        self.clean = clean.detach()
        self.lpips = lpips
        self.lpips_budget = float(lpips_budget)
        self.lpips_weight = float(lpips_weight)

    def loss(self, images: torch.Tensor, draw: Any = None) -> torch.Tensor:
        features = latent_distribution(self.vae, images).mean.float()
        distance = (features - self.target.to(features.device)).flatten(1).pow(2).sum(dim=1)
        perceptual = self.lpips(images.float(), self.clean.to(images.device).float()).flatten()
        return distance + self.lpips_weight * (perceptual - self.lpips_budget).clamp_min(0)


class GlazeStyle(ObjectiveProtection):
    """Glaze-style cloaking toward a style target. Defaults: 16/255 L_inf cap, 1/255 steps, 200 steps,
    LPIPS budget 0.07 (the paper's p), penalty weight 10, img2img at strength 0.5 with 25 steps and
    guidance 7.5 toward ``style_prompt``."""

    name: ClassVar[str] = "glaze_style"
    defaults: ClassVar[dict[str, Any]] = {
        **PGD_DEFAULTS,
        "steps": 200,
        "target_image": None,
        "style_prompt": "an impressionist oil painting with thick visible brush strokes",
        "style_strength": 0.5,
        "style_steps": 25,
        "style_guidance": 7.5,
        "lpips_budget": 0.07,
        "lpips_weight": 10.0,
        "lpips_net": "alex",
        "lpips_backbone_weights": None,
        "lpips_random_backbone": False,
    }

    def __init__(self, components, **kwargs: Any) -> None:
        super().__init__(components, **kwargs)
        o = self.options
        if o["lpips_backbone_weights"] is None and not o["lpips_random_backbone"]:
            raise ValueError(
                f"{self.name}: the LPIPS penalty needs lpips_backbone_weights (a local torchvision "
                f"{o['lpips_net']} state dict; nothing is downloaded), or lpips_random_backbone=True in tests"
            )
        self._lpips = None

    @property
    def lpips(self):
        if self._lpips is None:
            o = self.options
            self._lpips = load_lpips(
                o["lpips_net"], o["lpips_backbone_weights"], random_backbone=o["lpips_random_backbone"]
            ).to(self.device)
        return self._lpips

    @torch.no_grad()
    def style_targets(self, clean: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """``Omega(x, T)`` for each image: the style image, or img2img of ``x`` toward ``style_prompt``."""
        o = self.options
        height, width = clean.shape[-2:]
        if o["target_image"] is not None:
            target = load_target_image(o["target_image"], height, width).to(clean.device)
            return target.expand_as(clean).clone()
        c = self.components
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config(c.noise_scheduler.config)
        start = max(1, round(o["style_strength"] * scheduler.config.num_train_timesteps))
        timesteps = sdedit_timesteps(start, min(o["style_steps"], start))
        condition = encode_prompts(c.tokenizer, c.text_encoder, [o["style_prompt"]])
        uncond = encode_prompts(c.tokenizer, c.text_encoder, [""])
        targets = []
        for image, generator in zip(clean, generators, strict=True):
            latents = encode_latents(c.vae, image.unsqueeze(0), sample=False)
            styled = sdedit_latents(
                c.unet,
                scheduler,
                latents,
                condition,
                timesteps,
                uncond_hidden_states=uncond,
                guidance_scale=o["style_guidance"],
                generator=generator,
            )
            targets.append(decode_latents(c.vae, styled).clamp(-1, 1))
        return torch.cat(targets)

    def _protect(self, clean, keys, seed, data, progress) -> torch.Tensor:
        o = self.options
        generators = image_generators(seed, keys)
        style = self.style_targets(clean, image_generators(seed, keys, purpose="glaze-style"))
        with torch.no_grad():
            target = latent_distribution(self.components.vae, style).mean
        self._objective = StyleCloakObjective(
            self.components.vae, target, clean, self.lpips, o["lpips_budget"], o["lpips_weight"]
        )
        return self.pgd.run(clean, self._objective, generators, on_step=lambda loss: progress("pgd", loss))
