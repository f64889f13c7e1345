"""CAT (Peng et al., ICML 2025) in plain torch: LoRA adapters on the VAE (config per variant,
export, load), the objective, and a Trainer-free training loop."""

from lightning_cat.cat.adapter import (
    CAT_TARGET_MODULES,
    CAT_VARIANTS,
    CATVariant,
    LoraInit,
    add_cat_adapter,
    cat_base_model_name,
    cat_lora_config,
    cat_target_modules,
    load_cat_vae,
    save_cat_adapter,
)
from lightning_cat.cat.loss import CAT_LOSSES, CATLoss, CATLossName, CATLossOutput, cat_reconstruction
from lightning_cat.cat.training import cat_optimizer, per_image_noise, train_cat_adapter

__all__ = [
    "CAT_LOSSES",
    "CAT_TARGET_MODULES",
    "CAT_VARIANTS",
    "CATLoss",
    "CATLossName",
    "CATLossOutput",
    "CATVariant",
    "LoraInit",
    "add_cat_adapter",
    "cat_base_model_name",
    "cat_lora_config",
    "cat_optimizer",
    "cat_reconstruction",
    "cat_target_modules",
    "load_cat_vae",
    "per_image_noise",
    "save_cat_adapter",
    "train_cat_adapter",
]
