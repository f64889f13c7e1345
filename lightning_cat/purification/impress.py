"""IMPRESS: pull the image back to where the VAE is consistent, staying perceptually close.

Cao et al., "IMPRESS: Evaluating the Resilience of Imperceptible Perturbations Against
Unauthorized Data Usage in Diffusion-Based Generative AI" (NeurIPS 2023). A protective
perturbation makes the image inconsistent under the autoencoder, ``D(E(x)) != x``; IMPRESS
optimizes the image ``x`` (initialized at the protected ``x_p``) to minimize

    ||D(E(x)) - x||^2 + weight * max(LPIPS(x, x_p) - margin, 0)

with Adam and a cosine learning-rate schedule, clamping ``x`` to the image range after each step.
Liu et al.'s settings (METHODS.md §3): weight 0.1, margin 0.1, lr 0.01. The reference code
(``impress.py``) uses LPIPS-VGG, the VAE's posterior mode for ``E``, a mean squared error,
``CosineAnnealingLR`` down to 1e-5 and 3000 iterations by default; it optionally adds Gaussian
noise to the starting point (``init_noise`` here, off by default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from lightning_cat.diffusion import load_vae
from lightning_cat.perceptual import LPIPS_NETS, load_lpips
from lightning_cat.purification.pretrained import PretrainedPurifier

__all__ = ["IMPRESS", "ImpressResult", "impress_objective", "impress_optimize"]


def impress_objective(
    vae, lpips, images: torch.Tensor, protected: torch.Tensor, weight: float, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image IMPRESS objective ``[B]`` and its parts ``(consistency [B], lpips [B])``.

    ``consistency`` is the mean squared error of ``D(E(x))`` (posterior mean) against ``x`` in
    ``[-1, 1]`` units; ``lpips`` is ``LPIPS(x, x_p)``.
    """
    vae_dtype = next(vae.parameters()).dtype
    reconstruction = vae(images.to(vae_dtype), sample_posterior=False).sample.float()
    consistency = (reconstruction - images).pow(2).flatten(1).mean(1)
    distance = lpips(images, protected).flatten()
    return consistency + weight * (distance - margin).clamp(min=0.0), consistency, distance


@dataclass
class ImpressResult:
    """The purified images and the objective's history (per iteration, summed over the batch)."""

    images: torch.Tensor
    objective: list[float] = field(default_factory=list)
    consistency: list[float] = field(default_factory=list)
    lpips: list[float] = field(default_factory=list)


def impress_optimize(
    vae,
    lpips,
    protected: torch.Tensor,
    *,
    iterations: int,
    weight: float = 0.1,
    margin: float = 0.1,
    lr: float = 0.01,
    min_lr: float = 1e-5,
    init_noise: float = 0.0,
    generator: torch.Generator | None = None,
    progress_bar: bool = False,
) -> ImpressResult:
    """Run IMPRESS on ``protected`` ``[B, 3, H, W]`` in ``[-1, 1]``; images are optimized independently.

    The batch objective is the sum of the per-image objectives, so each image gets the gradient
    it would get alone. ``init_noise`` is a standard deviation in ``[0, 1]`` intensity units.
    The recorded history holds the objective of the iterate before each step.
    """
    with torch.inference_mode(False), torch.enable_grad():  # also inside Lightning's predict
        return _impress_loop(
            vae, lpips, protected, iterations, weight, margin, lr, min_lr, init_noise, generator, progress_bar
        )


def _impress_loop(vae, lpips, protected, iterations, weight, margin, lr, min_lr, init_noise, generator, progress_bar):
    """The body of :func:`impress_optimize`, run with gradients enabled."""
    from tqdm.auto import tqdm

    protected = protected.detach().float().clone()  # a normal tensor even if made in inference mode
    start = protected.clone()
    if init_noise > 0:
        draw_device = generator.device if generator is not None else protected.device
        noise = torch.randn(protected.shape, generator=generator, device=draw_device)
        start = (start + 2.0 * init_noise * noise.to(protected.device)).clamp(-1.0, 1.0)
    images = start.requires_grad_(True)
    optimizer = torch.optim.Adam([images], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations, eta_min=min_lr)
    result = ImpressResult(images=protected)
    for _ in tqdm(range(iterations), desc="impress", leave=False, disable=not progress_bar):
        optimizer.zero_grad(set_to_none=True)
        objective, consistency, distance = impress_objective(vae, lpips, images, protected, weight, margin)
        loss = objective.sum()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            images.clamp_(-1.0, 1.0)
        result.objective.append(loss.item())
        result.consistency.append(consistency.sum().item())
        result.lpips.append(distance.sum().item())
    result.images = images.detach()
    return result


