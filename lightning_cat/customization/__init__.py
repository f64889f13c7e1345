"""Customization (the attacker's fine-tuning) in plain torch: the DreamBooth loss and batch rows,
UNet/text-encoder LoRA, contrastive decoupling prompts, class-prior images, export and reload."""

from lightning_cat.customization.cdl import DEFAULT_CDL_NEGATIVE_PROMPT, DEFAULT_NOISE_TOKEN, ContrastiveDecoupling
from lightning_cat.customization.export import (
    CAT_ADAPTER_FOLDER,
    CUSTOMIZATION_FILE,
    Finetune,
    export_full_model,
    export_lora_model,
    load_customized_components,
    read_customization,
)
from lightning_cat.customization.lora import (
    TEXT_ENCODER_LORA_TARGETS,
    UNET_LORA_TARGETS,
    add_lora,
    lora_config,
    lora_parameters,
    save_lora_weights,
)
from lightning_cat.customization.loss import DreamBoothLoss, DreamBoothRows, dreambooth_loss, dreambooth_rows

__all__ = [
    "CAT_ADAPTER_FOLDER",
    "CUSTOMIZATION_FILE",
    "DEFAULT_CDL_NEGATIVE_PROMPT",
    "DEFAULT_NOISE_TOKEN",
    "TEXT_ENCODER_LORA_TARGETS",
    "UNET_LORA_TARGETS",
    "ContrastiveDecoupling",
    "DreamBoothLoss",
    "Finetune",
    "DreamBoothRows",
    "add_lora",
    "dreambooth_loss",
    "dreambooth_rows",
    "export_full_model",
    "export_lora_model",
    "load_customized_components",
    "lora_config",
    "lora_parameters",
    "read_customization",
    "save_lora_weights",
]
