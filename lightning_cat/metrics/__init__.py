"""torchmetrics metrics of the protocol, usable with or without Lightning."""

from lightning_cat.metrics.latent_distortion import LatentDistortion

__all__ = ["LatentDistortion"]
