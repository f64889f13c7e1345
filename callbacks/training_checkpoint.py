"""TrainingCheckpoint: a periodic, resumable checkpoint of a long training stage.

A :class:`~lightning.pytorch.callbacks.ModelCheckpoint` that keeps one file, ``last.ckpt``,
rewritten every ``every_n_train_steps`` optimizer steps and written whole or not at all (a kill
during a save leaves the previous checkpoint intact). What it holds is decided by the module: the
library's modules save only their trainable weights (adapters, LoRA, or the fine-tuned models)
with the optimizer, scheduler, loop and RNG states, so it loads with ``torch.load(weights_only=True)``
and resumes the run where it stopped::

    trainer:
      callbacks:
        - class_path: TrainingCheckpoint
          init_args: {every_n_train_steps: 500}

    lightning-cat fit --config configs/cat/both.sd21.yaml --ckpt_path <default_root_dir>/checkpoints/last.ckpt

The experiment runner places ``dirpath`` in the stage's folder and resumes a killed stage from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["LAST_CHECKPOINT", "TrainingCheckpoint"]

#: The file name of the checkpoint a :class:`TrainingCheckpoint` keeps.
LAST_CHECKPOINT = "last.ckpt"


class TrainingCheckpoint(ModelCheckpoint):
    """Save ``last.ckpt`` in ``dirpath`` every ``every_n_train_steps`` steps (and nothing else).

    Args:
        dirpath: folder of ``last.ckpt`` (``None``: ``checkpoints/`` in the Trainer's
            ``default_root_dir``, the same folder whatever the logger's version).
        every_n_train_steps: optimizer steps between saves (>= 1).

    Raises:
        ValueError: if ``every_n_train_steps`` is below 1.
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int = 500) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f"TrainingCheckpoint: every_n_train_steps must be >= 1, got {every_n_train_steps!r}")
        super().__init__(
            dirpath=dirpath,
            every_n_train_steps=every_n_train_steps,
            save_last=True,
            save_top_k=0,
            enable_version_counter=False,
        )

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))
        super().setup(trainer, pl_module, stage)

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        # Write beside the target, then rename: the previous checkpoint stays valid until the new one is whole.
        partial = f"{filepath}.partial"
        super()._save_checkpoint(trainer, partial)
        if trainer.is_global_zero and Path(partial).is_file():
            os.replace(partial, filepath)
        trainer.strategy.barrier("training_checkpoint_rename")
        self._last_checkpoint_saved = filepath
