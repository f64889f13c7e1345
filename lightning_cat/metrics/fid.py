"""FID of generated images against a clean reference set, with cached reference statistics.

:class:`FID` is torchmetrics' ``FrechetInceptionDistance`` on library-format images (float in
``[-1, 1]``) with any feature module; features and the Frechet distance are computed in float
(features in fp32, statistics in float64) whatever the surrounding precision. The reference side
is either accumulated like torchmetrics (``update(images, real=True)``) or set once from a folder
with :meth:`FID.set_reference_folder`, whose statistics are cached on disk under a key made of
the folder's file names and bytes, the preprocessing and the extractor's weights.

Example::

    fid = FID(RandomFeatureExtractor())  # or FID(load_inception("pt_inception-2015-12-05-6726825d.pth"))
    fid.set_reference_folder("subject/clean", ImageTransform(resolution=512))
    fid.update(generated)                 # [B, 3, H, W] in [-1, 1]
    fid.compute()

Under DDP every process computes (or loads) the reference statistics itself; only the generated
features are synchronized (summed states), so the value equals a single-process run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from safetensors.torch import load_file, save
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid
from tqdm.auto import tqdm

from lightning_cat.atomic import atomic_write_bytes
from lightning_cat.images import ImageTransform, list_images
from lightning_cat.metrics.feature_extractors import module_identity
from lightning_cat.metrics.folders import iter_image_batches

__all__ = ["FID", "default_statistics_cache", "reference_cache_key"]

_CACHE_FORMAT = 1


def default_statistics_cache() -> Path:
    """``$LIGHTNING_CAT_CACHE/fid-reference`` (default ``~/.cache/lightning_cat/fid-reference``)."""
    from lightning_cat.diffusion.tiny import cache_dir

    return cache_dir() / "fid-reference"


def reference_cache_key(files: list[Path], transform: ImageTransform, extractor_identity: str) -> str:
    """Digest of a reference set's content (file names and bytes), preprocessing and extractor."""
    digest = hashlib.sha256(f"fid-reference-v{_CACHE_FORMAT}".encode())
    digest.update(json.dumps(transform.to_dict(), sort_keys=True).encode())
    digest.update(extractor_identity.encode())
    for path in files:
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


class FID(FrechetInceptionDistance):
    """Frechet distance between features of generated images and of a reference set.

    Args:
        feature: a feature module taking float images in ``[-1, 1]`` and returning ``[B, D]``
            (e.g. :func:`~lightning_cat.metrics.load_inception`, :class:`RandomFeatureExtractor`).
        **kwargs: torchmetrics ``FrechetInceptionDistance`` / ``Metric`` options.
    """

    def __init__(self, feature: nn.Module, **kwargs) -> None:
        if not isinstance(feature, nn.Module):
            raise TypeError(f"FID: feature must be an nn.Module feature extractor, got {type(feature).__name__}")
        if not hasattr(feature, "num_features"):
            with torch.no_grad():
                feature.num_features = int(feature(torch.zeros(1, 3, 64, 64)).shape[-1])
        super().__init__(feature=feature, **kwargs)
        self.extractor_identity = module_identity(feature)
        self.register_buffer("reference_mean", None, persistent=False)
        self.register_buffer("reference_cov", None, persistent=False)
        self.reference_num_samples = 0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` float64 features of images in ``[-1, 1]`` (extracted in fp32)."""
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            return self.inception(images.float()).reshape(images.shape[0], -1).double()

    def update(self, images: torch.Tensor, real: bool = False) -> None:
        """Add generated images (``real=False``) or reference images (``real=True``)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FID expects images [B, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
        super().update(images.float(), real=real)

    def set_reference(self, mean: torch.Tensor, cov: torch.Tensor, num_samples: int) -> None:
        """Use fixed reference statistics (instead of accumulated ``real=True`` updates)."""
        if num_samples < 2:
            raise ValueError(f"FID: the reference set needs at least 2 images, got {num_samples}")
        device = self.fake_features_sum.device
        self.reference_mean = mean.to(device=device, dtype=torch.float64)
        self.reference_cov = cov.to(device=device, dtype=torch.float64)
        self.reference_num_samples = int(num_samples)

    def set_reference_folder(
        self,
        folder: str | os.PathLike,
        transform: ImageTransform,
        batch_size: int = 16,
        cache_dir: str | os.PathLike | None = None,
    ) -> Path:
        """Compute (or load from the cache) the statistics of ``folder`` and use them as reference.

        Returns:
            The cache file holding the statistics.
        """
        files = list_images(folder, what="FID reference folder")
        cache = Path(cache_dir) if cache_dir is not None else default_statistics_cache()
        path = cache / f"{reference_cache_key(files, transform, self.extractor_identity)}.safetensors"
        if path.is_file():
            stats = load_file(path)
            self.set_reference(stats["mean"], stats["cov"], int(stats["num_samples"]))
            return path
        total, outer, count = None, None, 0
        device = self.fake_features_sum.device
        batches = iter_image_batches(files, transform, batch_size)
        for images in tqdm(batches, total=-(-len(files) // batch_size), desc="FID reference statistics", leave=False):
            features = self.features(images.to(device))
            total = features.sum(0) if total is None else total + features.sum(0)
            outer = features.T @ features if outer is None else outer + features.T @ features
            count += features.shape[0]
        mean = total / count
        cov = (outer - count * torch.outer(mean, mean)) / (count - 1) if count > 1 else torch.zeros_like(outer)
        self.set_reference(mean, cov, count)
        stats = {"mean": mean.cpu(), "cov": cov.cpu(), "num_samples": torch.tensor(count)}
        metadata = {"folder": str(Path(folder).resolve()), "files": str(count), "extractor": self.extractor_identity}
        atomic_write_bytes(path, save(stats, metadata=metadata))
        return path

    def compute(self) -> torch.Tensor:
        if self.reference_mean is None:
            return super().compute()
        count = self.fake_features_num_samples
        if count < 2:
            rank_zero_warn(f"FID needs at least 2 generated images, got {int(count)}: returning nan")
            return torch.tensor(float("nan"), device=self.fake_features_sum.device)
        mean = self.fake_features_sum / count
        cov = (self.fake_features_cov_sum - count * torch.outer(mean, mean)) / (count - 1)
        return _compute_fid(self.reference_mean, self.reference_cov, mean, cov).float()
