"""SDS-based protections (Xue et al., "Toward effective protection against diffusion based mimicry
through score distillation", ICLR 2024).

The ``L_DM`` gradient is replaced by the score-distillation gradient
``J_E(x')^T (eps_theta(z_t, t, c) - target)``: the UNet runs under ``no_grad`` and only the
encoder is differentiated (about half the memory and twice the speed of AdvDM). SDS(+) climbs,
SDS(-) descends. SDST adds a pull towards a target texture: the step follows
``sign(-sds_weight * g_sds - grad ||E(x') - E(y)||^2)``, i.e. it descends
``sds_weight * SDS + textural``.

The value reported as the loss is ``L_DM`` at the step's draw (for SDST, ``sds_weight * L_DM +
textural``). SDS has no loss whose gradient it is; the quantity a step moves to first order is
``distillation_loss``: ``<eps_theta(z_t) - target, E(x)>`` with the residual held fixed.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from lightning_cat.diffusion import training_target
from lightning_cat.protections.advdm import DIFFUSION_DEFAULTS, PGD_DEFAULTS
from lightning_cat.protections.base import DiffusionDraw, DiffusionObjective, ObjectiveProtection
from lightning_cat.protections.mist import textural_loss
from lightning_cat.protections.targets import TargetLatents

__all__ = ["SDSMinus", "SDSObjective", "SDSPlus", "SDST", "SDSTargetObjective"]


class SDSObjective(DiffusionObjective):
    """``L_DM`` with the score-distillation gradient (UNet not differentiated)."""

    def score_residual(self, latents: torch.Tensor, draw: DiffusionDraw) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eps_theta(z_t) - target, per-image L_DM)`` computed without gradients."""
        with torch.no_grad():
            latents = latents.detach()
            noise, timesteps, condition = self.diffusion_terms(latents, draw)
            noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
            unet_dtype = next(self.unet.parameters()).dtype
            prediction = self.unet(noisy.to(unet_dtype), timesteps, condition.to(unet_dtype)).sample.float()
            target = training_target(self.noise_scheduler, latents, noise, timesteps).float()
            residual = prediction - target
            per_row = F.mse_loss(prediction, target, reduction="none").flatten(1).mean(dim=1)
        return residual, per_row.view(-1, draw.num_draws).mean(dim=1)

    def distillation_loss(self, images: torch.Tensor, draw: DiffusionDraw, residual: torch.Tensor) -> torch.Tensor:
        """Per-image ``<residual, E(x)>`` (mean over draws): the function whose gradient is the SDS
        gradient when ``residual`` is held fixed (``residual`` from :meth:`score_residual`)."""
        latents = self.latents(images, draw)
        per_row = (residual.detach().to(latents.dtype) * latents).flatten(1).sum(dim=1)
        return per_row.float().view(-1, draw.num_draws).mean(dim=1)

    def gradient(self, images: torch.Tensor, draw: DiffusionDraw) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.detach().requires_grad_(True)
        latents = self.latents(images, draw)
        residual, loss = self.score_residual(latents, draw)
        (grad,) = torch.autograd.grad(latents, images, grad_outputs=residual.to(latents.dtype))
        return grad, loss


class SDSTargetObjective(SDSObjective):
    """SDST: descend ``sds_weight * SDS + || E(x') - E(y) ||^2``."""

    def __init__(self, *args: Any, target: TargetLatents, sds_weight: float, **kwargs: Any) -> None:
        super().__init__(*args, ascend=False, **kwargs)
        self.target = target
        self.sds_weight = float(sds_weight)

    def loss(self, images: torch.Tensor, draw: DiffusionDraw) -> torch.Tensor:
        latents = self.latents(images, draw)
        texture = textural_loss(latents, self.target(images), draw.num_draws)
        return self.sds_weight * self.diffusion_loss(latents, draw) + texture

    def distillation_loss(self, images: torch.Tensor, draw: DiffusionDraw, residual: torch.Tensor) -> torch.Tensor:
        """``sds_weight * <residual, E(x)> + textural``: what SDST's step descends, ``residual`` fixed."""
        latents = self.latents(images, draw)
        sds = (residual.detach().to(latents.dtype) * latents).flatten(1).sum(dim=1).float()
        texture = textural_loss(latents, self.target(images), draw.num_draws)
        return self.sds_weight * sds.view(-1, draw.num_draws).mean(dim=1) + texture

    def gradient(self, images: torch.Tensor, draw: DiffusionDraw) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.detach().requires_grad_(True)
        latents = self.latents(images, draw)
        residual, semantic = self.score_residual(latents, draw)
        texture = textural_loss(latents, self.target(images), draw.num_draws)
        # d/dx of (w * <residual, z> + texture): the SDS term and the textural gradient together.
        surrogate = self.sds_weight * (residual.detach() * latents.float()).sum() + texture.sum()
        (grad,) = torch.autograd.grad(surrogate, images)
        return grad, (self.sds_weight * semantic + texture).detach()


class SDSPlus(ObjectiveProtection):
    """SDS(+): climb ``L_DM`` along the SDS gradient. Defaults: 16/255, 1/255, 100 steps."""

    name: ClassVar[str] = "sds_plus"
    defaults: ClassVar[dict[str, Any]] = {**PGD_DEFAULTS, **DIFFUSION_DEFAULTS}
    ascend: ClassVar[bool] = True

    def build_objective(self) -> SDSObjective:
        return SDSObjective(
            **self.diffusion_objective_args(),
            ascend=self.ascend,
        )


class SDSMinus(SDSPlus):
    """SDS(-): descend along the SDS gradient (the stronger variant in the reference study)."""

    name: ClassVar[str] = "sds_minus"
    ascend: ClassVar[bool] = False


class SDST(ObjectiveProtection):
    """SDST: SDS(-) plus a textural pull (``sds_weight`` 5, built-in texture unless ``target_image``)."""

    name: ClassVar[str] = "sdst"
    defaults: ClassVar[dict[str, Any]] = {
        **PGD_DEFAULTS,
        **DIFFUSION_DEFAULTS,
        "target_image": None,
        "sds_weight": 5.0,
    }

    def build_objective(self) -> SDSTargetObjective:
        c = self.components
        return SDSTargetObjective(
            **self.diffusion_objective_args(),
            target=TargetLatents(c.vae, self.options["target_image"], when_missing="texture"),
            sds_weight=self.options["sds_weight"],
        )
