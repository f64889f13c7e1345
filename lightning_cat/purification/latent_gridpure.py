"""LatentGrIDPure: GrIDPure (iterated DiffPure on overlapping tiles) in a latent diffusion model.

Zhao et al., "Can Protective Perturbation Safeguard Personal Data from Being Exploited by Stable
Diffusion?" (CVPR 2024). Each iteration cuts the image into overlapping square tiles (256 px with
stride 128 on 512 px images in the reference, i.e. half the image and half a tile) plus one
"corner mosaic" tile holding the four image corners (half a tile each), purifies every tile with
DiffPure, averages the tiles back (each pixel over the tiles covering it) and blends:
``x <- (1 - gamma) * merged + gamma * x``. Reference settings: ``pure_steps=10`` (``t* = 10`` of
1000 DDPM steps), ``pure_iter_num=20``, ``gamma=0.1``. The reference purifies tiles in pixel space
with an ImageNet guided-diffusion model and rounds to 8 bits between iterations; here tiles are
purified in the customization model's latent space and kept in float between iterations.
"""

from __future__ import annotations

from typing import Literal

import torch

from lightning_cat.diffusion.latents import vae_scale_factor
from lightning_cat.purification.latent_diffpure import LatentDiffusionPurifier

__all__ = ["LatentGrIDPure", "corner_mosaic", "merge_tiles", "tile_origins"]


