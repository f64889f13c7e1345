"""Short CAT/DreamBooth training runs on the tiny model: a quiet CPU Trainer and one fixed batch."""

from __future__ import annotations

from lightning.pytorch import Trainer

from lightning_cat.datamodules import ImageFolderDataModule


def quiet_trainer(tmp_path, max_steps: int = -1, **kwargs) -> Trainer:
    """A one-device CPU Trainer without logger, checkpoints, progress bar or model summary."""
    return Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


def first_batch(folder):
    """The first batch (2 images at 64 px, unshuffled) of ``folder`` and its datamodule."""
    data = ImageFolderDataModule(str(folder), resolution=64, batch_size=2, shuffle=False)
    return next(iter(data.train_dataloader())), data
