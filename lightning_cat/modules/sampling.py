"""Sampling a customized model with ``lightning-cat predict``.

Reads a folder written by :class:`~lightning_cat.modules.DreamBoothModule` (LoRA or full, with
its ``customization.json``), rebuilds the model as trained (base + LoRA, CAT-adapted decoder)
and generates one image per (prompt, seed) item of a
:class:`~lightning_cat.datamodules.PromptDataModule`; the
:class:`~lightning_cat.callbacks.SampleWriter` callback writes them::

    lightning-cat predict --config configs/dreambooth/sample.tiny.yaml

The CDL sampling switches default to what training recorded; set them to override.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_cat.customization.cdl import ContrastiveDecoupling
from lightning_cat.customization.export import load_customized_components
from lightning_cat.diffusion import SchedulerName, build_pipeline
from lightning_cat.modules.base import DiffusionModule
from lightning_cat.pixels import to_uint8
from lightning_cat.sampling.generation import generate_images

__all__ = ["SamplingModule"]

_PARTS = ("tokenizer", "text_encoder", "vae", "unet")


class SamplingModule(DiffusionModule):
    """Seeded text-to-image sampling of a customized (or base) Stable Diffusion model.

    Args:
        pretrained_model_name_or_path: a folder exported by ``DreamBoothModule`` or any base model.
        revision: hub revision (base models only; a customized folder records its own).
        variant: weight variant (base models only).
        scheduler: sampling scheduler (``default``: the checkpoint's own).
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance scale.
        negative_prompt: negative prompt (the CDL one is appended when that switch is on).
        cdl_inference_suffix: append ``", without {noise_token} noisy pattern"`` (``None``: as
            recorded at training; off for a base model).
        cdl_negative_prompt: use the CDL negative prompt (``None``: as recorded at training).
        resolution: image side (``None``: the training resolution, else the model's default).
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str = "tiny",
        revision: str | None = None,
        variant: str | None = None,
        scheduler: SchedulerName = "default",
        num_inference_steps: int = 100,
        guidance_scale: float = 7.5,
        negative_prompt: str | None = None,
        cdl_inference_suffix: bool | None = None,
        cdl_negative_prompt: bool | None = None,
        resolution: int | None = None,
    ) -> None:
        super().__init__()

    def check_options(self) -> None:
        super().check_options()
        h = self.hparams
        if h.num_inference_steps < 1:
            self.fail("num_inference_steps", ">= 1")
        if h.guidance_scale < 0:
            self.fail("guidance_scale", ">= 0")
        if h.resolution is not None and (h.resolution < 8 or h.resolution % 8):
            self.fail("resolution", "a multiple of 8 (>= 8)")

    def configure_models(self) -> None:
        h = self.hparams
        components, self.record = load_customized_components(
            h.pretrained_model_name_or_path, revision=h.revision, variant=h.variant
        )
        for part in _PARTS:
            setattr(self, part, getattr(components, part))
        self.add_pretrained_parts(*_PARTS)
        self.pipeline = build_pipeline(components, h.scheduler, revision=h.revision)
        recorded = ContrastiveDecoupling.from_dict((self.record or {}).get("cdl"))
        overrides = {"inference_suffix": h.cdl_inference_suffix, "negative_prompt": h.cdl_negative_prompt}
        self.cdl = ContrastiveDecoupling(
            **{**recorded.to_dict(), **{k: v for k, v in overrides.items() if v is not None}}
        )
        resolution = h.resolution if h.resolution is not None else (self.record or {}).get("resolution")
        if resolution is None:
            resolution = int(self.unet.config.sample_size) * self.pipeline.vae_scale_factor
        self.resolution = int(resolution)

    @property
    def effective_negative_prompt(self) -> str | None:
        """The negative prompt actually used (user's, then CDL's when on)."""
        return self.cdl.sampling_negative_prompt(self.hparams.negative_prompt)

    def sampling_settings(self) -> dict[str, Any]:
        """Everything that determines the images besides (prompt, seed): recorded with the samples."""
        h = self.hparams
        return {
            "model": h.pretrained_model_name_or_path,
            "customization": self.record,
            "scheduler": h.scheduler,
            "scheduler_class": type(self.pipeline.scheduler).__name__,
            "num_inference_steps": h.num_inference_steps,
            "guidance_scale": h.guidance_scale,
            "negative_prompt": self.effective_negative_prompt,
            "cdl": self.cdl.to_dict(),
            "resolution": self.resolution,
        }

    def _generate(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        return generate_images(
            self.pipeline,
            prompts,
            seeds,
            negative_prompt=self.effective_negative_prompt,
            num_inference_steps=self.hparams.num_inference_steps,
            guidance_scale=self.hparams.guidance_scale,
            height=self.resolution,
            width=self.resolution,
        )

    def forward(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in ``[-1, 1]`` for ``prompts`` (CDL suffix applied) and ``seeds``."""
        return self._generate([self.cdl.sampling_prompt(p) for p in prompts], [int(s) for s in seeds])

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        prompts = [self.cdl.sampling_prompt(p) for p in batch["prompt"]]
        seeds = [int(s) for s in batch["seed"]]
        prediction = {key: batch[key] for key in ("folder", "file", "prompt") if key in batch}
        for key in ("prompt_index", "image_index"):
            if key in batch:
                prediction[key] = [int(v) for v in batch[key]]
        prediction.update(
            images=to_uint8(self._generate(prompts, seeds)),
            seed=seeds,
            sampling_prompt=prompts,
            negative_prompt=self.effective_negative_prompt,
        )
        return prediction
