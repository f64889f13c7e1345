"""Purification study: does a purifier undo a protection's latent distortion, and at what cost?

For a VAE, clean images and their protected copies, :func:`purification_study` measures with
:class:`~lightning_cat.metrics.LatentDistortion` (always against the CLEAN images):

* ``clean``: the VAE's own reconstruction error on the clean images;
* ``protected``: the protected images, unpurified;
* ``<name> on protected``: each purifier applied to the protected images (what a defense
  trains on);
* ``<name> on clean``: the same purifier on the clean images (its cost when nothing is protected).

Besides the latent and reconstruction columns each row has ``pixel_psnr``: the PSNR of the
(purified) image itself against the clean one. Each image is purified with the seed the
purified-set writer would use (:func:`~lightning_cat.purification.purify_images`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from lightning_cat.metrics.latent_distortion import LatentDistortion
from lightning_cat.metrics.similarity import per_image_psnr
from lightning_cat.purification.base import Purifier, purify_images

__all__ = ["PurificationRow", "format_purification_table", "purification_study"]

_COLUMNS = {
    "latent_mse_relative": "latent MSE rel. vs clean",
    "recon_mse": "recon MSE vs clean",
    "recon_psnr": "recon PSNR vs clean (dB)",
    "pixel_psnr": "image PSNR vs clean (dB)",
}


@dataclass
class PurificationRow:
    """One condition of the study and its measurements."""

    name: str
    metrics: dict[str, float]


def _measure(vae, images: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    metric = LatentDistortion(vae, keys=["latent_mse_relative", "recon_mse", "recon_psnr"]).to(clean.device)
    metric.update(images, clean)
    values = {key: value.item() for key, value in metric.compute().items()}
    values["pixel_psnr"] = per_image_psnr(images, clean).mean().item()
    return values


def purification_study(
    vae,
    clean: torch.Tensor,
    protected: torch.Tensor,
    purifiers: Mapping[str, Purifier],
    stems: Sequence[str],
    seed: int = 0,
) -> list[PurificationRow]:
    """The study's rows (see the module docstring) for ``purifiers`` by name.

    Args:
        vae: the VAE whose latents are measured (frozen).
        clean: clean images ``[B, 3, H, W]`` in ``[-1, 1]``.
        protected: their protected copies, same order.
        purifiers: purifiers by the name used in the rows.
        stems: the images' file stems (per-image seeds).
        seed: base seed of the purifications.

    Raises:
        ValueError: if the clean and protected batches or the stems do not match.
    """
    if clean.shape != protected.shape or len(stems) != len(clean):
        raise ValueError(
            f"clean {tuple(clean.shape)}, protected {tuple(protected.shape)} and {len(stems)} stems must match"
        )
    rows = [
        PurificationRow("clean", _measure(vae, clean, clean)),
        PurificationRow("protected", _measure(vae, protected, clean)),
    ]
    for name, purifier in tqdm(purifiers.items(), desc="purifiers", unit="purifier"):
        for source, images in (("protected", protected), ("clean", clean)):
            purified = purify_images(purifier, images, stems, seed)
            rows.append(PurificationRow(f"{name} on {source}", _measure(vae, purified, clean)))
    return rows


def format_purification_table(rows: Sequence[PurificationRow]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| condition | " + " | ".join(_COLUMNS.values()) + " |",
        "|---|" + "---:|" * len(_COLUMNS),
    ]
    for row in rows:
        cells = []
        for key in _COLUMNS:
            value = row.metrics[key]
            cells.append(
                "inf"
                if math.isinf(value)
                else f"{value:.4f}"
                if key.endswith("mse") or "relative" in key
                else f"{value:.2f}"
            )
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
