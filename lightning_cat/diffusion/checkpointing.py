"""Gradient checkpointing switched on for a block of work and back off after it.

diffusers' VAE checkpoints each encoder and decoder *block* as one piece, so the backward pass
recomputes a whole block at once; at 512 px the first encoder block (two ResNet blocks of 128
channels at full resolution) is then the largest activation memory of a PGD step through the VAE.
:func:`layerwise_checkpoint` splits such blocks into their ResNet blocks and resamplers, each
checkpointed on its own: the same gradients, and the SD VAE encoder's forward and backward pass at
512 px needs 1.62 GiB above the process instead of 2.46 GiB (benchmarks/scale.md, sixth sitting).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["enable_gradient_checkpointing", "gradient_checkpointing", "layerwise_checkpoint"]

#: Attributes of a diffusers VAE block holding layers it runs in sequence (DownEncoderBlock2D,
#: UpDecoderBlock2D): these blocks are checkpointed layer by layer.
_SEQUENTIAL_LAYERS = ("resnets", "downsamplers", "upsamplers")


def _sequential_layers(block: torch.nn.Module) -> list[torch.nn.Module] | None:
    """The layers of a VAE encoder / decoder block without attention, or ``None`` for other blocks."""
    if getattr(block, "attentions", None) is not None or not isinstance(
        getattr(block, "resnets", None), torch.nn.ModuleList
    ):
        return None
    return [layer for name in _SEQUENTIAL_LAYERS for layer in (getattr(block, name, None) or [])]


@contextmanager
def _each_checkpointed(layers: list[torch.nn.Module]) -> Iterator[None]:
    """Inside the block, each of ``layers`` runs under its own checkpoint (its forward hooks still run
    once; its sub-modules run again in the backward pass)."""
    own = {id(layer): layer.__dict__.get("forward") for layer in layers}  # e.g. a hook's wrapper
    for layer in layers:
        forward = layer.forward

        def checkpointed(*args, forward=forward, **kwargs):
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)

        layer.forward = checkpointed
    try:
        yield
    finally:
        for layer in layers:
            if own[id(layer)] is None:
                del layer.forward  # back to the class's forward
            else:
                layer.forward = own[id(layer)]


def layerwise_checkpoint(block: torch.nn.Module, *args) -> torch.Tensor:
    """A diffusers ``gradient_checkpointing_func``: VAE encoder / decoder blocks are checkpointed layer
    by layer (each ResNet block and resampler), every other block as one piece (as diffusers does)."""
    layers = _sequential_layers(block)
    if layers is None:
        return checkpoint(block, *args, use_reentrant=False)
    with _each_checkpointed(layers):
        return block(*args)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Switch on gradient checkpointing of a diffusers model with :func:`layerwise_checkpoint`."""
    model.enable_gradient_checkpointing(layerwise_checkpoint)


@contextmanager
def gradient_checkpointing(models: dict[str, torch.nn.Module | None], enabled: bool = True) -> Iterator[None]:
    """Recompute the activations of ``models`` (diffusers models, by name) in the backward pass.

    Same gradients, less memory, about one more forward pass of compute
    (:func:`layerwise_checkpoint`). Models that already checkpoint are left as they are; the
    others are switched back off on exit. ``None`` entries are skipped; ``enabled=False`` does nothing.

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
        enable_gradient_checkpointing(model)
    try:
        yield
    finally:
        for model in switched:
            model.disable_gradient_checkpointing()
