"""Base of model-based purifiers: a model named in the config, loaded lazily on first use."""

from __future__ import annotations

from typing import Any, Literal

import torch

from lightning_cat.diffusion import check_model_name
from lightning_cat.purification.base import Purifier

__all__ = ["DTYPES", "PretrainedPurifier"]

#: Weight dtypes a model-based purifier can run in.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class PretrainedPurifier(Purifier):
    """A purifier that runs a pretrained model, named by ``pretrained_model_name_or_path``.

    Construction only checks the options (a missing local folder fails here, nothing is loaded),
    so a purifier in a config is cheap. ``pretrained_model_name_or_path: null`` means "the
    customization model": an experiment gives such a purifier the run's model (what IMPRESS and
    latent DiffPure purify with in Liu et al.); used alone it must be set. The model loads through :mod:`lightning_cat.diffusion`
    on the first call and moves to the images' device; pickling (DataLoader workers, spawned DDP
    ranks) drops the loaded model, and each process loads its own.

    Subclasses implement :meth:`load` (return the loaded parts as a dict; its ``nn.Module`` values
    are frozen, cast and moved, e.g. a pipeline's ``unet``/``vae``/``text_encoder`` listed beside
    the pipeline) and :meth:`purify`, which gets them from :meth:`models`.

    Args:
        pretrained_model_name_or_path: a diffusers folder, a hub id or a tiny model name (``None``:
            the customization model, set by the experiment).
        revision: hub revision.
        variant: weight variant (e.g. ``fp16``).
        dtype: dtype the model runs in (``float16``/``bfloat16`` on GPUs).
        progress_bar: show a progress bar over the purifier's inner iterations.
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str | None,
        revision: str | None = None,
        variant: str | None = None,
        dtype: Literal["float32", "float16", "bfloat16"] = "float32",
        progress_bar: bool = False,
    ) -> None:
        owner = type(self).__name__
        try:
            if pretrained_model_name_or_path is not None:
                check_model_name(pretrained_model_name_or_path)
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"{owner}: {error}") from None
        if dtype not in DTYPES:
            raise ValueError(f"{owner}: dtype={dtype!r} is not one of {list(DTYPES)}")
        self.pretrained_model_name_or_path = pretrained_model_name_or_path
        self.revision = revision
        self.variant = variant
        self.dtype = dtype
        self.progress_bar = progress_bar
        self._models: dict[str, Any] | None = None
        self._device: torch.device | None = None

    def params(self) -> dict[str, Any]:
        """Options for manifests; ``progress_bar`` is left out (it does not change the result)."""
        params = super().params()
        params.pop("progress_bar", None)
        return params

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def load(self) -> dict[str, Any]:
        """Load the model parts (on CPU); called once, by :meth:`models`."""
        raise NotImplementedError

    def models(self, device: torch.device | str) -> dict[str, Any]:
        """The loaded parts, frozen, in :attr:`torch_dtype`, on ``device`` (loaded on first use)."""
        device = torch.device(device)
        if self._models is None and self.pretrained_model_name_or_path is None:
            raise ValueError(
                f"{type(self).__name__}: pretrained_model_name_or_path is null (the customization model); set it "
                "to a model, or run the purifier in an experiment, which gives it the run's model"
            )
        if self._models is None:
            # Outside inference mode (Lightning predicts in it): gradient-based purifiers need
            # parameters that autograd may save.
            with torch.inference_mode(False):
                self._models = self.load()
            for part in self._models.values():
                if isinstance(part, torch.nn.Module):
                    part.requires_grad_(False).eval()
                    if any(p.dtype != self.torch_dtype for p in part.parameters() if p.is_floating_point()):
                        part.to(dtype=self.torch_dtype)
        if self._device != device:
            for part in self._models.values():
                if isinstance(part, torch.nn.Module):
                    part.to(device)
            self._device = device
        return self._models

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_models"] = None
        state["_device"] = None
        return state
