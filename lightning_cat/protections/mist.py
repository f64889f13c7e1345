"""Mist (Liang et al. 2023): textural loss towards a target texture plus a weighted semantic loss.

``|| E(x') - E(y) ||^2 (sum) - w * L_DM(theta; x', c)``, descended: the latent is pulled towards
the target texture ``y`` while ``L_DM`` is pushed up. ``E(x')`` is the scaled posterior sample
the semantic term also uses; ``E(y)`` is the scaled posterior mean of the target (encoded once).
Without ``target_image`` a deterministic built-in texture is the target.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lightning_cat.protections.advdm import DIFFUSION_DEFAULTS, PGD_DEFAULTS
from lightning_cat.protections.base import DiffusionDraw, DiffusionObjective, ObjectiveProtection
from lightning_cat.protections.targets import TargetLatents

__all__ = ["Mist", "MistObjective", "textural_loss"]


def textural_loss(latents: torch.Tensor, target: torch.Tensor, num_draws: int) -> torch.Tensor:
    """Per-image ``sum (z - z_target)^2`` of flattened latents ``[B * K, ...]``, mean over draws."""
    per_row = (latents.float() - target).pow(2).flatten(1).sum(dim=1)
    return per_row.view(-1, num_draws).mean(dim=1)


class MistObjective(DiffusionObjective):
    """``textural - semantic_weight * L_DM``; descended."""

    def __init__(self, *args: Any, target: TargetLatents, semantic_weight: float, **kwargs: Any) -> None:
        super().__init__(*args, ascend=False, **kwargs)
        self.target = target
        self.semantic_weight = float(semantic_weight)

    def loss(self, images: torch.Tensor, draw: DiffusionDraw) -> torch.Tensor:
        latents = self.latents(images, draw)
        texture = textural_loss(latents, self.target(images), draw.num_draws)
        return texture - self.semantic_weight * self.diffusion_loss(latents, draw)


class Mist(ObjectiveProtection):
    """Mist (fused mode). Defaults: 16/255, alpha 1/255, 100 steps, ``semantic_weight`` 1e4, random
    start (the reference's advertorch ``LinfPGDAttack`` default). The reference's target is its
    ``MIST.png`` texture; without ``target_image`` a built-in texture stands in."""

    name: ClassVar[str] = "mist"
    defaults: ClassVar[dict[str, Any]] = {
        **PGD_DEFAULTS,
        **DIFFUSION_DEFAULTS,
        "random_start": True,
        "target_image": None,
        "semantic_weight": 1e4,
    }

    def build_objective(self) -> MistObjective:
        c = self.components
        return MistObjective(
            **self.diffusion_objective_args(),
            target=TargetLatents(c.vae, self.options["target_image"], when_missing="texture"),
            semantic_weight=self.options["semantic_weight"],
        )
