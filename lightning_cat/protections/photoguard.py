"""PhotoGuard's encoder attack (Salman et al., ICML 2023): pull ``E_mu(x')`` onto a target latent.

``|| E_mu(x') - z_target ||_2`` per image (the posterior mean, unscaled), descended with a
random start and a step size decaying linearly to ``alpha / 100``. The target is the zero
latent, or the latent of ``target_image``. Only the VAE is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from lightning_cat.diffusion import latent_distribution
from lightning_cat.protections.base import Objective, ObjectiveProtection
from lightning_cat.protections.targets import TargetLatents

__all__ = ["EncoderAttackObjective", "PhotoGuard"]


class EncoderAttackObjective(Objective):
    """``|| E_mu(x) - z_target ||_2`` per image; descended. Deterministic (no draw).

    ``target`` maps an image batch to its target latents (a :class:`TargetLatents`, or any callable).
    """

    ascend = False

    def __init__(self, vae, target: TargetLatents | Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.vae = vae
        self.target = target

    def loss(self, images: torch.Tensor, draw: Any = None) -> torch.Tensor:
        mean = latent_distribution(self.vae, images).mean.float()
        return (mean - self.target(images)).flatten(1).norm(dim=1)


class PhotoGuard(ObjectiveProtection):
    """PhotoGuard encoder attack. Defaults: 0.06 model units (7.65/255), alpha 0.02 (2.55/255)
    decaying linearly to alpha/100, 1000 steps, random start, zero target latent."""

    name: ClassVar[str] = "photoguard"
    parts: ClassVar[tuple[str, ...]] = ("vae",)
    defaults: ClassVar[dict[str, Any]] = {
        "eps_255": 7.65,
        "alpha_255": 2.55,
        "steps": 1000,
        "norm": "linf",
        "random_start": True,
        "step_schedule": "linear",
        "final_step_fraction": 0.01,
        "target_image": None,
        "gradient_checkpointing": False,
    }

    @property
    def device(self) -> torch.device:
        return next(self.components.vae.parameters()).device

    def build_objective(self) -> EncoderAttackObjective:
        vae = self.components.vae
        return EncoderAttackObjective(
            vae, TargetLatents(vae, self.options["target_image"], when_missing="zero", scaled=False)
        )
