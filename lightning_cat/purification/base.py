"""The purifier interface: a callable on image batches, with recorded options."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from lightning_cat.pixels import quantize
from lightning_cat.seeding import image_generator

__all__ = ["Purifier", "purification_generator", "purify_images"]


def purification_generator(seed: int, stem: str) -> torch.Generator:
    """The generator of one image's purification, from the base ``seed`` and the file ``stem``
    (:func:`lightning_cat.seeding.image_generator` with purpose ``purify``).

    Datasets (purifier as a datamodule option) and the purified-set writer both seed each image
    with it, so a purified image depends neither on order, batch, worker nor rank.
    """
    return image_generator(seed, stem, purpose="purify")


class Purifier:
    """Base class of every purifier (classical filters and model-based ones alike).

    Subclasses implement :meth:`purify` on a float batch ``[B, 3, H, W]`` in ``[-1, 1]``.
    Calling the purifier runs it without gradients and rounds the result to the 8-bit grid, so
    an in-memory purified image equals the PNG a purified set would store. Options are the
    subclass's ``__init__`` arguments; :meth:`params` records them for manifests.
    """

    #: Short name used in configs and experiment defenses (``purify:<name>``).
    name: ClassVar[str] = ""

    def purify(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects images [B, 3, H, W], got {tuple(images.shape)}")
        out = self.purify(images, generator=generator)
        if out.shape != images.shape:
            raise RuntimeError(f"{type(self).__name__} changed the shape {tuple(images.shape)} -> {tuple(out.shape)}")
        return quantize(out.float()).to(images.device)

    def params(self) -> dict[str, Any]:
        """The purifier's name and options (its ``__init__`` arguments) for manifests."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {"name": self.name, **{n: getattr(self, n) for n in names if hasattr(self, n)}}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "name")
        return f"{type(self).__name__}({options})"


def purify_images(purifier: Purifier, images: torch.Tensor, stems: Sequence[str], seed: int = 0) -> torch.Tensor:
    """``purifier`` applied image by image, each with the generator of ``seed`` and its file stem,
    so a result depends neither on batch, order nor rank (what a purified set stores)."""
    return torch.cat(
        [
            purifier(image.unsqueeze(0), generator=purification_generator(seed, stem))
            for image, stem in zip(images, stems, strict=True)
        ]
    )
