"""Base datamodule: the shared transform options and dataloaders over one dataset."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from lightning_cat.images import Crop, ImageTransform, Interpolation, SmallImages

__all__ = ["ImageDataModule"]


class ImageDataModule(LightningDataModule):
    """Shared options of every image datamodule; subclasses build :attr:`dataset`.

    Inputs are validated (and the dataset built) in ``__init__``, so a bad folder or image fails
    before any model loads. All four stages iterate the same dataset; only ``fit`` shuffles.
    Subclasses save their hyperparameters with ``logger=False``: the CLI records the data config
    anyway, and Lightning refuses to log module and datamodule hparams that share a name (such as
    ``prompt``) with different values.

    Args:
        resolution: square side images are resized and cropped to.
        crop: ``center`` or ``random``.
        hflip: random horizontal flips.
        interpolation: resize filter.
        small_images: ``error`` on an image smaller than ``resolution``, or ``upscale`` it.
        batch_size: images per batch (per device).
        num_workers: dataloader worker processes.
        shuffle: shuffle during ``fit``.
        seed: seed of per-image randomness that must not depend on order (e.g. purification).
    """

    dataset: Dataset

    def __init__(
        self,
        resolution: int = 512,
        crop: Crop = "center",
        hflip: bool = False,
        interpolation: Interpolation = "bicubic",
        small_images: SmallImages = "error",
        batch_size: int = 1,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"{type(self).__name__}: num_workers must be >= 0, got {num_workers}")
        self.transform = ImageTransform(
            resolution=resolution, crop=crop, hflip=hflip, interpolation=interpolation, small_images=small_images
        )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.seed = seed

    def _loader(self, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader(False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(False)
