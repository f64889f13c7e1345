"""Image datasets: a folder, clean/protected pairs matched by stem, DreamBooth instance + class.

Every file is decoded and size-checked when the dataset is built, so a corrupt, unreadable or
too small image fails with its name before any model loads. Items are dicts (see DESIGN.md):
``image`` float ``[3, H, W]`` in ``[-1, 1]``, ``path``, ``index`` and optional ``prompt``,
``clean``, ``class_image``, ``class_prompt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from lightning_cat.images import ImageInputError, ImageTransform, list_images, load_image, pil_to_tensor
from lightning_cat.imageset import read_manifest
from lightning_cat.pixels import from_levels, to_uint8
from lightning_cat.purification.base import Purifier, purification_generator

__all__ = ["DreamBoothDataset", "ImageFolderDataset", "PairedImageDataset", "read_manifest"]


class ImageFolderDataset(Dataset):
    """The images of one folder, preprocessed by one :class:`ImageTransform`.

    The resized (and center-cropped) image is cached as 8-bit, so each file is decoded once, not
    every epoch; a purifier, if given, runs once per image on that cached result, seeded per file
    stem so the outcome does not depend on order, workers or ranks. Random crops and flips are
    applied per access.

    Args:
        root: folder of images.
        transform: the shared preprocessing.
        prompt: prompt attached to every item (``None``: no prompt key).
        purifier: optional purification applied to every image.
        seed: base seed of the purifier.
        what: how error messages name the folder.
        max_images: use only the first ``max_images`` files (sorted by name).
    """

    def __init__(
        self,
        root: str | Path,
        transform: ImageTransform,
        prompt: str | None = None,
        purifier: Purifier | None = None,
        seed: int = 0,
        what: str = "image folder",
        max_images: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        self.prompt = prompt
        self.purifier = purifier
        self.seed = seed
        self.files = list_images(self.root, what=what)[:max_images]
        for path in self.files:
            transform.check_size(load_image(path), path)
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.files)

    @property
    def stems(self) -> list[str]:
        return [p.stem for p in self.files]

    def open_image(self, index: int) -> Image.Image:
        """The decoded 8-bit RGB source image of ``index`` (subclasses read other stores)."""
        return load_image(self.files[index])

    def _prepared(self, index: int) -> torch.Tensor:
        """uint8 ``[3, h, w]``: resized (center-cropped when the crop is deterministic), purified; cached."""
        if index in self._cache:
            return self._cache[index]
        path = self.files[index]
        image = self.open_image(index)
        self.transform.check_size(image, path)
        tensor = pil_to_tensor(self.transform.resize(image))
        if self.transform.crop == "center":
            tensor = self.transform.crop_tensor(tensor)
        if self.purifier is not None:
            generator = purification_generator(self.seed, path.stem)
            tensor = self.purifier(tensor.unsqueeze(0), generator=generator)[0]
        prepared = to_uint8(tensor)
        self._cache[index] = prepared
        return prepared

    def load(self, index: int) -> torch.Tensor:
        """The preprocessed float image ``[3, R, R]`` in ``[-1, 1]`` for ``index``."""
        image = from_levels(self._prepared(index))
        if self.transform.is_deterministic:
            return image
        # Augmentation draws from torch's global RNG, which Lightning seeds per run and per worker.
        if self.transform.crop == "random":
            image = self.transform.crop_tensor(image)
        return self.transform.flip(image)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"image": self.load(index), "path": str(self.files[index]), "index": index}
        if self.prompt is not None:
            item["prompt"] = self.prompt
        return item


class PairedImageDataset(Dataset):
    """Protected images with their clean originals, matched by file stem.

    Both sides go through the same transform. Items carry ``image`` (protected), ``clean``,
    ``path`` (protected file), ``clean_path`` and ``index``.

    Raises:
        ImageInputError: when stems do not match one to one (the unmatched files are listed), or
            when the protected set's manifest records a different resolution.
    """

    def __init__(
        self,
        clean_root: str | Path,
        protected_root: str | Path,
        transform: ImageTransform,
        prompt: str | None = None,
        purifier: Purifier | None = None,
        seed: int = 0,
    ) -> None:
        if not transform.is_deterministic:
            raise ImageInputError(
                "PairedImageDataset needs a deterministic transform (crop='center', hflip=False) so pairs stay aligned"
            )
        manifest = read_manifest(protected_root)
        recorded = (manifest or {}).get("resolution")
        if recorded is not None and int(recorded) != transform.resolution:
            raise ImageInputError(
                f"protected set '{protected_root}' was made at resolution {recorded} (manifest.json) but "
                f"resolution={transform.resolution} was asked; clean and protected images must share one preprocessing"
            )
        self.clean = ImageFolderDataset(clean_root, transform, what="clean image folder")
        self.protected = ImageFolderDataset(
            protected_root, transform, prompt=prompt, purifier=purifier, seed=seed, what="protected image folder"
        )
        clean_stems, protected_stems = set(self.clean.stems), set(self.protected.stems)
        only_clean = sorted(clean_stems - protected_stems)
        only_protected = sorted(protected_stems - clean_stems)
        if only_clean or only_protected:
            raise ImageInputError(
                f"clean folder '{clean_root}' and protected folder '{protected_root}' do not match by file stem: "
                f"only clean: {only_clean or 'none'}; only protected: {only_protected or 'none'}"
            )
        self._clean_index = {stem: i for i, stem in enumerate(self.clean.stems)}

    def __len__(self) -> int:
        return len(self.protected)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.protected[index]
        clean_index = self._clean_index[self.protected.files[index].stem]
        item["clean"] = self.clean.load(clean_index)
        item["clean_path"] = str(self.clean.files[clean_index])
        return item


class DreamBoothDataset(Dataset):
    """Instance images with their prompt, each paired with a class-prior image and prompt.

    Length is the larger of the two sets; the smaller one cycles (as in the DreamBooth recipe).
    Without a class set, items carry only the instance keys.
    """

    def __init__(
        self,
        instance: ImageFolderDataset,
        class_images: ImageFolderDataset | None = None,
    ) -> None:
        self.instance = instance
        self.class_images = class_images

    def __len__(self) -> int:
        if self.class_images is None:
            return len(self.instance)
        return max(len(self.instance), len(self.class_images))

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.instance[index % len(self.instance)]
        if self.class_images is not None:
            prior = self.class_images[index % len(self.class_images)]
            item["class_image"] = prior["image"]
            item["class_prompt"] = prior["prompt"]
            item["class_path"] = prior["path"]
        return item
