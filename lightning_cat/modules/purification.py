"""PurificationModule: run a purifier over a predict dataloader, one seeded image at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_cat.modules.base import LightningCatModule
from lightning_cat.purification.base import Purifier, purify_images

__all__ = ["PurificationModule"]


class PurificationModule(LightningCatModule):
    """Purify every image of the predict set; pair it with ``PurifiedSetWriter`` to save the set.

    Each image is purified on its own with a generator seeded from ``seed`` and its file stem
    (:func:`~lightning_cat.purification.purification_generator`), exactly as a datamodule's
    ``purifier`` option does, so the written set equals the datamodule-option result and does not
    depend on batch size, order or the number of DDP ranks. The purifier's model (if any) loads
    lazily on the module's device at the first batch.

    Example::

        lightning-cat predict --config configs/purify/latent_diffpure.tiny.yaml

    Args:
        purifier: any :class:`~lightning_cat.purification.Purifier` (classical or model-based).
        seed: base seed of the per-image generators.
    """

    def __init__(self, purifier: Purifier, seed: int = 0) -> None:
        self.purifier = purifier  # an object: not a hyperparameter (its options are in manifests)
        super().__init__(ignore=["purifier"])

    def check_options(self) -> None:
        if not isinstance(self.purifier, Purifier):
            raise TypeError(f"{type(self).__name__}: purifier must be a Purifier, got {type(self.purifier).__name__}")

    @property
    def seed(self) -> int:
        return self.hparams.seed

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Returns ``image`` (purified), ``source`` (the input images) and ``path``."""
        images = batch["image"]
        purified = purify_images(self.purifier, images, [Path(path).stem for path in batch["path"]], self.seed)
        return {"image": purified, "source": images, "path": list(batch["path"])}
