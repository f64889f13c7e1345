"""Callbacks: metric evaluators, image and manifest writers."""

from lightning_cat.callbacks.latent_distortion import LatentDistortionCallback

__all__ = ["LatentDistortionCallback"]
