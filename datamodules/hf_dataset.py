"""Images from a Hugging Face ``datasets`` source: a saved dataset, an image folder, or a hub id.

Example::

    dm = HFImageDataModule("data/photos_saved", image_column="image", resolution=512)

``source`` is read as

* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``: ``load_from_disk``;
* any other folder: ``load_dataset("imagefolder", data_dir=source)``;
* otherwise a hub dataset id, loaded with ``load_dataset(source, split=...)`` (only when online;
  offline it fails at once naming the id).

Rows get the same validation (every image fully decoded and size-checked when the dataset is
built, the error naming the row index and column) and preprocessing as an image folder
(:class:`~lightning_cat.datamodules.ImageFolderDataset`). Each row's stem, which names its outputs
and pairs it with clean images, comes from ``stem_column``, else a ``file_name`` or ``id``
column, else the image's own file name, else the row index (``00000``, ...). Needs the
``datasets`` extra (``pip install ".[datasets]"``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from PIL import Image

from lightning_cat.datamodules.base import ImageDataModule
from lightning_cat.datamodules.datasets import ImageFolderDataset
from lightning_cat.images import ImageInputError, ImageTransform, load_image, load_image_bytes
from lightning_cat.purification.base import Purifier

__all__ = ["HFImageDataModule", "HFImageDataset", "load_hf_images"]

#: Columns read as stems, in this order, when ``stem_column`` is not given.
STEM_COLUMNS = ("file_name", "id")
_SAVED_DATASET_FILES = ("dataset_dict.json", "state.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _datasets():
    try:
        import datasets
    except ImportError as error:
        raise ModuleNotFoundError(
            "HFImageDataModule needs the datasets package: pip install datasets (or the project's datasets extra)"
        ) from error
    return datasets


def _select_split(loaded: Any, source: str, split: str | None) -> Any:
    datasets = _datasets()
    if isinstance(loaded, datasets.DatasetDict):
        names = sorted(loaded)
        chosen = split if split is not None else ("train" if "train" in loaded or len(names) != 1 else names[0])
        if chosen not in loaded:
            raise ValueError(f"dataset '{source}' has no split {chosen!r}; its splits are {names}")
        return loaded[chosen]
    if split is not None:
        raise ValueError(
            f"dataset '{source}' is a single saved Dataset without splits; leave split unset (got {split!r})"
        )
    return loaded


def load_hf_images(source: str, split: str | None = None) -> Any:
    """The ``datasets.Dataset`` that ``source`` names (see the module docstring), one split of it.

    Raises:
        ModuleNotFoundError: without the datasets package.
        FileNotFoundError: for a path that is neither a folder nor a hub id.
        ConnectionError: for a hub id while the hub is offline, naming the id.
        ValueError: for a split the dataset does not have (naming its splits).
    """
    datasets = _datasets()
    folder = Path(source).expanduser()
    if folder.is_dir():
        if any((folder / name).is_file() for name in _SAVED_DATASET_FILES):
            return _select_split(datasets.load_from_disk(str(folder)), source, split)
        return _select_split(datasets.load_dataset("imagefolder", data_dir=str(folder)), source, split)
    if folder.exists() or not _HUB_ID.match(source):
        kind = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"dataset '{source}' {kind} (give a saved dataset, an image folder or a hub id)")
    if datasets.config.HF_HUB_OFFLINE:
        raise ConnectionError(
            f"dataset '{source}' is not a local folder, and as a hub id it cannot be loaded offline "
            "(HF_HUB_OFFLINE is set); download it once and give its folder (save_to_disk) instead"
        )
    return _select_split(datasets.load_dataset(source), source, split)


class HFImageDataset(ImageFolderDataset):
    """The images of one column of a ``datasets`` split, as an :class:`ImageFolderDataset`.

    Items are those of a folder: ``image``, ``path`` (``{source}/{stem}.png``, so its stem is the
    row's stem), ``index`` and ``prompt``.

    Args:
        source: saved dataset folder, image folder or hub id (see :func:`load_hf_images`).
        transform: the shared preprocessing.
        split: split of a ``DatasetDict`` (``None``: ``train``, or the only split).
        image_column: column holding the images (a ``datasets.Image`` feature).
        stem_column: column whose values name the rows (``None``: see the module docstring).
        prompt, purifier, seed, max_images: as for :class:`ImageFolderDataset`.

    Raises:
        ValueError: for a missing column (naming the columns), a column that is not an image
            feature, or stems that are empty, contain a path separator or repeat.
        ImageInputError: for a row that cannot be decoded or is too small, naming its index and column.
    """

    def __init__(
        self,
        source: str,
        transform: ImageTransform,
        split: str | None = None,
        image_column: str = "image",
        stem_column: str | None = None,
        prompt: str | None = None,
        purifier: Purifier | None = None,
        seed: int = 0,
        max_images: int | None = None,
    ) -> None:
        datasets = _datasets()
        table = load_hf_images(source, split)
        columns = list(table.column_names)
        for option, column in (("image_column", image_column), ("stem_column", stem_column)):
            if column is not None and column not in columns:
                raise ValueError(f"dataset '{source}': {option} {column!r} is not a column; its columns are {columns}")
        feature = table.features[image_column]
        if not isinstance(feature, datasets.Image):
            raise ValueError(
                f"dataset '{source}': image_column {image_column!r} is a {type(feature).__name__} column, "
                "not an image (datasets.Image) column"
            )
        if max_images is not None:
            table = table.select(range(min(max_images, len(table))))
        self.source = source
        self.image_column = image_column
        self.table = table.cast_column(image_column, datasets.Image(decode=False))
        self.transform = transform
        self.prompt = prompt
        self.purifier = purifier
        self.seed = seed
        self._cache = {}
        row_stems = self._row_stems(stem_column)
        self.files = [Path(source) / f"{stem}.png" for stem in row_stems]
        for index in range(len(self.table)):
            transform.check_size(self.open_image(index), self._describe(index))

    def _describe(self, index: int) -> str:
        return f"row {index} (column {self.image_column!r}) of dataset '{self.source}'"

    def _row_stems(self, stem_column: str | None) -> list[str]:
        columns = self.table.column_names
        column = stem_column or next((name for name in STEM_COLUMNS if name in columns), None)
        if column is not None:
            stems = [Path(str(value)).stem if column == "file_name" else str(value) for value in self.table[column]]
        else:
            paths = [(cell or {}).get("path") for cell in self.table[self.image_column]]
            if paths and all(paths):
                stems, column = [Path(path).stem for path in paths], f"{self.image_column} file names"
            else:
                stems, column = [f"{index:05d}" for index in range(len(self.table))], "row index"
        if not stems:
            raise ImageInputError(f"dataset '{self.source}' holds no row")
        bad = [stem for stem in stems if not stem or "/" in stem or "\\" in stem]
        if bad:
            raise ValueError(
                f"dataset '{self.source}': stems from {column} must be non-empty file names, got {bad[:5]}"
            )
        duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
        if duplicates:
            raise ValueError(
                f"dataset '{self.source}': several rows have the stem {duplicates} (from {column}); stems name "
                "images (outputs and clean/protected pairs are matched by stem), so set stem_column to a unique column"
            )
        return stems

    def open_image(self, index: int) -> Image.Image:
        cell = self.table[index][self.image_column]
        if cell is None:
            raise ImageInputError(f"{self._describe(index)} holds no image")
        if cell.get("bytes") is not None:
            return load_image_bytes(cell["bytes"], self._describe(index))
        try:
            return load_image(cell["path"])
        except (FileNotFoundError, ImageInputError) as error:
            raise ImageInputError(f"{self._describe(index)}: {error}") from error


class HFImageDataModule(ImageDataModule):
    """Every image of a ``datasets`` split with the same ``prompt``, optionally purified.

    The drop-in for :class:`~lightning_cat.datamodules.ImageFolderDataModule` when the images
    live in a Hugging Face dataset (see the module docstring for what ``source`` may be).

    Args:
        source: saved dataset folder (``save_to_disk``), image folder, or hub id (online only).
        split: split of a ``DatasetDict`` (``None``: ``train``, or the only split).
        image_column: column holding the images.
        stem_column: column naming the rows (``None``: ``file_name``, ``id``, the image file name, the row index).
        prompt: prompt attached to every image.
        purifier: purification applied once per image (``None``: off).
        max_images: use only the first ``max_images`` rows.
        **kwargs: shared options of :class:`ImageDataModule`.
    """

    def __init__(
        self,
        source: str,
        split: str | None = None,
        image_column: str = "image",
        stem_column: str | None = None,
        prompt: str = "a photo",
        purifier: Purifier | None = None,
        max_images: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["purifier"], logger=False)
        self.purifier = purifier
        self.dataset = HFImageDataset(
            source,
            self.transform,
            split=split,
            image_column=image_column,
            stem_column=stem_column,
            prompt=prompt,
            purifier=purifier,
            seed=self.seed,
            max_images=max_images,
        )
