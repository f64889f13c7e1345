"""LightningModules: thin Trainer glue around the plain-torch algorithms."""

from lightning_cat.modules.base import DiffusionModule
from lightning_cat.modules.cat import CATAdapterModule

__all__ = ["CATAdapterModule", "DiffusionModule"]
