"""LatentDistortionCallback: CAT's latent distortion of a clean/protected pair set, base vs CAT.

Logs :class:`lightning_cat.metrics.LatentDistortion` for the base VAE and, when given, a CAT
adapter folder, over the ``test`` (and ``validate``) steps whose outputs (or, when a step returns
none, batches) hold pairs: ``image`` protected, ``clean`` clean, as a ``PairedImageDataModule``
batch or ``EvaluationModule``'s flattened ``EvaluationDataModule`` batch gives. Keys are
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

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_cat.cat.adapter import load_cat_vae
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
        keys: the values of :class:`~lightning_cat.metrics.LatentDistortion` to log (``None``: all).

    Raises:
        ValueError: at construction, for an unknown key (naming the allowed ones); at setup, if no
            checkpoint is given and the module names none.
        KeyError: at the end of the epoch, if no step gave a clean/protected pair (use
            PairedImageDataModule, or EvaluationDataModule with a ``protected_root``).
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str | None = None,
        cat_adapter: str | None = None,
        revision: str | None = None,
        variant: str | None = None,
        keys: list[str] | None = None,
    ) -> None:
        super().__init__()
        unknown = sorted(set(keys or ()) - set(LatentDistortion.KEYS))
        if unknown:
            raise ValueError(
                f"LatentDistortionCallback: unknown keys {unknown}; choose from {list(LatentDistortion.KEYS)}"
            )
        self.keys = list(keys) if keys is not None else list(LatentDistortion.KEYS)
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
        # At setup the module may not be on its device yet; by the start of the loop it is. The VAEs
        # also take the module's dtype (float64 under precision 64-true; fp32 under *-mixed).
        if self.metrics is not None:
            self.metrics.to(pl_module.device)
            for metric in self.metrics.values():
                metric.vae.to(pl_module.dtype)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._to_module_device(pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._to_module_device(pl_module)

    def _update(self, outputs: Any, batch: Any) -> None:
        inputs = outputs if isinstance(outputs, Mapping) else batch
        protected, clean = inputs.get("image"), inputs.get("clean")
        if not isinstance(protected, torch.Tensor) or not isinstance(clean, torch.Tensor) or not len(protected):
            return  # e.g. a generated-images-only step of EvaluationDataModule
        for metric in self.metrics.values():
            metric.update(protected.float(), clean.float())

    def _log(self, pl_module: LightningModule, stage: str) -> None:
        for name, metric in self.metrics.items():
            values = metric.compute()
            # Computed values are reduced over ranks: with no pair anywhere every rank gets 0/0.
            if values["recon_psnr"].isnan():
                raise KeyError(
                    "LatentDistortionCallback needs clean/protected pairs (step outputs or batches with 'image' "
                    "and 'clean', as PairedImageDataModule, or EvaluationDataModule with a protected_root, gives); "
                    "no step had them"
                )
            logged = {f"{stage}/{name}/{key}": values[key] for key in self.keys}
            pl_module.log_dict(logged, sync_dist=False)  # already reduced across ranks by torchmetrics
            metric.reset()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.metrics is not None:
            self._update(outputs, batch)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.metrics is not None:
            self._log(pl_module, "test")

    # Only under `validate` (set up there): validation inside `fit` is not evaluated.
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.metrics is not None and not trainer.sanity_checking:
            self._update(outputs, batch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.metrics is not None and not trainer.sanity_checking:
            self._log(pl_module, "val")
