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
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch

from lightning_cat.cat.adapter import CAT_VARIANTS, add_cat_adapter, cat_lora_config, save_cat_adapter
from lightning_cat.cat.loss import CAT_LOSSES, CATLoss
from lightning_cat.cat.training import LR_SCHEDULERS, cat_optimizer, per_image_noise
from lightning_cat.diffusion.latents import latent_shape
from lightning_cat.modules.base import DiffusionModule
from lightning_cat.perceptual import LPIPS_NETS, load_lpips

__all__ = ["CATAdapterModule"]

_INITS = ("gaussian", "kaiming", "zeros")


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
        rank: LoRA rank (>= 1).
        alpha: LoRA alpha (``None``: equal to ``rank``).
        init: LoRA init; ``gaussian`` and ``kaiming`` start at the unchanged VAE.
        dropout: LoRA dropout in [0, 1).
        loss: ``mse`` (the released objective), ``lpips`` or ``mse+lpips``.
        lpips_weight: weight of the LPIPS term under ``mse+lpips``.
        lpips_net: LPIPS backbone family.
        lpips_backbone_weights: local torchvision state dict of that backbone (needed for LPIPS).
        lpips_random_backbone: random LPIPS backbone (tests only; not a perceptual distance).
        learning_rate: AdamW learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        lr_scheduler: ``cosine`` (to 0 over the run, no warmup) or ``constant``.
        max_grad_norm: clip the gradient norm of the LoRA weights to this (``None``: no clipping).
        output_dir: where the adapter is written at the end of ``fit`` (``None``: not exported);
            must not be a non-empty folder.
        seed: seed of the posterior samples, drawn per image and step (the same under any number
            of DDP processes).

    Raises:
        ValueError: for an illegal option (named with its allowed values), before any model loads.
        FileExistsError: if ``output_dir`` already holds files.
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str = "tiny",
        revision: str | None = None,
        variant: str | None = None,
        adapter_variant: Literal["both", "encoder", "decoder"] = "both",
        rank: int = 128,
        alpha: float | None = None,
        init: Literal["gaussian", "kaiming", "zeros"] = "gaussian",
        dropout: float = 0.0,
        loss: Literal["mse", "lpips", "mse+lpips"] = "mse",
        lpips_weight: float = 1.0,
        lpips_net: Literal["alex", "vgg", "squeeze"] = "alex",
        lpips_backbone_weights: str | None = None,
        lpips_random_backbone: bool = False,
        learning_rate: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-2,
        lr_scheduler: Literal["cosine", "constant"] = "cosine",
        max_grad_norm: float | None = None,
        output_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(pretrained_model_name_or_path, revision=revision, variant=variant)
        self._check_options(
            adapter_variant=adapter_variant,
            rank=rank,
            init=init,
            dropout=dropout,
            loss=loss,
            lpips_net=lpips_net,
            lpips_backbone_weights=lpips_backbone_weights,
            lpips_random_backbone=lpips_random_backbone,
            learning_rate=learning_rate,
            lr_scheduler=lr_scheduler,
            max_grad_norm=max_grad_norm,
            output_dir=output_dir,
        )
        self.save_hyperparameters()
        self.load_pretrained("vae")
        self.vae = add_cat_adapter(
            self.vae, cat_lora_config(adapter_variant, rank=rank, alpha=alpha, init=init, dropout=dropout)
        )
        lpips = None
        if loss != "mse":
            lpips = load_lpips(lpips_net, lpips_backbone_weights, random_backbone=lpips_random_backbone)
        self.cat_loss = CATLoss(loss, lpips=lpips, lpips_weight=lpips_weight)
        # LPIPS weights are frozen and come from lpips_backbone_weights: keep them out of checkpoints.
        self.pretrained_parts += ("cat_loss",)

    @classmethod
    def _check_options(cls, **options: Any) -> None:
        name = cls.__name__
        choices = {
            "adapter_variant": CAT_VARIANTS,
            "init": _INITS,
            "loss": CAT_LOSSES,
            "lpips_net": LPIPS_NETS,
            "lr_scheduler": LR_SCHEDULERS,
        }
        for option, allowed in choices.items():
            if options[option] not in allowed:
                raise ValueError(f"{name}: {option}={options[option]!r} is not one of {list(allowed)}")
        if options["rank"] < 1:
            raise ValueError(f"{name}: rank must be >= 1, got {options['rank']}")
        if not 0.0 <= options["dropout"] < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {options['dropout']}")
        if options["learning_rate"] <= 0:
            raise ValueError(f"{name}: learning_rate must be > 0, got {options['learning_rate']}")
        if options["max_grad_norm"] is not None and options["max_grad_norm"] <= 0:
            raise ValueError(f"{name}: max_grad_norm must be > 0 or None, got {options['max_grad_norm']}")
        if (
            options["loss"] != "mse"
            and options["lpips_backbone_weights"] is None
            and not options["lpips_random_backbone"]
        ):
            raise ValueError(
                f"{name}: loss={options['loss']!r} needs lpips_backbone_weights (a local torchvision "
                f"{options['lpips_net']} state dict; nothing is downloaded)"
            )
        output_dir = options["output_dir"]
        if output_dir is not None and Path(output_dir).exists():
            if not Path(output_dir).is_dir() or any(Path(output_dir).iterdir()):
                raise FileExistsError(f"{name}: output_dir '{output_dir}' already exists and is not empty")

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
        return output.loss

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """The CAT objective on the test batch's protected images, decoding the posterior mean."""
        images = batch["image"]
        output = self.cat_loss(self.vae, images)
        self.log("test/cat_loss", output.loss, batch_size=images.shape[0], sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        num_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(num_steps):
            raise ValueError(f"{type(self).__name__}: the learning-rate schedule needs trainer.max_steps or max_epochs")
        optimizer, scheduler = cat_optimizer(
            [p for p in self.parameters() if p.requires_grad],
            num_steps=int(num_steps),
            learning_rate=self.hparams.learning_rate,
            betas=tuple(self.hparams.betas),
            weight_decay=self.hparams.weight_decay,
            lr_scheduler=self.hparams.lr_scheduler,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm=None
    ) -> None:
        if self.hparams.max_grad_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm")
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_fit_end(self) -> None:
        """Export the adapter to ``output_dir`` (rank 0 writes; every rank waits for it)."""
        if self.hparams.output_dir is None:
            return
        if self.trainer.is_global_zero:
            save_cat_adapter(self.vae, self.hparams.output_dir)
        self.trainer.strategy.barrier("cat_adapter_export")