class IMPRESS(PretrainedPurifier):
    """IMPRESS purification with the customization model's VAE (see the module docstring).

    Args:
        pretrained_model_name_or_path: the checkpoint whose ``vae`` is used (``tiny`` offline).
        iterations: Adam steps (reference default 3000).
        weight: weight of the LPIPS hinge (0.1).
        margin: LPIPS margin below which closeness is free (0.1).
        lr: Adam learning rate (0.01), annealed by a cosine schedule to ``min_lr``.
        min_lr: final learning rate of the cosine schedule (reference 1e-5).
        init_noise: std of Gaussian noise added to the start, ``[0, 1]`` intensity units (0: none).
        lpips_net: LPIPS backbone (the reference uses ``vgg``).
        lpips_backbone_weights: local torchvision state dict of that backbone (never downloaded).
        lpips_random_backbone: random LPIPS backbone, for tests only.
        revision, variant, dtype, progress_bar: see :class:`PretrainedPurifier`.

    Raises:
        ValueError: for bad options, or when neither ``lpips_backbone_weights`` nor
            ``lpips_random_backbone`` is given.
        FileNotFoundError: if ``lpips_backbone_weights`` does not exist.
    """

    name = "impress"

    def __init__(
        self,
        pretrained_model_name_or_path: str = "sd21-base",
        iterations: int = 3000,
        weight: float = 0.1,
        margin: float = 0.1,
        lr: float = 0.01,
        min_lr: float = 1e-5,
        init_noise: float = 0.0,
        lpips_net: Literal["alex", "vgg", "squeeze"] = "vgg",
        lpips_backbone_weights: str | None = None,
        lpips_random_backbone: bool = False,
        revision: str | None = None,
        variant: str | None = None,
        dtype: Literal["float32", "float16", "bfloat16"] = "float32",
        progress_bar: bool = False,
    ) -> None:
        super().__init__(pretrained_model_name_or_path, revision, variant, dtype, progress_bar)
        owner = type(self).__name__
        if iterations < 1:
            raise ValueError(f"{owner}: iterations must be >= 1, got {iterations}")
        if weight < 0:
            raise ValueError(f"{owner}: weight must be >= 0, got {weight}")
        if margin < 0:
            raise ValueError(f"{owner}: margin must be >= 0, got {margin}")
        if lr <= 0:
            raise ValueError(f"{owner}: lr must be > 0, got {lr}")
        if not 0 <= min_lr <= lr:
            raise ValueError(f"{owner}: min_lr must be in [0, lr={lr}], got {min_lr}")
        if init_noise < 0:
            raise ValueError(f"{owner}: init_noise must be >= 0, got {init_noise}")
        if lpips_net not in LPIPS_NETS:
            raise ValueError(f"{owner}: lpips_net={lpips_net!r} is not one of {list(LPIPS_NETS)}")
        if lpips_backbone_weights is None and not lpips_random_backbone:
            raise ValueError(
                f"{owner}: LPIPS needs its ImageNet backbone from a local file: set lpips_backbone_weights to a "
                f"torchvision {lpips_net} state dict (nothing is downloaded), or lpips_random_backbone=True in tests"
            )
        if lpips_backbone_weights is not None and not Path(os.fspath(lpips_backbone_weights)).expanduser().is_file():
            raise FileNotFoundError(f"{owner}: lpips_backbone_weights '{lpips_backbone_weights}' does not exist")
        self.iterations = iterations
        self.weight = weight
        self.margin = margin
        self.lr = lr
        self.min_lr = min_lr
        self.init_noise = init_noise
        self.lpips_net = lpips_net
        self.lpips_backbone_weights = lpips_backbone_weights
        self.lpips_random_backbone = lpips_random_backbone

    def load(self) -> dict[str, Any]:
        vae = load_vae(self.pretrained_model_name_or_path, revision=self.revision, variant=self.variant)
        weights = None if self.lpips_backbone_weights is None else Path(self.lpips_backbone_weights).expanduser()
        lpips = load_lpips(self.lpips_net, weights, random_backbone=self.lpips_random_backbone)
        return {"vae": vae, "lpips": lpips}

    def optimize(self, images: torch.Tensor, generator: torch.Generator | None = None) -> ImpressResult:
        """Run IMPRESS and keep the objective's history (``purify`` returns only the images)."""
        models = self.models(images.device)
        models["lpips"].float()  # LPIPS stays fp32: its distances are compared with the margin
        return impress_optimize(
            models["vae"],
            models["lpips"],
            images,
            iterations=self.iterations,
            weight=self.weight,
            margin=self.margin,
            lr=self.lr,
            min_lr=self.min_lr,
            init_noise=self.init_noise,
            generator=generator,
            progress_bar=self.progress_bar,
        )

    def purify(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.optimize(images, generator).images
