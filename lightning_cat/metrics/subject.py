"""Weight-free measures of generated images: closeness to the subject, and "image, not noise".

* :class:`NearestSubjectSimilarity`: for each generated image, the best SSIM (or PSNR) against any
  of the subject's clean images, averaged over images. It needs no learned weights, so it means
  the same offline as anywhere: a customization that learned the subject reproduces its layout,
  colours and local structure, so some subject image matches each sample; a model that never saw
  the subject matches none. It is the subject metric of the ``testbed`` model (whose subjects are
  objects and scenes, where a face identity embedder does not apply).
* :func:`pixel_correlation` / :class:`PixelCorrelation`: the correlation between horizontally and
  vertically neighbouring pixels. Photographs of objects and scenes are smooth at the pixel scale
  (scikit-image's astronaut, chelsea, coffee, rocket and camera give 0.90-0.95 at 64 px), i.i.d.
  noise gives 0 and the random ``tiny`` model's coloured noise 0.49; so samples of such a prompt
  whose mean is 0.7 or more are images, not noise. Texture photographs (brick, grass, gravel,
  the Hubble deep field) are noise-like at 64 px (0.38-0.48): the measure does not apply to them.
  It does not rule out smooth garbage (an untrained UNet decoded by a trained VAE gives 0.83),
  so the testbed's "not noise" check pairs it with BRISQUE (see tests/test_testbed_model.py).
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from lightning_cat.images import ImageTransform
from lightning_cat.metrics.folders import iter_image_batches
from lightning_cat.metrics.mean import RunningMean
from lightning_cat.metrics.similarity import per_image_psnr

__all__ = ["NearestSubjectSimilarity", "PixelCorrelation", "nearest_subject_similarity", "pixel_correlation"]

SimilarityKind = Literal["ssim", "psnr"]


def _check_images(name: str, images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: expects images [B, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")


def pixel_correlation(images: torch.Tensor) -> torch.Tensor:
    """Per image ``[B]``: Pearson correlation of each pixel with its right and lower neighbours
    (all channels pooled). A constant image gives 0."""
    _check_images("pixel_correlation", images)
    x = images.double()
    pairs = [(x[..., :, :-1], x[..., :, 1:]), (x[..., :-1, :], x[..., 1:, :])]
    a = torch.cat([p.flatten(1) for p, _ in pairs], 1)
    b = torch.cat([q.flatten(1) for _, q in pairs], 1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    denominator = (a.pow(2).sum(1) * b.pow(2).sum(1)).sqrt()
    return torch.where(denominator > 0, (a * b).sum(1) / denominator.clamp_min(1e-30), torch.zeros_like(denominator))


def nearest_subject_similarity(
    images: torch.Tensor, subject: torch.Tensor, kind: SimilarityKind = "ssim"
) -> torch.Tensor:
    """Per image ``[B]``: the highest SSIM (data range [0, 1]) or PSNR (dB) against any subject image."""
    _check_images("nearest_subject_similarity", images)
    _check_images("nearest_subject_similarity (subject)", subject)
    if images.shape[-2:] != subject.shape[-2:]:
        raise ValueError(
            f"nearest_subject_similarity: images are {tuple(images.shape[-2:])} px but the subject images are "
            f"{tuple(subject.shape[-2:])}"
        )
    if kind not in ("ssim", "psnr"):
        raise ValueError(f"nearest_subject_similarity: kind must be 'ssim' or 'psnr', got {kind!r}")
    scores = []
    for reference in subject:
        reference = reference.expand_as(images)
        if kind == "psnr":
            scores.append(per_image_psnr(images, reference))
        else:
            scores.append(
                structural_similarity_index_measure(
                    (images.double() + 1) / 2, (reference.double() + 1) / 2, data_range=1.0, reduction="none"
                )
            )
    return torch.stack(scores).amax(0)


class NearestSubjectSimilarity(RunningMean):
    """Mean over generated images of :func:`nearest_subject_similarity` against a reference set.

    Set the subject's images with :meth:`set_reference` or :meth:`set_reference_folder` (the
    :class:`~lightning_cat.callbacks.GeneratedImageEvaluator` does it from its reference folder).

    Args:
        kind: ``ssim`` or ``psnr``.
    """

    higher_is_better = True

    def __init__(self, kind: SimilarityKind = "ssim", **kwargs) -> None:
        super().__init__(**kwargs)
        if kind not in ("ssim", "psnr"):
            raise ValueError(f"NearestSubjectSimilarity: kind must be 'ssim' or 'psnr', got {kind!r}")
        self.kind = kind
        self.reference: torch.Tensor | None = None

    def set_reference(self, images: torch.Tensor) -> None:
        _check_images(type(self).__name__, images)
        self.reference = images.detach().float().cpu()

    def set_reference_folder(self, folder: str | os.PathLike, transform: ImageTransform, batch_size: int = 16) -> None:
        self.set_reference(torch.cat(list(iter_image_batches(folder, transform, batch_size, what="subject folder"))))

    def update(self, images: torch.Tensor) -> None:
        if self.reference is None:
            raise RuntimeError(f"{type(self).__name__}: call set_reference(_folder) before update")
        self.add(nearest_subject_similarity(images.detach().cpu(), self.reference, self.kind))


class PixelCorrelation(RunningMean):
    """Mean over images of :func:`pixel_correlation` (photographs about 0.9, noise about 0)."""

    higher_is_better = True

    def update(self, images: torch.Tensor) -> None:
        self.add(pixel_correlation(images.detach()))
