"""CAT (Peng et al., ICML 2025) in plain torch: the objective, the training loop, the fidelity study.

The adapter plumbing (LoRA config per variant, export, loading) is in
:mod:`lightning_cat.diffusion.cat` and re-exported here.
"""

from lightning_cat.cat.loss import CAT_LOSSES, CATLoss, CATLossOutput, cat_reconstruction
from lightning_cat.cat.training import LR_SCHEDULERS, cat_optimizer, per_image_noise, train_cat_adapter
from lightning_cat.diffusion.cat import (
    CAT_TARGET_MODULES,
    CAT_VARIANTS,
    add_cat_adapter,
    cat_lora_config,
    load_cat_vae,
    save_cat_adapter,
)

__all__ = [
    "CAT_LOSSES",
    "CAT_TARGET_MODULES",
    "CAT_VARIANTS",
    "LR_SCHEDULERS",
    "CATLoss",
    "CATLossOutput",
    "add_cat_adapter",
    "cat_lora_config",
    "cat_optimizer",
    "cat_reconstruction",
    "load_cat_vae",
    "per_image_noise",
    "save_cat_adapter",
    "train_cat_adapter",
]
