"""CAAT (Xu et al., CVPR 2024, "Perturbing attention gives you more bang for the buck").

Joint optimisation over the set: each step, one DreamBooth loss on the perturbed images (plus
class-prior rows when given) is back-propagated once; its gradient gives a sign *ascent* step on
the images and an AdamW *descent* step on the cross-attention key/value projections
(``attn2.to_k`` / ``attn2.to_v``) of the UNet, as in Custom Diffusion.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lightning_cat.customization import dreambooth_loss
from lightning_cat.diffusion import LatentDistribution, latent_distribution, scale_latents
from lightning_cat.diffusion.latents import latent_shape
from lightning_cat.optimization import apply_gradients
from lightning_cat.protections.advdm import PGD_DEFAULTS
from lightning_cat.protections.base import draw_diffusion
from lightning_cat.protections.surrogate import SURROGATE_DEFAULTS, SurrogateProtection
from lightning_cat.seeding import image_generators

__all__ = ["CAAT"]


class CAAT(SurrogateProtection):
    """CAAT. Defaults: 0.05 model units (6.375/255), alpha 0.005 (0.6375/255), 250 joint steps,
    AdamW lr 1e-5 on cross-attention k/v, prompt "a photo of a person", class prompt "person"."""

    name: ClassVar[str] = "caat"
    trained_parts: ClassVar[tuple[str, ...]] = ("unet",)
    defaults: ClassVar[dict[str, Any]] = {
        **PGD_DEFAULTS,
        "eps_255": 6.375,
        "alpha_255": 0.6375,
        "steps": 250,
        "prompt": "a photo of a person",
        "class_prompt": "person",
        "timestep_range": None,
        "surrogate_lr": 1e-5,
        "prior_loss_weight": SURROGATE_DEFAULTS["prior_loss_weight"],
        "max_grad_norm": SURROGATE_DEFAULTS["max_grad_norm"],
    }

    def _protect(self, clean, keys, seed, data, progress) -> torch.Tensor:
        o = self.options
        theta = self.make_surrogate(seed, "caat", copy=not self.in_place, trainable="cross_attention_kv")
        self.surrogate = theta
        vae, scheduler = self.components.vae, self.components.noise_scheduler
        try:
            class_set = theta.encode(data.class_images)
            optimizer = theta.optimizer()  # one optimizer over the whole run, as in the reference
            generators = image_generators(seed, keys)
            adv = self.pgd.start(clean, generators)
            num = clean.shape[0]
            for step in range(o["steps"]):
                draw = draw_diffusion(
                    generators,
                    latent_shape(vae, clean.shape),
                    num_train_timesteps=scheduler.config.num_train_timesteps,
                    timestep_range=o["timestep_range"],
                ).to(self.device)
                images = adv.detach().requires_grad_(True)
                dist = latent_distribution(vae, images)
                latents = scale_latents(vae, dist.mean + dist.std * draw.latent_noise[:, 0])
                noise, timesteps = draw.noise[:, 0], draw.timesteps[:, 0]
                if class_set is not None:
                    prior: LatentDistribution = theta.class_batch(class_set, num)
                    prior_latents = scale_latents(vae, prior.sample(theta.generator).to(self.device))
                    prior_noise = torch.randn(prior_latents.shape, generator=theta.generator).to(self.device)
                    prior_t = torch.randint(
                        0, scheduler.config.num_train_timesteps, (num,), generator=theta.generator
                    ).to(self.device)
                    latents = torch.cat([latents, prior_latents])
                    noise, timesteps = torch.cat([noise, prior_noise]), torch.cat([timesteps, prior_t])
                condition = theta.condition(num, latents.shape[0] - num)
                result = dreambooth_loss(
                    theta.unet,
                    scheduler,
                    latents,
                    condition,
                    num_instance=num if class_set is not None else None,
                    prior_loss_weight=o["prior_loss_weight"],
                    noise=noise,
                    timesteps=timesteps,
                )
                # One backward: gradients for the k/v weights (stepped by AdamW) and for the images.
                apply_gradients(result.loss, optimizer, theta.parameters(), o["max_grad_norm"])
                adv = self.pgd.step(adv, clean, images.grad, ascend=True, step=step)
                progress("pgd", result.instance.detach())
            self.objective = self.make_objective(theta)
            return self.pgd.finalize(adv, clean)
        finally:
            theta.release()
