"""The 8-bit contract: float images in ``[-1, 1]`` inside the library, integer levels on disk.

A level ``v`` in ``0..255`` is the float ``v / 127.5 - 1``; a float goes back to the nearest
level (clamped to ``[-1, 1]`` first). Budgets are quoted in ``/255`` pixel units, a fraction of
the ``[0, 1]`` range, so ``r/255`` is ``2 * r / 255`` in model units. Every conversion between
the two worlds goes through this module.
"""

from __future__ import annotations

import torch

__all__ = ["from_levels", "quantize", "to_levels", "to_model_units", "to_uint8"]


def to_levels(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` floats -> the nearest 8-bit levels ``0..255``, as float32 (what a PNG stores)."""
    return ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` floats -> uint8 levels (rounded, not truncated)."""
    return to_levels(images).to(torch.uint8)


def from_levels(levels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """8-bit levels (any integer or float dtype) -> floats in ``[-1, 1]`` (exactly ``v / 127.5 - 1``)."""
    return (levels.to(torch.float32) / 127.5 - 1.0).to(dtype)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """``images`` rounded to the 8-bit grid, still in ``[-1, 1]`` and in their dtype and device."""
    return from_levels(to_levels(images), images.dtype).to(images.device)


def to_model_units(value_255: float) -> float:
    """A ``/255`` pixel amount (budget, step size) in model units (images in ``[-1, 1]``)."""
    return 2.0 * float(value_255) / 255.0
