"""LightningModules: thin Trainer glue around the plain-torch algorithms."""

from lightning_cat.modules.base import DiffusionModule, LightningCatModule
from lightning_cat.modules.cat import CATAdapterModule
from lightning_cat.modules.dreambooth import DreamBoothModule
from lightning_cat.modules.evaluation import EvaluationModule
from lightning_cat.modules.protection import ProtectionModule
from lightning_cat.modules.purification import PurificationModule
from lightning_cat.modules.sampling import SamplingModule

__all__ = [
    "CATAdapterModule",
    "DiffusionModule",
    "DreamBoothModule",
    "EvaluationModule",
    "LightningCatModule",
    "ProtectionModule",
    "PurificationModule",
    "SamplingModule",
]
