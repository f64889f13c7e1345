"""AdvDM (Liang et al., ICML 2023): PGD on the diffusion training loss of the protected image.

``L_DM(theta; x', c)`` with gradients through the VAE encoder and the UNet, uniform timesteps
and fresh noise each step. AdvDM(+) climbs it (the reference method); AdvDM(-) descends it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lightning_cat.protections.base import DiffusionObjective, ObjectiveProtection

__all__ = ["AdvDMMinus", "AdvDMPlus", "DIFFUSION_DEFAULTS", "PGD_DEFAULTS"]

#: PGD defaults shared by the AdvDM family (16/255, 1/255 steps, 100 steps, no random start).
PGD_DEFAULTS: dict[str, Any] = {
    "eps_255": 16.0,
    "alpha_255": 1.0,
    "steps": 100,
    "norm": "linf",
    "random_start": False,
    "step_schedule": "constant",
    "final_step_fraction": 0.01,
    # How to compute, not what: recompute the VAE's and UNet's activations in the backward pass.
    "gradient_checkpointing": False,
}

#: Options of every objective built on ``L_DM``.
DIFFUSION_DEFAULTS: dict[str, Any] = {"prompt": "a photo", "timestep_range": None, "num_noise_draws": 1}


class AdvDMPlus(ObjectiveProtection):
    """AdvDM(+): ascend ``L_DM`` (the reference AdvDM). The reference runs advertorch's
    ``LinfPGDAttack``, whose random start is on by default, hence ``random_start`` here."""

    name: ClassVar[str] = "advdm_plus"
    defaults: ClassVar[dict[str, Any]] = {**PGD_DEFAULTS, **DIFFUSION_DEFAULTS, "random_start": True}
    ascend: ClassVar[bool] = True

    def build_objective(self) -> DiffusionObjective:
        return DiffusionObjective(
            **self.diffusion_objective_args(),
            ascend=self.ascend,
        )


class AdvDMMinus(AdvDMPlus):
    """AdvDM(-): descend ``L_DM`` (makes the image *easier* to learn; a contrast in studies)."""

    name: ClassVar[str] = "advdm_minus"
    ascend: ClassVar[bool] = False
