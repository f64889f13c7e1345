"""How visible a perturbation is: PSNR, SSIM and LPIPS between protected and clean images.

Each metric is the mean over images of a per-image value, computed in floating point on images
in ``[-1, 1]`` (mapped to ``[0, 1]``; never on uint8, so nothing wraps around). ``update(image,
clean)`` takes the protected (or purified, generated, ...) batch first and its clean reference
second, the same signature as :class:`~lightning_cat.metrics.LatentDistortion`.

Example::

    psnr = PSNR()
    psnr.update(protected, clean)
    psnr.compute()  # dB, averaged over images
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from lightning_cat.metrics.mean import RunningMean
from lightning_cat.perceptual import load_lpips

__all__ = ["LPIPSDistance", "PSNR", "SSIM", "per_image_psnr"]


def _check_pair(name: str, image: torch.Tensor, clean: torch.Tensor) -> None:
    if image.shape != clean.shape or image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(
            f"{name}: expects two batches [B, 3, H, W] of the same shape, got {tuple(image.shape)} and "
            f"{tuple(clean.shape)}"
        )


def per_image_psnr(image: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image, ``[B]`` (float64), for images in ``[-1, 1]`` (peak = the [0, 1] range).

    Identical images give ``inf``.
    """
    difference = (image.double() - clean.double()) / 2.0  # in [0, 1] units
    mse = difference.pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)


class _PerImageMean(RunningMean):
    def _per_image(self, image: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, image: torch.Tensor, clean: torch.Tensor) -> None:
        """Add a batch of images and their clean references (``[B, 3, H, W]`` in ``[-1, 1]``)."""
        _check_pair(type(self).__name__, image, clean)
        with torch.autocast(image.device.type, enabled=False):
            values = self._per_image(image.float(), clean.float().to(image.device))
        self.add(values)


class PSNR(_PerImageMean):
    """Mean per-image PSNR (dB) between images and their clean references; ``inf`` if identical."""

    higher_is_better = True

    def _per_image(self, image: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        return per_image_psnr(image, clean)


class SSIM(_PerImageMean):
    """Mean per-image SSIM (Gaussian window, as Wang et al. 2004), images mapped to ``[0, 1]``.

    Args:
        kernel_size: Gaussian window size.
        sigma: Gaussian window standard deviation.
        **kwargs: torchmetrics ``Metric`` options.
    """

    higher_is_better = True

    def __init__(self, kernel_size: int = 11, sigma: float = 1.5, **kwargs) -> None:
        super().__init__(**kwargs)
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"SSIM: kernel_size must be an odd integer >= 3, got {kernel_size}")
        self.kernel_size = kernel_size
        self.sigma = sigma

    def _per_image(self, image: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        return structural_similarity_index_measure(
            (image.double() + 1) / 2,
            (clean.double() + 1) / 2,
            gaussian_kernel=True,
            sigma=self.sigma,
            kernel_size=self.kernel_size,
            data_range=1.0,
            reduction="none",
        )


class LPIPSDistance(_PerImageMean):
    """Mean LPIPS (v0.1) distance to the clean references; the backbone comes from a local file.

    Args:
        net: backbone family (``alex``, ``vgg``, ``squeeze``).
        backbone_weights: torchvision state dict of the backbone (required unless ``random_backbone``).
        random_backbone: random backbone, for tests only.
        **kwargs: torchmetrics ``Metric`` options.
    """

    higher_is_better = False

    def __init__(
        self,
        net: Literal["alex", "vgg", "squeeze"] = "alex",
        backbone_weights: str | os.PathLike | None = None,
        random_backbone: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.lpips = load_lpips(net, backbone_weights, random_backbone=random_backbone)

    def train(self, mode: bool = True) -> LPIPSDistance:
        super().train(mode)
        self.lpips.eval()  # LPIPS' linear heads carry dropout: never active in a metric
        return self

    def _per_image(self, image: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.lpips(image, clean).flatten()
