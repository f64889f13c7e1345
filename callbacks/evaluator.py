"""Base of the metric callbacks: holds torchmetrics objects, feeds them, logs them (anomalib's Evaluator).

A subclass fills :attr:`MetricEvaluator.metrics` and implements :meth:`MetricEvaluator.update_metrics`.
The evaluator then works in ``validate`` and ``test`` of any LightningModule:

* on each batch end it reads its inputs from the step's output when that is a dict, otherwise from
  the batch, and updates its metrics in float32 with autocast off (whatever the run's precision);
* at epoch end it computes every metric (torchmetrics synchronizes the states across processes
  with their ``dist_reduce_fx``), logs the value (each entry of a metric that returns a dict, as
  ``name/key``) and resets it.

Metrics live in the callback, not in the module: the module's precision casts and checkpoints do
not touch them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

__all__ = ["MetricEvaluator"]


class MetricEvaluator(nn.Module, Callback):
    """Shared plumbing of the evaluator callbacks.

    Args:
        prefix: prepended to every logged metric name.
    """

    def __init__(self, prefix: str = "") -> None:
        nn.Module.__init__(self)
        self.prefix = prefix
        self.metrics = nn.ModuleDict()
        self._device = torch.device("cpu")

    @property
    def state_key(self) -> str:
        return f"{type(self).__name__}[prefix={self.prefix!r}]"

    def train(self, mode: bool = True) -> MetricEvaluator:
        return super().train(False)  # metrics and their extractors always evaluate

    # Lightning stores a callback's state_dict() in checkpoints: these evaluators keep none (their
    # extractors' weights come from files), so the bare call returns {}; nn.Module's recursion
    # (called with arguments) is left intact.
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return nn.Module.state_dict(self, *args, **kwargs) if args or kwargs else {}

    def load_state_dict(self, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        return nn.Module.load_state_dict(self, state_dict, *args, **kwargs) if state_dict else None

    def add_metrics(self, metrics: Mapping[str, nn.Module] | None) -> None:
        """Register extra metric objects under their names (plug-ins)."""
        for name, metric in (metrics or {}).items():
            if name in self.metrics:
                raise ValueError(f"{type(self).__name__}: metric name {name!r} is used twice")
            if not callable(getattr(metric, "update", None)) or not callable(getattr(metric, "compute", None)):
                raise TypeError(
                    f"{type(self).__name__}: metric {name!r} must be a torchmetrics Metric, got {type(metric).__name__}"
                )
            self.metrics[name] = metric

    def prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Called once the metrics are on the module's device (e.g. to load reference statistics)."""

    def update_metrics(self, inputs: Mapping[str, Any]) -> None:
        """Feed one step's inputs to the metrics."""
        raise NotImplementedError

    def log_key(self, stage: str, name: str, key: str = "") -> str:
        """The logged name of metric ``name`` (``key``: an entry of a dict-valued metric)."""
        return f"{self.prefix}{name}" + (f"/{key}" if key else "")

    def select_values(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The computed values to log (all by default); raise to refuse the epoch's results."""
        return values

    # -- Lightning hooks ---------------------------------------------------------------------------

    def _start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._device = pl_module.device
        self.to(self._device)
        self.eval()
        for metric in self.metrics.values():
            metric.reset()
        self.prepare(trainer, pl_module)

    def _batch_end(self, outputs: Any, batch: Any) -> None:
        inputs = outputs if isinstance(outputs, Mapping) else batch
        if not isinstance(inputs, Mapping):
            return
        with torch.no_grad(), torch.autocast(self._device.type, enabled=False):
            self.update_metrics(inputs)

    def _epoch_end(self, pl_module: LightningModule, stage: str) -> None:
        values: dict[str, torch.Tensor] = {}
        for name, metric in self.metrics.items():
            value = metric.compute()  # reduced across processes: every rank gets the same value
            entries = value.items() if isinstance(value, Mapping) else [("", value)]
            values.update({self.log_key(stage, name, key): entry for key, entry in entries})
            metric.reset()
        values = self.select_values(values)
        if values:
            pl_module.log_dict(values, on_step=False, on_epoch=True, sync_dist=False)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_end(outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_end(outputs, batch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._epoch_end(pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_end(pl_module, "test")


def images_of(inputs: Mapping[str, Any], key: str) -> torch.Tensor | None:
    """``inputs[key]`` as a float32 ``[B, 3, H, W]`` tensor, or ``None`` when absent or empty."""
    value = inputs.get(key)
    if not isinstance(value, torch.Tensor) or value.numel() == 0:
        return None
    if value.ndim != 4 or value.shape[1] != 3:
        raise ValueError(f"evaluator input {key!r} must be images [B, 3, H, W] in [-1, 1], got {tuple(value.shape)}")
    return value.float()
