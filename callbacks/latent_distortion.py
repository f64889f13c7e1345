"""LatentDistortionCallback: CAT's latent distortion of a clean/protected pair set, base vs CAT.

Logs :class:`lightning_cat.metrics.LatentDistortion` for the base VAE and, when given, a CAT
adapter folder, over the ``test`` (and ``validate``) batches of a ``PairedImageDataModule``
(``batch["image"]`` protected, ``batch["clean"]`` clean). Keys are
``{stage}/{base|cat}/{metric}``, e.g. ``test/cat/latent_mse_relative``. The CAT VAE's distortion
against the ORIGINAL encoder's clean latents is in ``.../latent_mse_vs_reference*``.

Example (``lightning-cat test``, with the CAT module's ``test_step`` as the model)::

    trainer:
      callbacks:
        - class_path: LatentDistortionCallback
          init_args: {cat_adapter: outputs/cat/both.tiny}
    model: {class_path: CATAdapterModule, init_args: {pretrained_model_name_or_path: tiny, rank: 4}}
    data: {class_path: PairedImageDataModule, init_args: {clean_root: clean/, protected_root: protected/}}

Under DDP every rank updates its own metric states; they are summed across ranks when computed
(a DistributedSampler that pads the last batch counts its repeated pairs twice).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_cat.diffusion.cat import load_cat_vae
from lightning_cat.diffusion.loading import load_vae
from lightning_cat.metrics.latent_distortion import LatentDistortion

__all__ = ["LatentDistortionCallback"]


class LatentDistortionCallback(Callback):
    """Latent distortion and reconstruction errors of protected vs clean images, base and CAT VAE.

    Args:
        pretrained_model_name_or_path: checkpoint of the base VAE (``None``: the LightningModule's
            ``pretrained_model_name_or_path``).
        cat_adapter: a CAT adapter folder (peft format) evaluated beside the base VAE (``None``: base only).
        revision: hub revision of the checkpoint.
        variant: weight variant of the checkpoint files.

    Raises:
        ValueError: at setup, if no checkpoint is given and the module names none.
        KeyError: at the first batch, if it lacks ``image`` or ``clean`` (use PairedImageDataModule).
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str | None = None,
        cat_adapter: str | None = None,
        revision: str | None = None,
        variant: str | None = None,
    ) -> None:
        super().__init__()
        self.pretrained_model_name_or_path = pretrained_model_name_or_path
        self.cat_adapter = cat_adapter
        self.revision = revision
        self.variant = variant
        self.metrics: torch.nn.ModuleDict | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage not in ("test", "validate") or self.metrics is not None:
            return
        name = self.pretrained_model_name_or_path or getattr(pl_module, "pretrained_model_name_or_path", None)
        if name is None:
            raise ValueError(
                "LatentDistortionCallback: set pretrained_model_name_or_path (the module does not name a checkpoint)"
            )
        weights = {"revision": self.revision, "variant": self.variant}
        base = load_vae(name, **weights).requires_grad_(False).eval()
        metrics = {"base": LatentDistortion(base)}
        if self.cat_adapter is not None:
            metrics["cat"] = LatentDistortion(load_cat_vae(name, self.cat_adapter, **weights), reference_vae=base)
        self.metrics = torch.nn.ModuleDict(metrics)

    def _to_module_device(self, pl_module: LightningModule) -> None:
        # At setup the module may not be on its device yet; by the start of the loop it is.
        if self.metrics is not None:
            self.metrics.to(pl_module.device)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._to_module_device(pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._to_module_device(pl_module)

    def _update(self, batch: dict[str, Any]) -> None:
        missing = [key for key in ("image", "clean") if key not in batch]
        if missing:
            raise KeyError(
                f"LatentDistortionCallback needs clean/protected pairs (batch keys 'image' and 'clean', as "
                f"PairedImageDataModule gives); the batch lacks {missing}"
            )
        for metric in self.metrics.values():
            metric.update(batch["image"].float(), batch["clean"].float())

    def _log(self, pl_module: LightningModule, stage: str) -> None:
        for name, metric in self.metrics.items():
            values = {f"{stage}/{name}/{key}": value for key, value in metric.compute().items()}
            pl_module.log_dict(values, sync_dist=False)  # already reduced across ranks by torchmetrics
            metric.reset()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.metrics is not None:
            self._update(batch)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.metrics is not None:
            self._log(pl_module, "test")

    # Only under `validate` (set up there): validation inside `fit` is not evaluated.
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.metrics is not None and not trainer.sanity_checking:
            self._update(batch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.metrics is not None and not trainer.sanity_checking:
            self._log(pl_module, "val")
