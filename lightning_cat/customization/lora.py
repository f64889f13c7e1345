"""LoRA on the UNet (and optionally the text encoder) for customization, in diffusers' format.

Adapters are added through the models' own peft integration (``unet.add_adapter``,
``text_encoder.add_adapter``), exactly as the diffusers DreamBooth-LoRA recipe does, so the saved
weights load with ``StableDiffusionPipeline.load_lora_weights(folder)``::

    add_lora(unet, UNET_LORA_TARGETS, rank=16)
    ...train...
    save_lora_weights(folder, unet)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from peft import LoraConfig

__all__ = [
    "TEXT_ENCODER_LORA_TARGETS",
    "UNET_LORA_TARGETS",
    "add_lora",
    "has_lora",
    "lora_config",
    "lora_parameters",
    "save_lora_weights",
]

#: UNet attention projections adapted by DreamBooth-LoRA (self- and cross-attention).
UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
#: CLIP text-encoder attention projections.
TEXT_ENCODER_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def lora_config(
    target_modules: Sequence[str], rank: int = 16, alpha: float | None = None, dropout: float = 0.0
) -> LoraConfig:
    """A peft ``LoraConfig`` (gaussian ``A``, zero ``B``: the adapted model starts at the base).

    Args:
        target_modules: layer names to adapt.
        rank: LoRA rank.
        alpha: LoRA alpha (``None``: equal to ``rank``, i.e. scale 1).
        dropout: dropout on the LoRA branch.

    Raises:
        ValueError: for a rank below 1 or a dropout outside ``[0, 1)``.
    """
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    return LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        lora_dropout=dropout,
        init_lora_weights="gaussian",
        target_modules=list(target_modules),
    )


def add_lora(
    model: torch.nn.Module,
    target_modules: Sequence[str],
    rank: int = 16,
    alpha: float | None = None,
    dropout: float = 0.0,
) -> list[torch.nn.Parameter]:
    """Freeze ``model`` and add a trainable LoRA adapter to it; returns the LoRA parameters."""
    model.requires_grad_(False)
    model.add_adapter(lora_config(target_modules, rank=rank, alpha=alpha, dropout=dropout))
    parameters = lora_parameters(model)
    for parameter in parameters:
        parameter.requires_grad_(True)
    return parameters


def has_lora(model: torch.nn.Module | None) -> bool:
    """True when ``model`` carries a peft adapter."""
    return model is not None and bool(getattr(model, "peft_config", None))


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The LoRA factors of ``model`` (``lora_A`` / ``lora_B`` weights)."""
    return [p for name, p in model.named_parameters() if ".lora_A." in name or ".lora_B." in name]


def _diffusers_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    return convert_state_dict_to_diffusers({k: v.detach().to("cpu", torch.float32) for k, v in state.items()})


def _adapter_metadata(model: torch.nn.Module) -> dict:
    """The adapter's peft config as a dict; peft keeps ``target_modules`` as a set, whose order
    changes from process to process, so it is sorted to make the saved file reproducible."""
    config = model.peft_config["default"].to_dict()
    if isinstance(config.get("target_modules"), set | list | tuple):
        config["target_modules"] = sorted(config["target_modules"])
    return config


def save_lora_weights(
    directory: str | os.PathLike, unet: torch.nn.Module, text_encoder: torch.nn.Module | None = None
) -> None:
    """Write the adapters of ``unet`` (and ``text_encoder``) as diffusers LoRA weights.

    The file is ``pytorch_lora_weights.safetensors``; each adapter's config (rank, alpha,
    targets) is stored in its metadata, so ``load_lora_weights`` rebuilds the same scale.
    Weights are written in fp32.

    Raises:
        ValueError: if ``unet`` carries no LoRA adapter.
    """
    from diffusers import StableDiffusionPipeline

    if not has_lora(unet):
        raise ValueError("save_lora_weights: the UNet has no LoRA adapter")
    with_text = has_lora(text_encoder)
    StableDiffusionPipeline.save_lora_weights(
        save_directory=directory,
        unet_lora_layers=_diffusers_state_dict(unet),
        text_encoder_lora_layers=_diffusers_state_dict(text_encoder) if with_text else None,
        unet_lora_adapter_metadata=_adapter_metadata(unet),
        text_encoder_lora_adapter_metadata=_adapter_metadata(text_encoder) if with_text else None,
        safe_serialization=True,
    )
