"""Gradient checkpointing switched on for a block of work and back off after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["gradient_checkpointing"]


@contextmanager
def gradient_checkpointing(models: dict[str, torch.nn.Module | None], enabled: bool = True) -> Iterator[None]:
    """Recompute the activations of ``models`` (diffusers models, by name) in the backward pass.

    Same gradients, less memory, about one more forward pass of compute. Models that already
    checkpoint are left as they are; the others are switched back off on exit. ``None`` entries
    are skipped; ``enabled=False`` does nothing.

    Raises:
        ValueError: naming a model that does not support gradient checkpointing.
    """
    if not enabled:
        yield
        return
    present = {name: model for name, model in models.items() if model is not None}
    unsupported = [
        name for name, model in present.items() if not getattr(model, "_supports_gradient_checkpointing", False)
    ]
    if unsupported:
        raise ValueError(f"gradient_checkpointing: {unsupported} do not support gradient checkpointing")
    switched = [model for model in present.values() if not model.is_gradient_checkpointing]
    for model in switched:
        model.enable_gradient_checkpointing()
    try:
        yield
    finally:
        for model in switched:
            model.disable_gradient_checkpointing()
