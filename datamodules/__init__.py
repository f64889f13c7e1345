"""Datamodules: image folders, ``datasets`` sources, clean/protected pairs, DreamBooth instance + class sets."""

from lightning_cat.datamodules.base import ImageDataModule
from lightning_cat.datamodules.datasets import (
    DreamBoothDataset,
    ImageFolderDataset,
    PairedImageDataset,
    read_manifest,
)
from lightning_cat.datamodules.dreambooth import DreamBoothDataModule
from lightning_cat.datamodules.evaluation import EvaluationDataModule
from lightning_cat.datamodules.folder import ImageFolderDataModule
from lightning_cat.datamodules.hf_dataset import HFImageDataModule, HFImageDataset, load_hf_images
from lightning_cat.datamodules.paired import PairedImageDataModule
from lightning_cat.datamodules.prompts import PromptDataModule, PromptDataset

__all__ = [
    "DreamBoothDataModule",
    "DreamBoothDataset",
    "EvaluationDataModule",
    "HFImageDataModule",
    "HFImageDataset",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ImageFolderDataset",
    "PairedImageDataModule",
    "PairedImageDataset",
    "PromptDataModule",
    "PromptDataset",
    "load_hf_images",
    "read_manifest",
]
