"""DreamBooth data: instance images and prompt, plus class-prior images and prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_cat.datamodules.base import ImageDataModule
from lightning_cat.datamodules.datasets import DreamBoothDataset, ImageFolderDataset
from lightning_cat.images import list_images
from lightning_cat.purification.base import Purifier

__all__ = ["DreamBoothDataModule"]


class DreamBoothDataModule(ImageDataModule):
    """Instance images with ``instance_prompt``; with ``class_root``, class-prior images too.

    Prior preservation is on when ``class_root`` is given. If that folder holds fewer than
    ``num_class_images`` images, :attr:`missing_class_images` says how many are missing; the
    model makes them before ``setup`` (``DreamBoothModule`` does in its ``prepare_data``, into
    ``class_root``, where later runs reuse them).

    Args:
        instance_root: folder of the subject's (clean, protected or purified) images.
        instance_prompt: prompt of the instance images, e.g. ``"a photo of sks person"``.
        class_root: folder of class-prior images (``None``: no prior preservation).
        class_prompt: prompt of the class images, e.g. ``"a photo of person"``.
        num_class_images: class images to use (generated when missing).
        purifier: purification applied to the instance images only (``None``: off).
        **kwargs: shared options of :class:`ImageDataModule`.
    """

    def __init__(
        self,
        instance_root: str,
        instance_prompt: str = "a photo of sks person",
        class_root: str | None = None,
        class_prompt: str = "a photo of person",
        num_class_images: int = 200,
        purifier: Purifier | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["purifier"], logger=False)
        if class_root is not None and num_class_images < 1:
            raise ValueError(
                f"DreamBoothDataModule: num_class_images must be >= 1 with a class_root, got {num_class_images}"
            )
        self.instance_prompt = instance_prompt
        self.class_root = class_root
        self.class_prompt = class_prompt
        self.num_class_images = num_class_images
        self.purifier = purifier
        self.instance = ImageFolderDataset(
            instance_root,
            self.transform,
            prompt=instance_prompt,
            purifier=purifier,
            seed=self.seed,
            what="instance image folder",
        )
        self.class_images: ImageFolderDataset | None = None
        if self.missing_class_images == 0 and class_root is not None:
            self._build_class_dataset()
        self.dataset = DreamBoothDataset(self.instance, self.class_images)

    @property
    def with_prior(self) -> bool:
        return self.class_root is not None

    @property
    def missing_class_images(self) -> int:
        """How many class images still have to be generated."""
        if self.class_root is None:
            return 0
        if not Path(self.class_root).is_dir():
            return self.num_class_images
        present = list_images(self.class_root, what="class image folder", allow_empty=True)
        return max(0, self.num_class_images - len(present))

    def _build_class_dataset(self) -> None:
        self.class_images = ImageFolderDataset(
            self.class_root,
            self.transform,
            prompt=self.class_prompt,
            max_images=self.num_class_images,
            what="class image folder",
        )
        self.dataset = DreamBoothDataset(self.instance, self.class_images)

    def setup(self, stage: str) -> None:
        if self.with_prior and self.class_images is None:
            missing = self.missing_class_images
            if missing:
                module = getattr(self.trainer, "lightning_module", None)
                raise RuntimeError(
                    f"class folder '{self.class_root}' holds {self.num_class_images - missing} of num_class_images="
                    f"{self.num_class_images} images and the model ({type(module).__name__}) did not generate the "
                    "missing ones; add images, lower num_class_images, or train with DreamBoothModule"
                )
            self._build_class_dataset()
