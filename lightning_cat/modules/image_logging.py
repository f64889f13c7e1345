"""Images to the run's loggers: TensorBoard (``add_image``), W&B (``log_image``); others are skipped.

A logger without images (``CSVLogger``) is not an error: the modules ask :func:`image_loggers`
first and compute nothing to log when it is empty::

    if image_loggers(self):
        log_image_grid(self, "cat/reconstructions", [inputs, reconstructions], step=self.global_step)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["amplified_difference", "evaluation_mode", "image_grid", "image_loggers", "log_image_grid"]


def _takes_images(logger: Any) -> bool:
    if callable(getattr(logger, "log_image", None)):  # WandbLogger (and loggers with the same method)
        return True
    return callable(getattr(getattr(logger, "experiment", None), "add_image", None))  # TensorBoard's SummaryWriter


def image_loggers(module: Any) -> list[Any]:
    """The module's loggers that can record images (empty without a trainer, off rank zero or with none)."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or not trainer.is_global_zero:
        return []
    return [logger for logger in trainer.loggers if _takes_images(logger)]


def image_grid(rows: Sequence[torch.Tensor], max_images: int | None = None) -> torch.Tensor:
    """Rows of ``[B, 3, H, W]`` images in ``[-1, 1]`` as one ``[3, rows*H, B*W]`` float image in ``[0, 1]``."""
    if not rows:
        raise ValueError("image_grid: no rows")
    trimmed = [row.detach().float().cpu()[:max_images] for row in rows]
    columns = {row.shape[0] for row in trimmed}
    if len(columns) != 1 or any(row.ndim != 4 or row.shape[1] != 3 for row in trimmed):
        raise ValueError(f"image_grid: rows must be [B, 3, H, W] with one B, got {[tuple(r.shape) for r in trimmed]}")
    grid = torch.cat([torch.cat(list(row), dim=-1) for row in trimmed], dim=-2)
    return ((grid.clamp(-1, 1) + 1) / 2).contiguous()


def amplified_difference(protected: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``protected - clean`` stretched per image so its largest change spans ``[-1, 1]`` (grey: no change)."""
    difference = (protected.detach().float() - clean.detach().float()).cpu()
    scale = difference.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return difference / scale


def log_image_grid(
    module: Any, tag: str, rows: Sequence[torch.Tensor], step: int, max_images: int | None = None
) -> None:
    """Log ``rows`` (see :func:`image_grid`) as one image under ``tag`` to every logger that takes images."""
    loggers = image_loggers(module)
    if not loggers:
        return
    grid = image_grid(rows, max_images)
    for logger in loggers:
        if callable(getattr(logger, "log_image", None)):
            logger.log_image(key=tag, images=[grid], step=step)
        else:
            logger.experiment.add_image(tag, grid, global_step=step, dataformats="CHW")


@contextmanager
def evaluation_mode(module: torch.nn.Module) -> Iterator[None]:
    """``module`` in eval mode and without gradients inside; every submodule's own mode restored after."""
    modes = [(child, child.training) for child in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for child, training in modes:
            child.training = training
