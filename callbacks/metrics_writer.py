"""MetricsWriter: the values a ``test`` or ``validate`` run logged, as one JSON file (the stage's result).

Usage (what the experiment runner adds to every evaluation stage)::

    trainer:
      callbacks:
        - class_path: MetricsWriter
          init_args: {path: outputs/eval/metrics.json}

At the end of the run, rank 0 writes ``trainer.callback_metrics`` (already reduced across
processes) as ``{name: number}``, names sorted, atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_cat.atomic import atomic_write_json, check_writable

__all__ = ["MetricsWriter"]


class MetricsWriter(Callback):
    """Write the logged metrics of a ``test`` or ``validate`` run to ``path``.

    Args:
        path: the JSON file to write (its folder is created). Non-finite values are written as null.

    Raises:
        PermissionError: if the folder of ``path`` cannot be written (checked when built, before
            the run evaluates anything).
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        check_writable(self.path.parent, owner="MetricsWriter: folder of path")

    def _write(self, trainer: Trainer) -> None:
        if trainer.is_global_zero:
            values = {key: float(value) for key, value in sorted(trainer.callback_metrics.items())}
            atomic_write_json(self.path, {k: v if math.isfinite(v) else None for k, v in values.items()})
        trainer.strategy.barrier("metrics_writer")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._write(trainer)
