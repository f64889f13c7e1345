"""Target images of the targeted objectives (PhotoGuard, Mist, SDST) and Mist's built-in texture.

A target is loaded once per image size, preprocessed by the library's :class:`ImageTransform`
(shorter side resized, center crop, upscaling allowed) and encoded by the VAE once.
"""

from __future__ import annotations

import math

import torch

from lightning_cat.diffusion import latent_distribution, scale_latents
from lightning_cat.diffusion.latents import latent_shape
from lightning_cat.images import ImageTransform, load_image

__all__ = ["TargetLatents", "default_target_texture", "load_target_image"]


def default_target_texture(height: int, width: int) -> torch.Tensor:
    """A deterministic, high-contrast, colourful texture ``[3, H, W]`` in ``[-1, 1]``.

    Used by Mist and SDST when no ``target_image`` is given: two crossed square-wave gratings
    (periods 12 and 20 px) modulated by concentric rings of period 16 px, a different phase per
    channel. It is built from the pixel grid alone, so every run and every machine gets the same
    target.
    """
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    stripes = torch.sign(torch.sin(2 * math.pi * (u + v) / 12)) * torch.sign(torch.sin(2 * math.pi * (u - v) / 20))
    radius = torch.sqrt((u - width / 2) ** 2 + (v - height / 2) ** 2)
    channels = [
        0.6 * stripes + 0.4 * torch.sign(torch.sin(2 * math.pi * radius / 16 + phase))
        for phase in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)
    ]
    return torch.stack(channels).clamp(-1, 1).to(torch.float32)


def load_target_image(path: str, height: int, width: int) -> torch.Tensor:
    """The target image at ``path`` as ``[3, H, W]`` in ``[-1, 1]`` (square sizes only)."""
    if height != width:
        raise ValueError(f"target images need square inputs, got {height}x{width}")
    transform = ImageTransform(resolution=height, small_images="upscale")
    return transform(load_image(path))


class TargetLatents:
    """Encodes a target image (or the default texture) once per size and caches the latents.

    Args:
        vae: the VAE.
        path: target image file, or ``None``.
        when_missing: ``texture`` (Mist's built-in texture) or ``zero`` (PhotoGuard's zero latent).
        scaled: return diffusion latents (scaled posterior mean) instead of the raw posterior mean.
    """

    def __init__(self, vae, path: str | None, *, when_missing: str = "texture", scaled: bool = True) -> None:
        if when_missing not in ("texture", "zero"):
            raise ValueError(f"when_missing must be 'texture' or 'zero', got {when_missing!r}")
        self.vae = vae
        self.path = path
        self.when_missing = when_missing
        self.scaled = scaled
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def image(self, height: int, width: int) -> torch.Tensor | None:
        """The target image at this size (``None`` for the zero latent)."""
        if self.path is not None:
            return load_target_image(self.path, height, width)
        return default_target_texture(height, width) if self.when_missing == "texture" else None

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Target latents ``[1, C, h, w]`` for images of this size (on their device)."""
        size = (images.shape[-2], images.shape[-1])
        if size not in self._cache:
            target = self.image(*size)
            if target is None:
                latents = torch.zeros((1, *latent_shape(self.vae, images.shape)), device=images.device)
            else:
                mean = latent_distribution(self.vae, target.unsqueeze(0).to(images.device)).mean
                latents = scale_latents(self.vae, mean) if self.scaled else mean
            self._cache[size] = latents.detach().float()
        return self._cache[size].to(images.device)
