"""CATAdapterModule: train CAT's LoRA adapters on a frozen VAE (Peng et al., ICML 2025).

Thin Trainer glue around :mod:`lightning_cat.cat`: the objective is
:class:`~lightning_cat.cat.CATLoss`, the optimizer and schedule
:func:`~lightning_cat.cat.cat_optimizer`. Train on the PROTECTED images only (an
``ImageFolderDataModule`` over the protected set); only ``batch["image"]`` is read, so a clean
image never reaches the adapter. At the end of ``fit`` the adapter is exported in peft format to
``output_dir``::

    lightning-cat fit --config configs/cat/both.tiny.yaml
    lightning-cat fit --model CATAdapterModule --model.output_dir adapters/subject \
        --data ImageFolderDataModule --data.root protected/ --trainer.max_steps 10000

Gradient clipping is the Trainer's ``gradient_clip_val`` (off in the reference recipe). Logged:
``train/loss`` (and ``train/mse`` / ``train/lpips`` under ``mse+lpips``), ``train/lr``, and input |
reconstruction grids (``train/reconstructions``) for loggers that take images.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lightning_cat.atomic import check_output_dir
from lightning_cat.cat import (
    CATLoss,
    CATLossName,
    CATVariant,
    LoraInit,
    add_cat_adapter,
    cat_base_model_name,
    cat_lora_config,
    cat_optimizer,
    cat_reconstruction,
    per_image_noise,
    save_cat_adapter,
)
from lightning_cat.diffusion.checkpointing import enable_gradient_checkpointing
from lightning_cat.diffusion.latents import latent_shape
from lightning_cat.modules.base import DiffusionModule
from lightning_cat.modules.image_logging import evaluation_mode, image_loggers, log_image_grid
from lightning_cat.optimization import LRSchedule, Optimizer
from lightning_cat.perceptual import LPIPSNet, load_lpips

__all__ = ["CATAdapterModule"]


class CATAdapterModule(DiffusionModule):
    """LoRA adapters on the frozen ``AutoencoderKL`` trained to reconstruct protected images.

    The reference recipe (and these defaults): variant ``both``, rank 128, alpha = rank, gaussian
    init (the adapted VAE starts exactly at the base VAE), squared error of
    ``D'(E'(x_a).sample())`` against ``x_a``, AdamW lr 1e-4, betas (0.9, 0.999), weight decay
    1e-2, cosine schedule without warmup over the run's optimizer steps, batch 4, 10,000 steps,
    512 px, no gradient clipping. Under ``*-mixed`` precision the frozen VAE (and LPIPS) weights
    are cast to the half dtype; the LoRA weights stay fp32.

    Args:
        pretrained_model_name_or_path: checkpoint whose ``vae`` is adapted (folder, hub id, ``tiny``).
        revision: hub revision.
        variant: weight variant of the checkpoint files (e.g. ``fp16``).
        adapter_variant: adapt the ``encoder``, the ``decoder`` or ``both``.
        lora_rank: LoRA rank (>= 1).
        lora_alpha: LoRA alpha (``None``: equal to ``lora_rank``).
        lora_init: LoRA init; ``gaussian`` and ``kaiming`` start at the unchanged VAE.
        lora_dropout: LoRA dropout in [0, 1).
        loss: ``mse`` (the released objective), ``lpips`` or ``mse+lpips``.
        lpips_weight: weight of the LPIPS term under ``mse+lpips``.
        lpips_net: LPIPS backbone family.
        lpips_backbone_weights: local torchvision state dict of that backbone (needed for LPIPS).
        lpips_random_backbone: random LPIPS backbone (tests only; not a perceptual distance).
        learning_rate: AdamW learning rate.
        adam_beta1: AdamW beta1.
        adam_beta2: AdamW beta2.
        weight_decay: AdamW weight decay.
        lr_scheduler: ``cosine`` (to 0 over the run, no warmup) or ``constant``.
        optimizer: ``adamw`` (torch, the reference) or ``adamw_8bit`` (bitsandbytes: the
            ``adam8bit`` extra; its optimizer states take a quarter of the memory).
        gradient_checkpointing: recompute the VAE encoder's and decoder's activations in the
            backward pass, layer by layer (:func:`~lightning_cat.diffusion.layerwise_checkpoint`):
            less memory, same gradients.
        log_images_every_n_steps: every this many optimizer steps (and after the first), log the
            step's first ``num_log_images`` inputs above their reconstructions (posterior mean,
            eval mode) to the loggers that take images (``None``: never).
        num_log_images: images per logged grid.
        output_dir: where the adapter is written at the end of ``fit`` (``None``: not exported).
        overwrite: replace an ``output_dir`` that already holds files.
        seed: seed of the posterior samples, drawn per image and step (the same under any number
            of DDP processes).

    Raises:
        ValueError: for an illegal option (named with its allowed values), before any model loads.
        FileExistsError: if ``output_dir`` already holds files and ``overwrite`` is off.
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str = "tiny",
        revision: str | None = None,
        variant: str | None = None,
        adapter_variant: CATVariant = "both",
        lora_rank: int = 128,
        lora_alpha: float | None = None,
        lora_init: LoraInit = "gaussian",
        lora_dropout: float = 0.0,
        loss: CATLossName = "mse",
        lpips_weight: float = 1.0,
        lpips_net: LPIPSNet = "alex",
        lpips_backbone_weights: str | None = None,
        lpips_random_backbone: bool = False,
        learning_rate: float = 1e-4,
        adam_beta1: float = 0.9,
        adam_beta2: float = 0.999,
        weight_decay: float = 1e-2,
        lr_scheduler: LRSchedule = "cosine",
        optimizer: Optimizer = "adamw",
        gradient_checkpointing: bool = False,
        log_images_every_n_steps: int | None = 500,
        num_log_images: int = 4,
        output_dir: str | None = None,
        overwrite: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()

    def check_options(self) -> None:
        super().check_options()
        h = self.hparams
        if h.loss != "mse" and h.lpips_backbone_weights is None and not h.lpips_random_backbone:
            raise ValueError(
                f"{type(self).__name__}: loss={h.loss!r} needs lpips_backbone_weights (a local torchvision "
                f"{h.lpips_net} state dict; nothing is downloaded)"
            )
        if h.log_images_every_n_steps is not None and h.log_images_every_n_steps < 1:
            self.fail("log_images_every_n_steps", ">= 1 or None")
        if h.num_log_images < 1:
            self.fail("num_log_images", ">= 1")
        if h.output_dir is not None:
            check_output_dir(h.output_dir, h.overwrite, owner=f"{type(self).__name__}: output_dir")

    def configure_models(self) -> None:
        h = self.hparams
        self.load_pretrained("vae")
        config = cat_lora_config(
            h.adapter_variant, rank=h.lora_rank, alpha=h.lora_alpha, init=h.lora_init, dropout=h.lora_dropout
        )
        self.vae = add_cat_adapter(self.vae, config)
        if h.gradient_checkpointing:
            enable_gradient_checkpointing(self.vae.get_base_model())
        lpips = None
        if h.loss != "mse":
            lpips = load_lpips(h.lpips_net, h.lpips_backbone_weights, random_backbone=h.lpips_random_backbone)
        self.cat_loss = CATLoss(h.loss, lpips=lpips, lpips_weight=h.lpips_weight)
        # LPIPS weights are frozen and come from lpips_backbone_weights: keep them out of checkpoints.
        self.add_pretrained_parts("cat_loss")
        self._images_logged_at = -1

    def _noise(self, images: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        shape = latent_shape(self.vae.get_base_model(), images.shape)
        indices = batch.get("index")
        if indices is None:  # a batch without indices: plain draws from the seeded global RNG
            return torch.randn((images.shape[0], *shape), device=images.device)
        return per_image_noise(shape, indices, self.hparams.seed, self.global_step).to(images.device)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images = batch["image"]  # the protected images; any "clean" key is deliberately ignored
        output = self.cat_loss(self.vae, images, self._noise(images, batch))
        if not torch.isfinite(output.loss):
            raise FloatingPointError(
                f"{type(self).__name__}: loss is {output.loss.item()} at step {self.global_step} "
                f"(learning_rate {self.hparams.learning_rate}; under *-mixed precision try 32-true)"
            )
        logs = {"train/loss": output.loss}
        if output.mse is not None and output.lpips is not None:
            logs.update({"train/mse": output.mse, "train/lpips": output.lpips})
        self.log_dict(logs, prog_bar=True, batch_size=images.shape[0])
        if self._trainer is not None and self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=images.shape[0])
        return output.loss

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        every, step = self.hparams.log_images_every_n_steps, self.global_step
        if every is None or step == self._images_logged_at or (step != 1 and step % every) or not image_loggers(self):
            return
        self._images_logged_at = step
        images = batch["image"][: self.hparams.num_log_images]
        with evaluation_mode(self), self.trainer.precision_plugin.forward_context():
            reconstructions = cat_reconstruction(self.vae, images)
        log_image_grid(self, "train/reconstructions", [images, reconstructions], step=step)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """The CAT objective on the test batch's protected images, decoding the posterior mean."""
        images = batch["image"]
        output = self.cat_loss(self.vae, images)
        self.log("test/cat_loss", output.loss, batch_size=images.shape[0], sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        num_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(num_steps):
            raise ValueError(f"{type(self).__name__}: the learning-rate schedule needs trainer.max_steps or max_epochs")
        optimizer, scheduler = cat_optimizer(
            [p for p in self.parameters() if p.requires_grad],
            num_steps=int(num_steps),
            learning_rate=h.learning_rate,
            betas=(h.adam_beta1, h.adam_beta2),
            weight_decay=h.weight_decay,
            lr_scheduler=h.lr_scheduler,
            optimizer=h.optimizer,
            fuse=self.fuse_optimizer,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_end(self) -> None:
        """Export the adapter to ``output_dir`` (rank 0 writes; every rank waits for it)."""
        h = self.hparams
        if h.output_dir is None:
            return
        if self.trainer.is_global_zero:
            save_cat_adapter(
                self.vae,
                h.output_dir,
                overwrite=h.overwrite,
                base_model_name_or_path=cat_base_model_name(h.pretrained_model_name_or_path),
                revision=h.revision,
            )
        self.trainer.strategy.barrier("cat_adapter_export")
