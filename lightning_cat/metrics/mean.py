"""The running mean every per-item metric reports: a float64 sum and a count, summed across processes."""

from __future__ import annotations

import torch
from torchmetrics import Metric

__all__ = ["RunningMean"]


class RunningMean(Metric):
    """Base of the metrics that average a value per image (PSNR, CLIP-IQA, BRISQUE, ...).

    Subclasses compute per-item values in ``update`` and pass them to :meth:`add`. The states are
    reduced with ``sum``, so the mean is exact under DDP; with no item the result is NaN.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def add(self, values: torch.Tensor) -> None:
        """Add per-item values (any shape; every entry is one item)."""
        values = torch.as_tensor(values)
        self.total += values.double().sum().to(self.total.device)
        self.count += values.numel()

    def compute(self) -> torch.Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"), device=self.total.device)
        return (self.total / self.count).float()
