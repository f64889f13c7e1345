"""DreamBooth customization (full or LoRA) with prior preservation, CAT VAE and CDL prompts.

The step itself is the shared plain-torch :func:`~lightning_cat.customization.dreambooth_loss`; this
module wires it to the Trainer: which weights train, latent caching, the missing class-prior images
(made in ``prepare_data`` by :func:`~lightning_cat.customization.class_images.generate_class_images`),
optimizer and schedule, and the export of the customized model at fit end::

    lightning-cat fit --config configs/dreambooth/lora.tiny.yaml

The datamodule is :class:`~lightning_cat.datamodules.DreamBoothDataModule`; gradient clipping is
the Trainer's ``gradient_clip_val`` (the configs set 1.0). Logged: ``train/loss``,
``train/loss_instance``, ``train/loss_prior`` (with prior preservation), ``train/lr`` (and
``train/lr_text_encoder``), and, with a ``validation_prompt``, a grid of seeded samples
(``val/samples``) every ``validation_every_n_steps`` steps for the loggers that take images.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_cat.atomic import check_output_dir
from lightning_cat.cat.adapter import load_cat_vae
from lightning_cat.customization import (
    DEFAULT_CDL_NEGATIVE_PROMPT,
    DEFAULT_NOISE_TOKEN,
    TEXT_ENCODER_LORA_TARGETS,
    UNET_LORA_TARGETS,
    ContrastiveDecoupling,
    Finetune,
    add_lora,
    dreambooth_loss,
    dreambooth_rows,
    export_full_model,
    export_lora_model,
    lora_parameters,
)
from lightning_cat.customization.class_images import generate_class_images
from lightning_cat.diffusion import (
    DiffusionComponents,
    LatentCache,
    build_pipeline,
    encode_prompts,
    latent_distribution,
    load_components,
    load_vae,
    resolve_model_path,
    scale_latents,
    vae_scale_factor,
)
from lightning_cat.modules.base import DiffusionModule
from lightning_cat.modules.image_logging import evaluation_mode, image_loggers, log_image_grid
from lightning_cat.optimization import LRSchedule, Optimizer, adamw
from lightning_cat.sampling.generation import generate_images

__all__ = ["DreamBoothModule"]


class DreamBoothModule(DiffusionModule):
    """DreamBooth fine-tuning of a Stable Diffusion checkpoint (Ruiz et al. 2023).

    Args:
        pretrained_model_name_or_path: base model (diffusers folder, hub id, ``tiny``/``tiny-v``).
        revision: hub revision.
        variant: weight variant.
        finetune: ``full`` trains the UNet (and the text encoder with ``train_text_encoder``);
            ``lora`` adds LoRA to the UNet attention (``to_q, to_k, to_v, to_out.0``) and, with
            ``train_text_encoder``, to the text encoder attention.
        train_text_encoder: also train the text encoder (fully, or its LoRA).
        lora_rank: LoRA rank.
        lora_alpha: LoRA alpha (``None``: equal to the rank).
        lora_dropout: dropout on the LoRA branch.
        learning_rate: AdamW learning rate (reference: 5e-7 full, 5e-5 LoRA).
        text_encoder_learning_rate: learning rate of the text encoder (``None``: ``learning_rate``).
        weight_decay: AdamW weight decay.
        adam_beta1: AdamW beta1.
        adam_beta2: AdamW beta2.
        adam_epsilon: AdamW epsilon.
        optimizer: ``adamw`` or ``adamw_8bit`` (bitsandbytes; Liu et al.'s DreamBooth).
        lr_scheduler: learning-rate schedule over the run's optimizer steps.
        lr_warmup_steps: warm-up steps of the schedule.
        prior_loss_weight: weight of the class-prior loss.
        snr_gamma: Min-SNR-gamma loss weighting (``None``: off).
        gradient_checkpointing: trade compute for memory in the trained models.
        cache_latents: encode each image once and reuse its posterior (a fresh latent is still
            drawn every step); used only when the datamodule's preprocessing is deterministic.
        cat_adapter: CAT adapter folder; its adapted encoder makes the training latents
            (instance and class images) and its adapted decoder is used at sampling.
        cdl: turn on every part of contrastive decoupling learning (the four switches below
            override it one by one).
        cdl_instance_suffix: train instance prompts as ``"{prompt}, {noise_token} noisy pattern"``.
        cdl_class_suffix: train class prompts as ``"{prompt}, without {noise_token} noisy pattern"``.
        cdl_inference_suffix: recorded for sampling: add ``", without {noise_token} noisy pattern"``.
        cdl_negative_prompt: recorded for sampling: use the CDL negative prompt.
        cdl_noise_token: the token naming the perturbation pattern.
        cdl_negative_prompt_text: the CDL negative prompt.
        class_generation_steps: denoising steps when generating missing class images.
        class_generation_guidance: guidance scale when generating class images.
        class_generation_batch_size: images per generation batch.
        class_generation_seed: seed of class image ``i`` is ``class_generation_seed + i``.
        validation_prompt: every ``validation_every_n_steps`` optimizer steps, sample this prompt
            (CDL sampling suffix and negative prompt applied when on) with the model being trained
            and log the images to the loggers that take images (``None``: off). Sampling runs in
            eval mode without gradients, on its own seeded generators: training is unchanged.
        validation_every_n_steps: steps between validation samples.
        num_validation_images: images per validation grid; image ``i`` uses seed ``validation_seed + i``.
        validation_seed: seed of the first validation image.
        validation_inference_steps: denoising steps of the validation samples.
        validation_guidance_scale: guidance scale of the validation samples.
        output_dir: folder the customized model is exported to at the end of ``fit`` (``None``:
            no export; checkpoints only).
        overwrite: replace an existing non-empty ``output_dir``.
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str = "tiny",
        revision: str | None = None,
        variant: str | None = None,
        finetune: Finetune = "lora",
        train_text_encoder: bool = False,
        lora_rank: int = 16,
        lora_alpha: float | None = None,
        lora_dropout: float = 0.0,
        learning_rate: float = 5e-5,
        text_encoder_learning_rate: float | None = None,
        weight_decay: float = 1e-2,
        adam_beta1: float = 0.9,
        adam_beta2: float = 0.999,
        adam_epsilon: float = 1e-8,
        optimizer: Optimizer = "adamw",
        lr_scheduler: LRSchedule = "constant",
        lr_warmup_steps: int = 0,
        prior_loss_weight: float = 1.0,
        snr_gamma: float | None = None,
        gradient_checkpointing: bool = False,
        cache_latents: bool = True,
        cat_adapter: str | None = None,
        cdl: bool = False,
        cdl_instance_suffix: bool | None = None,
        cdl_class_suffix: bool | None = None,
        cdl_inference_suffix: bool | None = None,
        cdl_negative_prompt: bool | None = None,
        cdl_noise_token: str = DEFAULT_NOISE_TOKEN,
        cdl_negative_prompt_text: str = DEFAULT_CDL_NEGATIVE_PROMPT,
        class_generation_steps: int = 50,
        class_generation_guidance: float = 7.5,
        class_generation_batch_size: int = 4,
        class_generation_seed: int = 0,
        validation_prompt: str | None = None,
        validation_every_n_steps: int = 100,
        num_validation_images: int = 4,
        validation_seed: int = 0,
        validation_inference_steps: int = 25,
        validation_guidance_scale: float = 7.5,
        output_dir: str | None = None,
        overwrite: bool = False,
    ) -> None:
        super().__init__()

    def check_options(self) -> None:
        super().check_options()
        h = self.hparams
        if h.text_encoder_learning_rate is not None and not h.text_encoder_learning_rate > 0:
            self.fail("text_encoder_learning_rate", "> 0 or None")
        for option in ("prior_loss_weight", "lr_warmup_steps"):
            if h[option] < 0:
                self.fail(option, ">= 0")
        if h.snr_gamma is not None and not h.snr_gamma > 0:
            self.fail("snr_gamma", "> 0 or None")
        for option in (
            "class_generation_steps",
            "class_generation_batch_size",
            "validation_every_n_steps",
            "num_validation_images",
            "validation_inference_steps",
        ):
            if h[option] < 1:
                self.fail(option, ">= 1")
        if h.cat_adapter is not None and not (Path(h.cat_adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"{type(self).__name__}: cat_adapter '{h.cat_adapter}' is not a CAT adapter folder (no adapter_config.json)"
            )
        if h.output_dir is not None:
            check_output_dir(h.output_dir, h.overwrite, owner=f"{type(self).__name__}: output_dir")

    def configure_models(self) -> None:
        h = self.hparams
        cdl = h.cdl
        self.cdl = ContrastiveDecoupling(
            instance_suffix=cdl if h.cdl_instance_suffix is None else h.cdl_instance_suffix,
            class_suffix=cdl if h.cdl_class_suffix is None else h.cdl_class_suffix,
            inference_suffix=cdl if h.cdl_inference_suffix is None else h.cdl_inference_suffix,
            negative_prompt=cdl if h.cdl_negative_prompt is None else h.cdl_negative_prompt,
            noise_token=h.cdl_noise_token,
            negative_prompt_text=h.cdl_negative_prompt_text,
        )
        self.load_pretrained("tokenizer", "text_encoder", "unet", "noise_scheduler")
        self._load_vae()
        self._configure_trainable()
        self.latent_cache = LatentCache()
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self._use_latent_cache = False
        self._validated_at = -1

    def _load_vae(self) -> None:
        if self.hparams.cat_adapter is None:
            self.load_pretrained("vae")
            return
        self.vae = load_cat_vae(
            self.pretrained_model_name_or_path, self.hparams.cat_adapter, revision=self.revision, variant=self.variant
        )
        self.add_pretrained_parts("vae")

    def _configure_trainable(self) -> None:
        h = self.hparams
        if h.finetune == "lora":
            add_lora(self.unet, UNET_LORA_TARGETS, rank=h.lora_rank, alpha=h.lora_alpha, dropout=h.lora_dropout)
            if h.train_text_encoder:
                add_lora(
                    self.text_encoder,
                    TEXT_ENCODER_LORA_TARGETS,
                    rank=h.lora_rank,
                    alpha=h.lora_alpha,
                    dropout=h.lora_dropout,
                )
        else:
            self.unet.requires_grad_(True)
            self.text_encoder.requires_grad_(h.train_text_encoder)
        if h.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if h.train_text_encoder:
                self.text_encoder.gradient_checkpointing_enable()
        self.train(self.training)

    def train(self, mode: bool = True) -> DreamBoothModule:
        # Frozen parts stay in eval mode: their outputs (and the latent cache) must not depend on it.
        super().train(mode)
        self.vae.eval()
        if not self.hparams.train_text_encoder:
            self.text_encoder.eval()
        return self

    def trainable_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        """The parameters of ``model`` this run trains."""
        if self.hparams.finetune == "lora":
            return lora_parameters(model)
        return [p for p in model.parameters() if p.requires_grad]

    def _datamodule(self) -> Any:
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    def on_fit_start(self) -> None:
        transform = getattr(self._datamodule(), "transform", None)
        deterministic = getattr(transform, "is_deterministic", None)
        self._use_latent_cache = bool(self.hparams.cache_latents and deterministic)
        if self.hparams.cache_latents and not deterministic:
            rank_zero_warn(
                f"{type(self).__name__}: cache_latents is on but the datamodule's preprocessing is random (or unknown); "
                "latents are encoded every step"
            )
        if self.hparams.output_dir is None:
            rank_zero_warn(f"{type(self).__name__}: output_dir is not set; the customized model will not be exported")

    # ------------------------------------------------------------------ training

    def prompt_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder states of ``prompts`` (cached per prompt while the text encoder is frozen)."""
        if self.hparams.train_text_encoder:
            return encode_prompts(self.tokenizer, self.text_encoder, prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            with torch.no_grad():
                encoded = encode_prompts(self.tokenizer, self.text_encoder, missing)
            self._prompt_cache.update(zip(missing, encoded.unbind(0), strict=True))
        return torch.stack([self._prompt_cache[p] for p in prompts])

    def training_prompts(self, prompts: list[str], num_instance: int) -> list[str]:
        """Instance then class prompts with the CDL training suffixes that are switched on."""
        return [self.cdl.instance_prompt(p) for p in prompts[:num_instance]] + [
            self.cdl.class_prompt(p) for p in prompts[num_instance:]
        ]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        rows = dreambooth_rows(batch)
        if self._use_latent_cache and rows.keys is not None:
            posterior = self.latent_cache.get(self.vae, rows.images, rows.keys)
        else:
            with torch.no_grad():
                posterior = latent_distribution(self.vae, rows.images)
        latents = scale_latents(self.vae, posterior.sample())
        embeddings = self.prompt_embeddings(self.training_prompts(rows.prompts, rows.num_instance))
        result = dreambooth_loss(
            self.unet,
            self.noise_scheduler,
            latents,
            embeddings,
            num_instance=rows.num_instance,
            prior_loss_weight=self.hparams.prior_loss_weight,
            snr_gamma=self.hparams.snr_gamma,
        )
        if not torch.isfinite(result.loss):
            raise FloatingPointError(f"{type(self).__name__}: loss is {result.loss.item()} at step {self.global_step}")
        size = rows.num_instance
        self.log("train/loss", result.loss, prog_bar=True, batch_size=size)
        self.log("train/loss_instance", result.instance, batch_size=size)
        if result.prior is not None:
            self.log("train/loss_prior", result.prior, batch_size=size)
        if self._trainer is not None and self.trainer.optimizers:
            groups = self.trainer.optimizers[0].param_groups
            self.log("train/lr", groups[0]["lr"], batch_size=size)
            if len(groups) > 1:
                self.log("train/lr_text_encoder", groups[1]["lr"], batch_size=size)
        return result.loss

    # ------------------------------------------------------------------ validation samples

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        h, step = self.hparams, self.global_step
        if h.validation_prompt is None or step == self._validated_at or step % h.validation_every_n_steps:
            return
        if not image_loggers(self):
            return  # e.g. CSVLogger only: nothing could show the samples
        self._validated_at = step
        log_image_grid(self, "val/samples", [self.validation_samples()], step=step)

    def validation_samples(self) -> torch.Tensor:
        """``num_validation_images`` samples of ``validation_prompt`` by the model as it is now, ``[N, 3, H, W]``.

        Generated like :class:`~lightning_cat.modules.SamplingModule` generates (CDL sampling prompt
        and negative prompt), each image from its own CPU generator (``validation_seed + i``), in
        eval mode without gradients; the global RNG is left as it was, so training is unchanged.
        """
        h = self.hparams
        if h.validation_prompt is None:
            raise ValueError(f"{type(self).__name__}: validation_samples needs validation_prompt")
        components = DiffusionComponents(
            source=self.pretrained_model_name_or_path,
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=self.vae,
            unet=self.unet,
        )
        pipeline = build_pipeline(components, revision=self.revision)
        resolution = self._generation_resolution()
        devices = [self.device] if self.device.type == "cuda" else []
        context = self.trainer.precision_plugin.forward_context() if self._trainer is not None else nullcontext()
        with torch.random.fork_rng(devices=devices), evaluation_mode(self), context:
            return generate_images(
                pipeline,
                [self.cdl.sampling_prompt(h.validation_prompt)] * h.num_validation_images,
                [h.validation_seed + i for i in range(h.num_validation_images)],
                negative_prompt=self.cdl.sampling_negative_prompt(None),
                num_inference_steps=h.validation_inference_steps,
                guidance_scale=h.validation_guidance_scale,
                height=resolution,
                width=resolution,
            )

    def configure_optimizers(self) -> dict[str, Any]:
        from diffusers.optimization import get_scheduler

        h = self.hparams
        groups = [{"params": self.trainable_parameters(self.unet), "lr": h.learning_rate}]
        if h.train_text_encoder:
            text_lr = h.text_encoder_learning_rate or h.learning_rate
            groups.append({"params": self.trainable_parameters(self.text_encoder), "lr": text_lr})
        optimizer = adamw(
            groups,
            h.optimizer,
            fuse=self.fuse_optimizer,
            betas=(h.adam_beta1, h.adam_beta2),
            eps=h.adam_epsilon,
            weight_decay=h.weight_decay,
        )
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        total = int(total) if math.isfinite(total) else max(h.lr_warmup_steps, 1)
        scheduler = get_scheduler(
            h.lr_scheduler, optimizer, num_warmup_steps=h.lr_warmup_steps, num_training_steps=max(total, 1)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ class images

    def prepare_data(self) -> None:
        """Generate the class-prior images the datamodule still lacks (one process per node)."""
        data = self._datamodule()
        missing = getattr(data, "missing_class_images", 0)
        if missing:
            self.generate_class_images(
                prompt=data.class_prompt,
                num_images=missing,
                output_dir=data.class_root,
                start_index=data.num_class_images - missing,
            )

    def _generation_resolution(self) -> int:
        transform = getattr(self._datamodule(), "transform", None)
        if transform is not None:
            return int(transform.resolution)
        return int(self.unet.config.sample_size) * vae_scale_factor(self.vae)

    def generate_class_images(self, prompt: str, num_images: int, output_dir: str, start_index: int = 0) -> list[Path]:
        """Generate ``num_images`` class images with the base model (its own VAE even under a CAT
        adapter) into ``output_dir``; see :func:`~lightning_cat.customization.class_images.generate_class_images`."""
        h = self.hparams
        vae = (
            self.vae if h.cat_adapter is None else load_vae(self.pretrained_model_name_or_path, revision=self.revision)
        )
        components = DiffusionComponents(
            source=self.pretrained_model_name_or_path,
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=vae,
            unet=self.unet,
        )
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        rank_zero_info(f"{type(self).__name__}: generating {num_images} class images for {prompt!r} in '{output_dir}'")
        was_training = self.training
        self.eval()
        try:
            return generate_class_images(
                components,
                prompt,
                num_images,
                output_dir,
                start_index=start_index,
                resolution=self._generation_resolution(),
                num_inference_steps=h.class_generation_steps,
                guidance_scale=h.class_generation_guidance,
                batch_size=h.class_generation_batch_size,
                seed=h.class_generation_seed,
                device=device,
                revision=self.revision,
            )
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ export

    def customization_record(self) -> dict[str, Any]:
        """What ``customization.json`` records beside the exported weights."""
        h = self.hparams
        base = h.pretrained_model_name_or_path
        local = Path(base).expanduser()
        if local.is_dir():
            base = str(local.resolve())
        datamodule = self._datamodule()
        transform = getattr(datamodule, "transform", None)
        return {
            "pretrained_model_name_or_path": base,
            "revision": h.revision,
            "variant": h.variant,
            "prediction_type": self.noise_scheduler.config.prediction_type,
            "train_text_encoder": h.train_text_encoder,
            "lora": (
                {
                    "rank": h.lora_rank,
                    "alpha": h.lora_alpha if h.lora_alpha is not None else h.lora_rank,
                    "dropout": h.lora_dropout,
                    "unet_targets": list(UNET_LORA_TARGETS),
                    "text_encoder_targets": list(TEXT_ENCODER_LORA_TARGETS) if h.train_text_encoder else None,
                }
                if h.finetune == "lora"
                else None
            ),
            "cdl": self.cdl.to_dict(),
            "instance_prompt": getattr(datamodule, "instance_prompt", None),
            "class_prompt": getattr(datamodule, "class_prompt", None)
            if getattr(datamodule, "with_prior", False)
            else None,
            "prior_loss_weight": h.prior_loss_weight,
            "resolution": getattr(transform, "resolution", None),
            "learning_rate": h.learning_rate,
            "global_step": self.global_step,
        }

    def export(self, directory: str | Path, overwrite: bool | None = None) -> Path:
        """Write the customized model to ``directory`` (see :mod:`lightning_cat.customization.export`)."""
        h = self.hparams
        overwrite = h.overwrite if overwrite is None else overwrite
        record = self.customization_record()
        if h.finetune == "lora":
            text_encoder = self.text_encoder if h.train_text_encoder else None
            return export_lora_model(
                directory, self.unet, text_encoder, record, cat_adapter=h.cat_adapter, overwrite=overwrite
            )
        # Frozen parts are reloaded in fp32 from the base (they may be half precision here, and
        # the VAE may carry a merged CAT adapter, which is exported separately).
        frozen = ["vae"] + ([] if h.train_text_encoder else ["text_encoder"])
        base = load_components(
            self.pretrained_model_name_or_path, revision=self.revision, variant=self.variant, parts=frozen
        )
        components = DiffusionComponents(
            source=resolve_model_path(self.pretrained_model_name_or_path),
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder if h.train_text_encoder else base.text_encoder,
            vae=base.vae,
            unet=self.unet,
        )
        return export_full_model(directory, components, record, cat_adapter=h.cat_adapter, overwrite=overwrite)

    def on_fit_end(self) -> None:
        if self.hparams.output_dir is None:
            return
        if self.trainer.is_global_zero:
            path = self.export(self.hparams.output_dir)
            rank_zero_info(f"{type(self).__name__}: exported the customized model to '{path}'")
        self.trainer.strategy.barrier("dreambooth_export")
