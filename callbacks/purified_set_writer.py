"""PurifiedSetWriter: save purified images as a set (PNGs + manifest.json) like a protected set.

Usage (the ``trainer.callbacks`` of a predict config, with ``PurificationModule``)::

    trainer:
      callbacks:
        - class_path: PurifiedSetWriter
          init_args: {output_dir: outputs/purify/jpeg}
    model:
      class_path: PurificationModule
      init_args: {purifier: {class_path: JPEGCompression, init_args: {quality: 75}}}
    data:
      class_path: ImageFolderDataModule      # or PairedImageDataModule (its protected side)
      init_args: {root: protected/, resolution: 512}

The output folder is checked before any image is purified (a folder holding a different set is
refused unless ``overwrite``). Each image is saved as ``<stem>.png`` as soon as its batch is
done and measured against its (identically preprocessed) source image; the manifest is written
last, by rank 0, once every image of the set exists. It records ``method`` (``purify:<name>``),
``params`` (the purifier's options and the source folder), ``resolution``, ``preprocessing``,
``seed``, ``model``, ``inputs`` (stem and content hash of every source image), ``purifier``,
``source`` (folder and its manifest, e.g. the protection's) and ``files`` (per stem: source path, ``linf_255`` and ``psnr`` against the source).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_cat.images import ImageTransform, save_png
from lightning_cat.imageset import (
    input_hashes,
    measure_saved_image,
    prepare_output_dir,
    read_manifest,
    write_manifest,
)
from lightning_cat.purification.base import Purifier

__all__ = ["PurifiedSetWriter"]


def _source_folder(datamodule: Any) -> Path:
    dataset = getattr(datamodule, "dataset", None)
    if hasattr(dataset, "protected"):  # PairedImageDataset: purify the protected side
        dataset = dataset.protected
    root = getattr(dataset, "root", None)
    if root is None:
        raise TypeError(
            f"PurifiedSetWriter: the datamodule {type(datamodule).__name__} has no image folder "
            "(use ImageFolderDataModule or PairedImageDataModule)"
        )
    return Path(root).resolve()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class PurifiedSetWriter(Callback):
    """Write the predictions of a ``PurificationModule`` as a purified image set.

    Args:
        output_dir: folder of the set (created; refused if it holds a different set).
        overwrite: replace a different set found in ``output_dir``.
    """

    def __init__(self, output_dir: str, overwrite: bool = False) -> None:
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self._manifest: dict[str, Any] | None = None
        self._files: dict[str, dict[str, Any]] = {}
        self._expected: list[str] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        purifier = getattr(pl_module, "purifier", None)
        if not isinstance(purifier, Purifier):
            raise TypeError(
                f"PurifiedSetWriter needs a module with a `purifier` (PurificationModule), got {type(pl_module).__name__}"
            )
        datamodule = trainer.datamodule
        transform = getattr(datamodule, "transform", None)
        if not isinstance(transform, ImageTransform):
            raise TypeError(
                "PurifiedSetWriter needs an image datamodule (ImageFolderDataModule, PairedImageDataModule)"
            )
        if not transform.is_deterministic:
            raise ValueError(
                "PurifiedSetWriter: the datamodule must preprocess deterministically (crop='center', hflip=False)"
            )
        if getattr(datamodule, "purifier", None) is not None:
            raise ValueError(
                "PurifiedSetWriter: the datamodule already purifies its images; set the purifier on the "
                "PurificationModule only (model.purifier), not on the data"
            )
        source = _source_folder(datamodule)
        options = {k: v for k, v in purifier.params().items() if k != "name"}
        self._manifest = _jsonable(
            {
                "method": f"purify:{purifier.name}",
                "params": {**options, "source": str(source)},
                "eps_255": None,
                "resolution": transform.resolution,
                "preprocessing": transform.to_dict(),
                "seed": getattr(pl_module, "seed", None),
                "model": getattr(purifier, "pretrained_model_name_or_path", None),
                "inputs": input_hashes(_source_dataset(datamodule)),
                "purifier": purifier.params(),
                "source": {"folder": str(source), "manifest": read_manifest(source)},
            }
        )
        self._expected = sorted(Path(p).stem for p in _dataset_files(datamodule))
        self._files = {}
        error = None
        if trainer.is_global_zero:
            try:
                prepare_output_dir(self.output_dir, self._manifest, overwrite=self.overwrite)
            except (FileExistsError, OSError) as caught:
                error = caught
        error = trainer.strategy.broadcast(error, src=0)
        if error is not None:
            raise error

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for image, source, path in zip(outputs["image"], outputs["source"], outputs["path"], strict=True):
            stem = Path(path).stem
            target = self.output_dir / f"{stem}.png"
            save_png(image, target)
            self._files[stem] = {"source": str(path), **measure_saved_image(target, source)}

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        files = dict(self._files)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[dict[str, Any] | None] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self._files)
            for part in gathered:
                files.update(part or {})
        if trainer.is_global_zero:
            missing = sorted(set(self._expected) - set(files))
            if missing:
                warnings.warn(
                    f"PurifiedSetWriter: {len(missing)} images were not purified (e.g. limit_predict_batches); "
                    f"'{self.output_dir}' gets no manifest.json, so it is not a finished set: {missing[:5]}",
                    stacklevel=1,
                )
            else:
                write_manifest(self.output_dir, {**self._manifest, "files": {s: files[s] for s in sorted(files)}})
        trainer.strategy.barrier("purified_set_written")


def _source_dataset(datamodule: Any) -> Any:
    dataset = datamodule.dataset
    return dataset.protected if hasattr(dataset, "protected") else dataset


def _dataset_files(datamodule: Any) -> list[Path]:
    return list(getattr(_source_dataset(datamodule), "files", []))