def tile_origins(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` every ``stride`` pixels, the last flush with the end."""
    if not 0 < tile <= size:
        raise ValueError(f"tile size must be in [1, {size}], got {tile}")
    origins = list(range(0, size - tile + 1, stride))
    if origins[-1] != size - tile:
        origins.append(size - tile)
    return origins


def corner_mosaic(images: torch.Tensor, tile: int) -> torch.Tensor:
    """``[B, 3, tile, tile]``: the four ``tile/2`` corners of each image, each in its own quadrant."""
    half = tile // 2
    top = torch.cat([images[..., :half, :half], images[..., :half, -half:]], dim=-1)
    bottom = torch.cat([images[..., -half:, :half], images[..., -half:, -half:]], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def merge_tiles(
    tiles: torch.Tensor,
    boxes: list[tuple[int, int]],
    tile: int,
    height: int,
    width: int,
    mosaics: torch.Tensor | None = None,
) -> torch.Tensor:
    """Average purified tiles ``[B, n, 3, tile, tile]`` (and corner mosaics) back into images."""
    batch = tiles.shape[0]
    total = tiles.new_zeros(batch, 3, height, width)
    count = tiles.new_zeros(1, 1, height, width)
    for index, (top, left) in enumerate(boxes):
        total[..., top : top + tile, left : left + tile] += tiles[:, index]
        count[..., top : top + tile, left : left + tile] += 1
    if mosaics is not None:
        half = tile // 2
        # (quadrant of the mosaic, corner of the image) as (rows, cols) slices
        corners = [
            ((slice(0, half), slice(0, half)), (slice(0, half), slice(0, half))),
            ((slice(0, half), slice(half, tile)), (slice(0, half), slice(width - half, width))),
            ((slice(half, tile), slice(0, half)), (slice(height - half, height), slice(0, half))),
            ((slice(half, tile), slice(half, tile)), (slice(height - half, height), slice(width - half, width))),
        ]
        for (mosaic_rows, mosaic_cols), (rows, cols) in corners:
            total[..., rows, cols] += mosaics[..., mosaic_rows, mosaic_cols]
            count[..., rows, cols] += 1
    return total / count


class LatentGrIDPure(LatentDiffusionPurifier):
    """GrIDPure (grid iterative DiffPure) run in a latent diffusion model, tile by tile in its latent space.

    Args:
        pretrained_model_name_or_path: the Stable Diffusion checkpoint (``tiny`` offline).
        timestep: ``t*`` per tile and iteration (reference ``pure_steps`` 10).
        num_inference_steps: reverse steps per purification (``None``: ``t*``).
        iterations: purification rounds (reference ``pure_iter_num`` 20).
        gamma: weight of the previous image in the moving average (reference 0.1).
        tile_size: tile side in pixels (``None``: half the shorter image side, the reference's
            256 on 512 px images); a multiple of the VAE's downsampling factor.
        tile_stride: offset between tiles (``None``: half a tile, the reference's 128).
        corner_mosaic: also purify the mosaic of the four corners (as the reference does).
        prompt, guidance_scale, revision, variant, dtype, progress_bar: see
            :class:`LatentDiffusionPurifier`.
    """

    name = "latent_gridpure"

    def __init__(
        self,
        pretrained_model_name_or_path: str = "sd21-base",
        timestep: int = 10,
        num_inference_steps: int | None = None,
        iterations: int = 20,
        gamma: float = 0.1,
        tile_size: int | None = None,
        tile_stride: int | None = None,
        corner_mosaic: bool = True,
        prompt: str = "",
        guidance_scale: float = 1.0,
        revision: str | None = None,
        variant: str | None = None,
        dtype: Literal["float32", "float16", "bfloat16"] = "float32",
        progress_bar: bool = False,
    ) -> None:
        super().__init__(
            pretrained_model_name_or_path,
            timestep,
            num_inference_steps,
            prompt,
            guidance_scale,
            revision,
            variant,
            dtype,
            progress_bar,
        )
        owner = type(self).__name__
        if iterations < 1:
            raise ValueError(f"{owner}: iterations must be >= 1, got {iterations}")
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"{owner}: gamma must be in [0, 1), got {gamma}")
        if tile_size is not None and (tile_size < 2 or tile_size % 2):
            raise ValueError(f"{owner}: tile_size must be an even number >= 2, got {tile_size}")
        if tile_stride is not None and tile_stride < 1:
            raise ValueError(f"{owner}: tile_stride must be >= 1, got {tile_stride}")
        if tile_size is not None and tile_stride is not None and tile_stride > tile_size:
            raise ValueError(f"{owner}: tile_stride={tile_stride} leaves gaps between tiles of {tile_size} px")
        self.iterations = iterations
        self.gamma = gamma
        self.tile_size = tile_size
        self.tile_stride = tile_stride
        self.corner_mosaic = corner_mosaic

    def tiling(self, height: int, width: int, vae) -> tuple[int, int]:
        """``(tile, stride)`` for an image of ``height x width`` px."""
        factor = vae_scale_factor(vae)
        tile = self.tile_size
        if tile is None:
            tile = max(factor, (min(height, width) // 2) // (2 * factor) * (2 * factor))
        stride = self.tile_stride if self.tile_stride is not None else max(1, tile // 2)
        owner = type(self).__name__
        if tile > min(height, width):
            raise ValueError(f"{owner}: tile_size={tile} exceeds the {height}x{width} px image")
        if tile % factor or (self.corner_mosaic and (tile // 2) * 2 != tile):
            raise ValueError(f"{owner}: tile_size={tile} must be a multiple of the VAE factor {factor} (and even)")
        return tile, stride

    def purify(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        from tqdm.auto import tqdm

        vae = self.models(images.device)["vae"]
        batch, _, height, width = images.shape
        tile, stride = self.tiling(height, width, vae)
        boxes = [
            (top, left) for top in tile_origins(height, tile, stride) for left in tile_origins(width, tile, stride)
        ]
        current = images.float()
        for _ in tqdm(range(self.iterations), desc="latent_gridpure", leave=False, disable=not self.progress_bar):
            tiles = torch.stack([current[..., t : t + tile, left : left + tile] for t, left in boxes], dim=1)
            parts = [tiles.flatten(0, 1)]
            if self.corner_mosaic:
                parts.append(corner_mosaic(current, tile))
            purified = self.sdedit_images(torch.cat(parts), generator)
            purified_tiles = purified[: batch * len(boxes)].unflatten(0, (batch, len(boxes)))
            mosaics = purified[batch * len(boxes) :] if self.corner_mosaic else None
            merged = merge_tiles(purified_tiles, boxes, tile, height, width, mosaics)
            current = (1.0 - self.gamma) * merged + self.gamma * current
        return current
