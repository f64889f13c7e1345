"""Seeded sampling from a (customized) Stable Diffusion pipeline, in plain diffusers.

Every image gets its own generator seeded with its own seed, so an image depends only on its
(prompt, seed) and not on which batch, process or device made it::

    components, record = load_customized_components("outputs/dreambooth/lora-tiny")
    pipeline = build_pipeline(components, scheduler="ddim")
    images = generate_images(pipeline, ["a photo of sks person"] * 2, seeds=[0, 1], num_inference_steps=50)

(:func:`~lightning_cat.customization.load_customized_components`,
:func:`~lightning_cat.diffusion.build_pipeline`.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_cat.images import save_png

__all__ = ["generate_images", "write_generated_images"]


def generate_images(
    pipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    negative_prompt: str | Sequence[str] | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
) -> torch.Tensor:
    """Generate one image per (prompt, seed); returns float ``[B, 3, H, W]`` in ``[-1, 1]`` on CPU.

    Each image draws its initial latents (and any scheduler noise) from a CPU generator seeded
    with its seed, so results do not depend on batch composition or device.

    Raises:
        ValueError: if ``prompts`` and ``seeds`` differ in length or are empty.
    """
    prompts = list(prompts)
    if len(prompts) != len(seeds) or not prompts:
        raise ValueError(f"generate_images: need one seed per prompt, got {len(prompts)} prompts, {len(seeds)} seeds")
    if isinstance(negative_prompt, str):
        negative_prompt = [negative_prompt] * len(prompts)
    generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
    output = pipeline(
        prompt=prompts,
        negative_prompt=list(negative_prompt) if negative_prompt is not None else None,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        generator=generators,
        output_type="pt",
    )
    return (output.images.float() * 2.0 - 1.0).cpu()


def write_generated_images(
    pipeline,
    prompt: str,
    paths: Sequence[str | os.PathLike],
    seeds: Sequence[int],
    *,
    batch_size: int = 4,
    progress: bool = True,
    description: str = "generating images",
    **options: Any,
) -> list[Path]:
    """Generate ``prompt`` once per seed and save each image atomically as PNG at its path.

    ``options`` go to :func:`generate_images`. A tqdm bar shows progress (``progress``).
    """
    from tqdm.auto import tqdm

    if len(paths) != len(seeds):
        raise ValueError(f"write_generated_images: {len(paths)} paths for {len(seeds)} seeds")
    if batch_size < 1:
        raise ValueError(f"write_generated_images: batch_size must be >= 1, got {batch_size}")
    written: list[Path] = []
    with tqdm(total=len(paths), desc=description, unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            chunk_seeds = list(seeds[start : start + batch_size])
            images = generate_images(pipeline, [prompt] * len(chunk_seeds), chunk_seeds, **options)
            for image, path in zip(images, paths[start : start + batch_size], strict=True):
                save_png(image, path)
                written.append(Path(path))
            bar.update(len(chunk_seeds))
    return written
