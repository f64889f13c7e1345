"""Purifiers: callables on image batches that try to remove protective perturbations."""

from lightning_cat.purification.base import Purifier, purification_generator, purify_images
from lightning_cat.purification.classical import GaussianBlur, JPEGCompression, ResizeDownUp, TVDenoise
from lightning_cat.purification.impress import IMPRESS
from lightning_cat.purification.latent_diffpure import LatentDiffPure, LatentDiffusionPurifier
from lightning_cat.purification.latent_gridpure import LatentGrIDPure
from lightning_cat.purification.noisy_upscale import NoisyUpscale
from lightning_cat.purification.pretrained import PretrainedPurifier
from lightning_cat.purification.restoration import FaceRestorer, StateDictFaceRestorer

#: Purifiers by the short name used in experiment defenses (``purify:<name>``).
PURIFIERS: dict[str, type[Purifier]] = {
    cls.name: cls
    for cls in (
        JPEGCompression,
        GaussianBlur,
        ResizeDownUp,
        TVDenoise,
        NoisyUpscale,
        LatentDiffPure,
        LatentGrIDPure,
        IMPRESS,
    )
}


def build_purifier(name: str, **options) -> Purifier:
    """Instantiate the purifier registered as ``name`` with ``options``."""
    if name not in PURIFIERS:
        raise ValueError(f"unknown purifier {name!r}; choose one of {sorted(PURIFIERS)}")
    return PURIFIERS[name](**options)


__all__ = [
    "IMPRESS",
    "PURIFIERS",
    "FaceRestorer",
    "GaussianBlur",
    "LatentGrIDPure",
    "JPEGCompression",
    "LatentDiffPure",
    "LatentDiffusionPurifier",
    "NoisyUpscale",
    "PretrainedPurifier",
    "Purifier",
    "ResizeDownUp",
    "StateDictFaceRestorer",
    "TVDenoise",
    "build_purifier",
    "purification_generator",
    "purify_images",
]
