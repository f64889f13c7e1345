"""The CAT objective: reconstruct the protected images through the adapted VAE.

As released (Peng et al., ICML 2025): ``mean || D'(E'(x_a).sample()) - x_a ||^2`` over the
PROTECTED images ``x_a`` only, in ``[-1, 1]``; no clean image is ever used. An LPIPS term can
replace or join the squared error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from lightning_cat.diffusion.latents import latent_distribution
from lightning_cat.options import choices

__all__ = ["CAT_LOSSES", "CATLoss", "CATLossName", "CATLossOutput", "cat_reconstruction"]

CATLossName = Literal["mse", "lpips", "mse+lpips"]
CAT_LOSSES = choices(CATLossName)


def cat_reconstruction(vae, images: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """``D(E(x).sample())`` for images in ``[-1, 1]``, not clamped.

    Args:
        vae: an ``AutoencoderKL`` or a ``PeftModel`` around one.
        images: ``[B, 3, H, W]`` in ``[-1, 1]``.
        noise: standard normal noise shaped like the latents; ``None`` decodes the posterior mean.
    """
    posterior = latent_distribution(vae, images)
    latents = posterior.mean if noise is None else posterior.mean + posterior.std * noise.to(posterior.mean)
    return vae.decode(latents).sample


@dataclass
class CATLossOutput:
    """The CAT loss and its parts (``None`` for a part that is off)."""

    loss: torch.Tensor
    mse: torch.Tensor | None = None
    lpips: torch.Tensor | None = None


class CATLoss(torch.nn.Module):
    """``mse``, ``lpips`` or ``mse + lpips_weight * lpips`` between ``D'(E'(x_a))`` and ``x_a``.

    Args:
        loss: which terms.
        lpips: a frozen LPIPS network (``lightning_cat.perceptual.load_lpips``); needed unless ``mse``.
        lpips_weight: weight of the LPIPS term under ``mse+lpips``.

    Raises:
        ValueError: for an unknown ``loss``, or an LPIPS loss without an LPIPS network.
    """

    def __init__(self, loss: CATLossName = "mse", lpips: torch.nn.Module | None = None, lpips_weight: float = 1.0):
        super().__init__()
        if loss not in CAT_LOSSES:
            raise ValueError(f"CATLoss: loss={loss!r} is not one of {list(CAT_LOSSES)}")
        if loss != "mse" and lpips is None:
            raise ValueError(f"CATLoss: loss={loss!r} needs an LPIPS network (lightning_cat.perceptual.load_lpips)")
        self.loss = loss
        self.lpips = lpips if loss != "mse" else None
        self.lpips_weight = lpips_weight

    def forward(self, vae, images: torch.Tensor, noise: torch.Tensor | None = None) -> CATLossOutput:
        """The loss of one batch of protected images (``noise``: see :func:`cat_reconstruction`)."""
        reconstruction = cat_reconstruction(vae, images, noise).float()
        target = images.float()
        mse = F.mse_loss(reconstruction, target) if self.loss in ("mse", "mse+lpips") else None
        perceptual = None
        if self.lpips is not None:
            dtype = next(self.lpips.parameters()).dtype
            perceptual = self.lpips(reconstruction.to(dtype), target.to(dtype)).float().mean()
        if self.loss == "mse":
            total = mse
        elif self.loss == "lpips":
            total = perceptual
        else:
            total = mse + self.lpips_weight * perceptual
        return CATLossOutput(loss=total, mse=mse, lpips=perceptual)
