"""CLIP alignment of images with text: the shortcut analysis of Liu et al. (arXiv 2406.18944).

Protective perturbations can act as a learnable shortcut: CLIP starts describing protected
images as noise rather than as their subject. Two measures:

* :class:`CLIPTextSimilarity`: mean cosine between each image and its own prompt (e.g. the
  training prompt "a photo of sks person");
* :class:`CLIPZeroShotProbability`: mean zero-shot probability of the subject prompt ("a photo
  of a person") against the noise prompt ("noise pattern"), softmax of 100 * cosine.

Example::

    similarity = CLIPTextSimilarity(clip)
    similarity.update(images, ["a photo of sks person"] * len(images))
    subject = CLIPZeroShotProbability(clip, class_name="person")
    subject.update(images)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_cat.metrics.clip_iqa import antonym_probabilities
from lightning_cat.metrics.clip_models import CLIPEncoder
from lightning_cat.metrics.mean import RunningMean

__all__ = ["CLIPTextSimilarity", "CLIPZeroShotProbability"]


class CLIPTextSimilarity(RunningMean):
    """Mean CLIP cosine similarity of images to their prompts (one prompt per image).

    Args:
        clip: the CLIP encoder (see :func:`~lightning_cat.metrics.load_clip`).
        **kwargs: torchmetrics ``Metric`` options.
    """

    higher_is_better = True

    def __init__(self, clip: CLIPEncoder, **kwargs) -> None:
        super().__init__(**kwargs)
        self.clip = clip

    def update(self, images: torch.Tensor, prompts: Sequence[str]) -> None:
        """Add images (``[B, 3, H, W]`` in ``[-1, 1]``) and their ``B`` prompts."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"CLIPTextSimilarity: {images.shape[0]} images but {len(prompts)} prompts")
        unique = sorted(set(prompts))
        text = self.clip.encode_texts(unique)
        rows = torch.tensor([unique.index(p) for p in prompts], device=text.device)
        self.add((self.clip.encode_images(images) * text[rows]).sum(dim=-1))


class CLIPZeroShotProbability(RunningMean):
    """Mean zero-shot probability of "a photo of a {class}" against "noise pattern".

    Args:
        clip: the CLIP encoder.
        class_name: the subject's class.
        subject_template: prompt of the subject, with ``{class_name}``.
        noise_prompt: the competing prompt.
        **kwargs: torchmetrics ``Metric`` options.
    """

    higher_is_better = True

    def __init__(
        self,
        clip: CLIPEncoder,
        class_name: str = "person",
        subject_template: str = "a photo of a {class_name}",
        noise_prompt: str = "noise pattern",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if "{class_name}" not in subject_template:
            raise ValueError(
                f"CLIPZeroShotProbability: subject_template must contain '{{class_name}}', got {subject_template!r}"
            )
        self.clip = clip
        self.prompts = (subject_template.format(class_name=class_name), noise_prompt)
        self._text_embeddings: torch.Tensor | None = None

    def update(self, images: torch.Tensor) -> None:
        """Add images (``[B, 3, H, W]`` in ``[-1, 1]``)."""
        text = self._text_embeddings
        if text is None or text.device != self.clip.device:
            text = self._text_embeddings = self.clip.encode_texts(self.prompts)
        self.add(antonym_probabilities(self.clip.encode_images(images), text)[:, 0])
