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
from lightning.pytorch import LightningModule, Trainer

from lightning_cat.callbacks.evaluator import MetricEvaluator, images_of
from lightning_cat.cat.adapter import load_cat_vae
from lightning_cat.diffusion.loading import load_vae
from lightning_cat.metrics.latent_distortion import LatentDistortion, check_latent_distortion_keys

__all__ = ["LatentDistortionCallback"]


class LatentDistortionCallback(MetricEvaluator):
    """Latent distortion and reconstruction errors of protected vs clean images, base and CAT VAE.

    Args:
        pretrained_model_name_or_path: checkpoint of the base VAE (``None``: the LightningModule's
            ``pretrained_model_name_or_path``).
        cat_adapter: a CAT adapter folder (peft format) evaluated beside the base VAE (``None``: base only).
        revision: hub revision of the checkpoint.
        variant: weight variant of the checkpoint files.
        keys: the values of :class:`~lightning_cat.metrics.LatentDistortion` to compute and log
            (``None``: all); the VAE passes no listed value needs are skipped.

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
        self.keys = check_latent_distortion_keys(keys, "LatentDistortionCallback")
        self.pretrained_model_name_or_path = pretrained_model_name_or_path
        self.cat_adapter = cat_adapter
        self.revision = revision
        self.variant = variant

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Only under `test` and `validate`: validation inside `fit` is not evaluated.
        if stage not in ("test", "validate") or len(self.metrics):
            return
        name = self.pretrained_model_name_or_path or getattr(pl_module, "pretrained_model_name_or_path", None)
        if name is None:
            raise ValueError(
                "LatentDistortionCallback: set pretrained_model_name_or_path (the module does not name a checkpoint)"
            )
        weights = {"revision": self.revision, "variant": self.variant}
        base = load_vae(name, **weights).requires_grad_(False).eval()
        self.metrics["base"] = LatentDistortion(base, keys=self.keys)
        if self.cat_adapter is not None:
            adapted = load_cat_vae(name, self.cat_adapter, **weights)
            self.metrics["cat"] = LatentDistortion(adapted, reference_vae=base, keys=self.keys)

    def prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The VAEs take the module's dtype (float64 under precision 64-true; fp32 under *-mixed).
        for metric in self.metrics.values():
            metric.vae.to(pl_module.dtype)

    def update_metrics(self, inputs: Mapping[str, Any]) -> None:
        protected, clean = images_of(inputs, "image"), images_of(inputs, "clean")
        if protected is None or clean is None:
            return  # e.g. a generated-images-only step of EvaluationDataModule
        for metric in self.metrics.values():
            metric.update(protected, clean)

    def log_key(self, stage: str, name: str, key: str = "") -> str:
        return f"{stage}/{name}/{key}"

    def select_values(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Computed values are reduced over ranks: with no pair anywhere every value is 0/0 on every rank.
        if values and all(value.isnan() for value in values.values()):
            raise KeyError(
                "LatentDistortionCallback needs clean/protected pairs (step outputs or batches with 'image' "
                "and 'clean', as PairedImageDataModule, or EvaluationDataModule with a protected_root, gives); "
                "no step had them"
            )
        return {key: value for key, value in values.items() if key.rsplit("/", 1)[-1] in self.keys}
