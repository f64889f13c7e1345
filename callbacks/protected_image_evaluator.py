"""Evaluator of protected images against their clean originals: PSNR, SSIM, LPIPS, CLIP alignment.

Usage (YAML, under ``trainer.callbacks``)::

    - class_path: ProtectedImageEvaluator
      init_args:
        lpips_backbone_weights: weights/alexnet-owt-7be5be79.pth
        clip_weights: weights/open_clip_vit_l_14.pt
        class_name: person

Plug-in metrics with ``update(image, clean)`` (e.g. ``LatentDistortion(vae)``) go in ``metrics``::

    ProtectedImageEvaluator(metrics={"latent_distortion": LatentDistortion(vae)}, ...)

The step output (or batch) holds ``image`` (protected), ``clean`` and ``prompt`` (list of str).
Logged names: ``psnr``, ``ssim``, ``lpips``, ``clip_prompt_similarity`` (image-text cosine to its
prompt), ``clip_subject_probability`` (zero-shot "a photo of a {class}" vs "noise pattern") and
the plug-ins' names, each with ``prefix`` in front.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchmetrics import Metric

from lightning_cat.callbacks.evaluator import MetricEvaluator, images_of
from lightning_cat.metrics import (
    PSNR,
    SSIM,
    CLIPTextSimilarity,
    CLIPZeroShotProbability,
    LPIPSDistance,
    load_shared_clip,
)
from lightning_cat.metrics.clip_models import CLIPBackend
from lightning_cat.options import check_arguments
from lightning_cat.perceptual import LPIPSNet

__all__ = ["ProtectedImageEvaluator"]


class ProtectedImageEvaluator(MetricEvaluator):
    """Perturbation visibility and CLIP shortcut analysis of protected images (see the module docstring).

    Args:
        image_key: key of the protected images in the step output or batch.
        clean_key: key of their clean originals.
        prompt_key: key of the prompts (one per image, or one string for the batch).
        psnr: compute PSNR.
        ssim: compute SSIM.
        lpips: compute LPIPS.
        lpips_net: LPIPS backbone family.
        lpips_backbone_weights: local torchvision state dict of that backbone.
        lpips_random_backbone: random backbone (tests and tiny configs only).
        clip_alignment: compute the two CLIP alignment measures.
        class_name: the subject's class for the zero-shot prompt.
        noise_prompt: the competing zero-shot prompt.
        clip_backend: ``open_clip``, ``transformers`` or ``tiny``.
        clip_model: open_clip architecture name.
        clip_weights: local open_clip checkpoint file or transformers CLIP folder.
        metrics: extra metrics (name -> torchmetrics Metric with ``update(image, clean)``).
        prefix: prepended to logged names.
    """

    def __init__(
        self,
        image_key: str = "image",
        clean_key: str = "clean",
        prompt_key: str = "prompt",
        psnr: bool = True,
        ssim: bool = True,
        lpips: bool = True,
        lpips_net: LPIPSNet = "alex",
        lpips_backbone_weights: str | None = None,
        lpips_random_backbone: bool = False,
        clip_alignment: bool = True,
        class_name: str = "person",
        noise_prompt: str = "noise pattern",
        clip_backend: CLIPBackend = "open_clip",
        clip_model: str = "ViT-L-14",
        clip_weights: str | None = None,
        metrics: dict[str, Metric] | None = None,
        prefix: str = "",
    ) -> None:
        check_arguments(type(self).__name__, type(self).__init__, locals())  # Literal choices, from the signature
        super().__init__(prefix)
        self.image_key, self.clean_key, self.prompt_key = image_key, clean_key, prompt_key
        if psnr:
            self.metrics["psnr"] = PSNR()
        if ssim:
            self.metrics["ssim"] = SSIM()
        if lpips:
            self.metrics["lpips"] = LPIPSDistance(
                lpips_net, lpips_backbone_weights, random_backbone=lpips_random_backbone
            )
        if clip_alignment:
            clip = load_shared_clip(clip_backend, clip_model, clip_weights)
            self.metrics["clip_prompt_similarity"] = CLIPTextSimilarity(clip)
            self.metrics["clip_subject_probability"] = CLIPZeroShotProbability(
                clip, class_name=class_name, noise_prompt=noise_prompt
            )
        self.add_metrics(metrics)

    def update_metrics(self, inputs: Mapping[str, Any]) -> None:
        images = images_of(inputs, self.image_key)
        if images is None:
            return
        clean = images_of(inputs, self.clean_key)
        for name, metric in self.metrics.items():
            if name == "clip_prompt_similarity":
                prompts = inputs.get(self.prompt_key)
                if prompts is not None:
                    metric.update(images, [prompts] * len(images) if isinstance(prompts, str) else list(prompts))
            elif name == "clip_subject_probability":
                metric.update(images)
            elif clean is not None:
                metric.update(images, clean)
