"""Images to VAE latents and back: the posterior, its scaling for the UNet, a cache for frozen VAEs.

Images are ``[B, 3, H, W]`` in ``[-1, 1]``. "VAE latents" are what the VAE's encoder produces;
"diffusion latents" are those scaled (and shifted) by the VAE's config, what the UNet sees.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "LatentCache",
    "LatentDistribution",
    "decode_latents",
    "encode_latents",
    "latent_distribution",
    "latent_shape",
    "scale_latents",
    "unscale_latents",
    "vae_scale_factor",
]


def vae_scale_factor(vae) -> int:
    """How many pixels one latent position spans per side (8 for Stable Diffusion's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_shape(vae, image_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(C, h, w)`` of the VAE latents of images of shape ``[..., 3, H, W]``."""
    factor = vae_scale_factor(vae)
    height, width = image_shape[-2:]
    return (vae.config.latent_channels, height // factor, width // factor)


@dataclass
class LatentDistribution:
    """Parameters of the VAE posterior ``q(z | x)``, unscaled; cacheable across steps."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``mean + std * n``, drawing ``n`` exactly as diffusers' DiagonalGaussianDistribution does."""
        from diffusers.utils.torch_utils import randn_tensor

        noise = randn_tensor(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def to(self, *args, **kwargs) -> LatentDistribution:
        return LatentDistribution(self.mean.to(*args, **kwargs), self.logvar.to(*args, **kwargs))

    def __getitem__(self, index) -> LatentDistribution:
        return LatentDistribution(self.mean[index], self.logvar[index])

    @staticmethod
    def cat(parts: Iterable[LatentDistribution]) -> LatentDistribution:
        parts = list(parts)
        return LatentDistribution(torch.cat([p.mean for p in parts]), torch.cat([p.logvar for p in parts]))


def latent_distribution(vae, images: torch.Tensor) -> LatentDistribution:
    """Encode images in ``[-1, 1]`` to the (unscaled) posterior parameters."""
    dist = vae.encode(images.to(vae.dtype)).latent_dist
    return LatentDistribution(dist.mean, dist.logvar)


def scale_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE latents -> diffusion latents: ``(z - shift_factor) * scaling_factor``."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def unscale_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`scale_latents`."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return latents / vae.config.scaling_factor + shift


class LatentCache:
    """Posterior parameters of a frozen VAE, encoded once per image key and reused.

    With a frozen VAE and a deterministic preprocessing an image always has the same posterior,
    so its mean and log-variance are computed once; a fresh latent is still drawn from them
    every step (``get(...).sample()``), which matches encoding every step under the same seed.
    Only valid while the VAE and the images behind the keys do not change.
    """

    def __init__(self) -> None:
        self._store: dict[str, LatentDistribution] = {}

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def clear(self) -> None:
        self._store.clear()

    @torch.no_grad()
    def get(self, vae, images: torch.Tensor, keys: Sequence[str]) -> LatentDistribution:
        """The posterior of each row of ``images`` (``[B, 3, H, W]``), encoding only unseen keys."""
        if len(keys) != images.shape[0]:
            raise ValueError(f"LatentCache.get: {len(keys)} keys for {images.shape[0]} images")
        first_row: dict[str, int] = {}
        for row, key in enumerate(keys):
            if key not in self._store and key not in first_row:
                first_row[key] = row
        if first_row:
            encoded = latent_distribution(vae, images[list(first_row.values())])
            for position, key in enumerate(first_row):
                self._store[key] = encoded[position : position + 1]
        return LatentDistribution.cat(self._store[key] for key in keys)


def encode_latents(
    vae,
    images: torch.Tensor,
    *,
    sample: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Diffusion latents of images in ``[-1, 1]``: a posterior sample (or its mean), scaled."""
    dist = latent_distribution(vae, images)
    return scale_latents(vae, dist.sample(generator) if sample else dist.mean)


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Diffusion latents -> images in ``[-1, 1]`` (not clamped)."""
    return vae.decode(unscale_latents(vae, latents).to(vae.dtype)).sample
