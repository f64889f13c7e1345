"""Noisy upscaling (Liu et al.'s "CodeSR"): optional face restoration, downsample, diffusion x4 upscale."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image

from lightning_cat.diffusion import load_upscale_pipeline
from lightning_cat.images import tensor_to_pil
from lightning_cat.purification.pretrained import PretrainedPurifier
from lightning_cat.purification.restoration import FaceRestorer

__all__ = ["NoisyUpscale", "low_resolution_size"]

#: ``max_noise_level`` of the SD x4 upscaler (``sd-x4-upscaler``) (the pipeline checks it again).
MAX_NOISE_LEVEL = 350
UPSCALE_FACTOR = 4
_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


def low_resolution_size(height: int, width: int, low_resolution: int, multiple: int = 1) -> tuple[int, int]:
    """The size ``(h, w)`` an image is shrunk to before the x4 upscaler.

    The shorter side becomes ``low_resolution`` (reference: 128 px for 512 px images), but never
    more than a quarter of the input, so the x4 output is not larger than the input (64 px images
    -> 16 px -> 64 px). Sides are rounded down to a ``multiple`` the upscaler's UNet accepts.
    """
    scale = min(low_resolution / min(height, width), 1.0 / UPSCALE_FACTOR)
    return tuple(max(multiple, int(side * scale) // multiple * multiple) for side in (height, width))


class NoisyUpscale(PretrainedPurifier):
    """Downsample, then a diffusion x4 upscaler re-synthesises the detail (and drops the perturbation).

    Liu et al. (arXiv 2406.18944) "CodeSR": CodeFormer face restoration (fidelity 0.5), then
    downsample to 128 px and ``StableDiffusionUpscalePipeline`` with 75 steps, guidance 9,
    noise_level 20 and the prompt "A photo of a person". The upscaled image is resized back to the
    input size when the two differ (inputs larger than ``4 * low_resolution``).

    Args:
        pretrained_model_name_or_path: the upscaler pipeline (``tiny-upscaler`` offline).
        prompt: text prompt; ``{class_name}`` is replaced by ``class_name``.
        class_name: the subject's class.
        negative_prompt: negative prompt for classifier-free guidance (``None``: empty).
        low_resolution: side the shorter image side is shrunk to before upscaling.
        downsample_interpolation: PIL filter of the downsampling.
        num_inference_steps: upscaler sampling steps.
        guidance_scale: classifier-free guidance scale (``<= 1``: off).
        noise_level: noise added to the low-resolution image, ``[0, 350]``.
        face_restorer: optional restoration applied first (see :mod:`.restoration`).
        revision, variant, dtype, progress_bar: see :class:`PretrainedPurifier`.
    """

    name = "noisy_upscale"

    def __init__(
        self,
        pretrained_model_name_or_path: str = "sd-x4-upscaler",
        prompt: str = "A photo of a {class_name}",
        class_name: str = "person",
        negative_prompt: str | None = None,
        low_resolution: int = 128,
        downsample_interpolation: Literal["bicubic", "bilinear", "lanczos", "box"] = "bicubic",
        num_inference_steps: int = 75,
        guidance_scale: float = 9.0,
        noise_level: int = 20,
        face_restorer: FaceRestorer | None = None,
        revision: str | None = None,
        variant: str | None = None,
        dtype: Literal["float32", "float16", "bfloat16"] = "float32",
        progress_bar: bool = False,
    ) -> None:
        super().__init__(pretrained_model_name_or_path, revision, variant, dtype, progress_bar)
        owner = type(self).__name__
        try:
            prompt.format(class_name=class_name)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"{owner}: prompt={prompt!r} may only use the placeholder {{class_name}} ({error!r})"
            ) from None
        if low_resolution < 8:
            raise ValueError(f"{owner}: low_resolution must be >= 8, got {low_resolution}")
        if downsample_interpolation not in _RESAMPLE:
            raise ValueError(
                f"{owner}: downsample_interpolation={downsample_interpolation!r} is not one of {list(_RESAMPLE)}"
            )
        if num_inference_steps < 1:
            raise ValueError(f"{owner}: num_inference_steps must be >= 1, got {num_inference_steps}")
        if guidance_scale < 0:
            raise ValueError(f"{owner}: guidance_scale must be >= 0, got {guidance_scale}")
        if not 0 <= noise_level <= MAX_NOISE_LEVEL:
            raise ValueError(f"{owner}: noise_level must be in [0, {MAX_NOISE_LEVEL}], got {noise_level}")
        if face_restorer is not None and not isinstance(face_restorer, FaceRestorer):
            raise TypeError(
                f"{owner}: face_restorer must be a FaceRestorer or None, got {type(face_restorer).__name__}"
            )
        self.prompt = prompt
        self.class_name = class_name
        self.negative_prompt = negative_prompt
        self.low_resolution = low_resolution
        self.downsample_interpolation = downsample_interpolation
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.noise_level = noise_level
        self.face_restorer = face_restorer

    def load(self) -> dict[str, Any]:
        pipeline = load_upscale_pipeline(
            self.pretrained_model_name_or_path,
            revision=self.revision,
            variant=self.variant,
            torch_dtype=self.torch_dtype,
        )
        pipeline.set_progress_bar_config(disable=not self.progress_bar, leave=False)
        return {
            "pipeline": pipeline,
            "unet": pipeline.unet,
            "vae": pipeline.vae,
            "text_encoder": pipeline.text_encoder,
        }

    def size_multiple(self, unet) -> int:
        """Low-resolution sides must be multiples of the UNet's total downsampling."""
        return 2 ** (len(unet.config.block_out_channels) - 1)

    def purify(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        models = self.models(images.device)
        pipeline = models["pipeline"]
        if self.face_restorer is not None:
            images = self.face_restorer(images)
        height, width = images.shape[-2:]
        low = low_resolution_size(height, width, self.low_resolution, self.size_multiple(models["unet"]))
        resample = _RESAMPLE[self.downsample_interpolation]
        # 8-bit low-resolution images, as in the reference (downsampled file, then upscaled).
        small = [tensor_to_pil(image).resize((low[1], low[0]), resample) for image in images]
        prompt = self.prompt.format(class_name=self.class_name)
        negative = None if self.negative_prompt is None else [self.negative_prompt] * len(small)
        upscaled = pipeline(
            prompt=[prompt] * len(small),
            image=small,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            noise_level=self.noise_level,
            negative_prompt=negative,
            generator=generator,
            output_type="pt",
        ).images
        out = upscaled.to(images.device, torch.float32) * 2.0 - 1.0
        if tuple(out.shape[-2:]) != (height, width):
            out = F.interpolate(out, size=(height, width), mode="bicubic", antialias=True)
        return out.clamp(-1.0, 1.0)

    def params(self) -> dict[str, Any]:
        params = super().params()
        params["face_restorer"] = None if self.face_restorer is None else self.face_restorer.params()
        return params
