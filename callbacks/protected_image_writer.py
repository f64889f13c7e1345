"""Write a protected set: one PNG per input (same stem) and ``manifest.json`` last.

Attached automatically by ``ProtectionModule(output_dir=...)``; to configure it by hand::

    trainer:
      callbacks:
        - class_path: ProtectedImageWriter
          init_args: {output_dir: protected/advdm}

Before any model loads (the ``setup`` hook runs before the module's), the output folder is
checked with :func:`lightning_cat.imageset.prepare_output_dir`: a folder holding a different
set fails unless ``overwrite``. Each protected image is saved atomically and measured from the
saved file against its clean, identically preprocessed source (``linf_255``, ``l2_255``,
``psnr``), then journaled (:func:`lightning_cat.imageset.record_finished_image`). At the end of
``fit`` the measurements of all ranks are gathered and rank 0 writes the manifest (method, params,
eps_255, resolution, preprocessing, seed, model, inputs, files, version), which replaces the journal.

Resume: a run killed after some images re-runs with the same settings into the same folder; the
images it journaled under the same identity (inputs included) and that are unchanged on disk are
kept as they are, never rewritten, and batches made only of them are not recomputed (per-image
methods; surrogate methods redo their coupled set). Anything else in the folder is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_cat.images import save_png
from lightning_cat.imageset import (
    finished_images,
    measure_saved_image,
    prepare_output_dir,
    record_finished_image,
    write_manifest,
)

__all__ = ["ProtectedImageWriter"]


class ProtectedImageWriter(Callback):
    """Save the protected images a ``ProtectionModule`` returns, then the manifest.

    Args:
        output_dir: folder of the protected set.
        overwrite: replace a different set already in ``output_dir``.
    """

    def __init__(self, output_dir: str, overwrite: bool = False) -> None:
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self.identity: dict[str, Any] | None = None
        self.records: dict[str, dict[str, Any]] = {}
        #: Stems kept from an interrupted run (journaled, unchanged): never rewritten.
        self.kept: set[str] = set()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        identity = getattr(pl_module, "manifest_identity", None)
        if identity is None:
            raise TypeError(f"ProtectedImageWriter needs a ProtectionModule, got {type(pl_module).__name__}")
        self.identity = identity(trainer.datamodule)
        error = None
        if trainer.is_global_zero:
            try:
                prepare_output_dir(self.output_dir, self.identity, overwrite=self.overwrite)
            except OSError as caught:  # a different set (FileExistsError) or an unwritable folder
                error = caught
        error = trainer.strategy.broadcast(error, src=0)  # every rank fails alike, none waits
        if error is not None:
            raise error
        resumable = getattr(pl_module, "resumes_per_image", False)
        self.records = finished_images(self.output_dir, self.identity) if resumable else {}
        self.kept = set(self.records)
        if hasattr(pl_module, "finished_keys"):
            pl_module.finished_keys = set(self.kept)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        position = {Path(source).stem: i for i, source in enumerate(batch["path"])}
        for image, key in zip(outputs["protected"], outputs["keys"], strict=True):
            if key in self.kept:
                continue  # saved by the interrupted run: left as it is
            index = position[key]
            path = self.output_dir / f"{key}.png"
            save_png(image.cpu(), path)
            record = {"source": str(batch["path"][index]), **measure_saved_image(path, batch["image"][index].cpu())}
            record_finished_image(self.output_dir, key, self.identity, record)
            self.records[key] = record

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        records = dict(self.records)
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[dict[str, Any] | None] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, records)
            for part in gathered:
                records.update(part or {})
        if trainer.is_global_zero:
            datamodule = trainer.datamodule
            dataset = getattr(datamodule, "dataset", None)
            expected = getattr(dataset, "stems", None)
            missing = sorted(set(expected or ()) - set(records))
            if missing:
                raise RuntimeError(f"ProtectedImageWriter: no protected image was produced for {missing}")
            files = {key: records[key] for key in sorted(records)}
            write_manifest(
                self.output_dir,
                {
                    **self.identity,
                    "max_linf_255": max(entry["linf_255"] for entry in files.values()),
                    "files": files,
                },
            )
        trainer.strategy.barrier("protected_image_writer")
