"""CLIP-IQA and CLIP-IQAC: no-reference image quality from CLIP antonym prompts.

CLIP-IQA (Wang et al., AAAI 2023) scores an image by the softmax, over a pair of antonym prompts
("Good photo." / "Bad photo."), of ``logit_scale * cosine(image, prompt)`` with logit scale 100;
the score is p(good), averaged over prompt pairs and images. CLIP-IQAC (the class-aware variant
used in the anti-customization literature) uses "a good photo of a {class}" / "a bad photo of a
{class}" and reports ``p_good - p_bad`` in ``[-1, 1]``.

On the same CLIP, prompts and pixels, :class:`CLIPIQA` equals torchmetrics'
``clip_image_quality_assessment`` per image (checked in ``tests/test_metrics_clip.py``). Preprocessing
differs only when images need resizing: ours clamps bicubic overshoot to ``[0, 1]``, the transformers
CLIP processor does not. CLIP-IQA's original backbone (torchmetrics' default ``"clip_iqa"``: OpenAI's RN50
without positional embedding, unresized images) is ``load_clip("open_clip", "RN50", weights,
positional_embedding=False)``.

Example::

    clip = load_clip("tiny")
    metric = CLIPIQA(clip)
    metric.update(images)  # [B, 3, H, W] in [-1, 1]
    metric.compute()       # tensor(0.5...)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_cat.metrics.clip_models import CLIPEncoder
from lightning_cat.metrics.mean import RunningMean

__all__ = ["CLIPIQA", "CLIPIQAC", "DEFAULT_IQA_PROMPTS", "antonym_probabilities"]

DEFAULT_IQA_PROMPTS: tuple[tuple[str, str], ...] = (("Good photo.", "Bad photo."),)
LOGIT_SCALE = 100.0


def antonym_probabilities(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, logit_scale: float = LOGIT_SCALE
) -> torch.Tensor:
    """p(positive) per image and prompt pair.

    Args:
        image_embeddings: unit-norm ``[B, D]``.
        text_embeddings: unit-norm ``[2P, D]``, pairs interleaved (positive, negative, ...).
        logit_scale: softmax temperature inverse.

    Returns:
        ``[B, P]`` probabilities of the positive prompt of each pair.
    """
    logits = logit_scale * image_embeddings @ text_embeddings.T  # [B, 2P]
    pairs = logits.view(logits.shape[0], -1, 2)
    return pairs.softmax(dim=-1)[..., 0]


class _AntonymPromptMetric(RunningMean):
    higher_is_better = True

    def __init__(self, clip: CLIPEncoder, prompts: Sequence[Sequence[str]], **kwargs) -> None:
        super().__init__(**kwargs)
        pairs = [tuple(pair) for pair in prompts]
        if not pairs or any(len(pair) != 2 or not all(isinstance(p, str) and p for p in pair) for pair in pairs):
            raise ValueError(
                f"{type(self).__name__}: prompts must be a non-empty list of (positive, negative) string pairs, "
                f"got {prompts!r}"
            )
        self.clip = clip
        self.prompts = tuple(pairs)
        self._text_embeddings: torch.Tensor | None = None

    def text_embeddings(self) -> torch.Tensor:
        """Embeddings of the prompts, ``[2P, D]`` (computed once per device)."""
        cached = self._text_embeddings
        if cached is None or cached.device != self.clip.device:
            cached = self.clip.encode_texts([text for pair in self.prompts for text in pair])
            self._text_embeddings = cached
        return cached

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, P]`` p(positive) of each image for each prompt pair."""
        return antonym_probabilities(self.clip.encode_images(images), self.text_embeddings())

    def _scores(self, probabilities: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, images: torch.Tensor) -> None:
        """Add images (``[B, 3, H, W]`` in ``[-1, 1]``)."""
        self.add(self._scores(self.probabilities(images)).mean(dim=-1))  # mean over prompt pairs


class CLIPIQA(_AntonymPromptMetric):
    """Mean p(good) over images and antonym prompt pairs (higher: better looking).

    Args:
        clip: the CLIP encoder (see :func:`~lightning_cat.metrics.load_clip`).
        prompts: (positive, negative) prompt pairs.
        **kwargs: torchmetrics ``Metric`` options.
    """

    def __init__(self, clip: CLIPEncoder, prompts: Sequence[Sequence[str]] = DEFAULT_IQA_PROMPTS, **kwargs) -> None:
        super().__init__(clip, prompts, **kwargs)

    def _scores(self, probabilities: torch.Tensor) -> torch.Tensor:
        return probabilities


class CLIPIQAC(_AntonymPromptMetric):
    """Class-aware CLIP-IQA: mean ``p_good - p_bad`` for "a good/bad photo of a {class}".

    Args:
        clip: the CLIP encoder.
        class_name: the subject's class ("person", "dog", ...).
        templates: (positive, negative) templates containing ``{class_name}``.
        **kwargs: torchmetrics ``Metric`` options.
    """

    higher_is_better = True

    def __init__(
        self,
        clip: CLIPEncoder,
        class_name: str = "person",
        templates: Sequence[Sequence[str]] = (("a good photo of a {class_name}", "a bad photo of a {class_name}"),),
        **kwargs,
    ) -> None:
        if any("{class_name}" not in t for pair in templates for t in pair):
            raise ValueError(f"CLIPIQAC: every template must contain '{{class_name}}', got {templates!r}")
        prompts = [tuple(t.format(class_name=class_name) for t in pair) for pair in templates]
        super().__init__(clip, prompts, **kwargs)
        self.class_name = class_name

    def _scores(self, probabilities: torch.Tensor) -> torch.Tensor:
        return 2.0 * probabilities - 1.0  # p_good - p_bad with p_bad = 1 - p_good
